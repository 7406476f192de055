#!/usr/bin/env python3
"""The PyTorch side of the full-size suite (`npm run bench -- --suites full-size`): upstream's InternVL2
model (imported from --upstream, never committed) in bfloat16 (the seed's dtype) or float32, eager on the
CPU, on the same HF checkpoint, pixels and prompt ids as test/bench/full-size.ts. With --pvc, a PVC
checkpoint through PVC spec v0 in PyTorch (test/reference/pvc_spec.py: PVC's vision on upstream's InternViT
classes, upstream's mlp1 and InternLM2; PVC's released modeling code is unreachable), with the data flag
of the prompt (1 image, 3 video). Times as full-size.ts does: vision (pixels -> the visual tokens),
prefill (the LLM's generate() on the prompt's embeddings up to its first token), decode (the other new
tokens). One JSON line on stdout; progress on stderr."""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'reference'))
import make_fixtures as mf  # noqa: E402  (upstream set-up: sys.path, DropPath stand-in, .cuda())
from torch_bench import step_clock  # noqa: E402


def log(line):
    print(f'full-size (pytorch): {line}', file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--model', required=True, help='the HF checkpoint directory')
    ap.add_argument('--inputs', required=True, help='pixel_values and input_ids (full-size.ts --write-inputs)')
    ap.add_argument('--dtype', choices=['bfloat16', 'float32'], default='bfloat16')
    ap.add_argument('--new-tokens', type=int, default=32)
    ap.add_argument('--pvc', action='store_true', help='a PVC checkpoint, through test/reference/pvc_spec.py')
    ap.add_argument('--data-flag', type=int, choices=[1, 3], default=1, help='with --pvc: 1 image (its tiles), 3 video (a frame each)')
    args = ap.parse_args()
    mf.setup_upstream(os.path.abspath(args.upstream))
    from internvl.model.internvl_chat import InternVLChatModel
    from safetensors.torch import load_file
    from transformers import StoppingCriteriaList

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    if args.pvc:
        model, pvc_fields = load_pvc(args.model, dtype)
    else:
        model = InternVLChatModel.from_pretrained(args.model, torch_dtype=dtype, low_cpu_mem_usage=True).eval()
    load_ms = (time.perf_counter() - t0) * 1000
    log(f'loaded in {load_ms / 1000:.1f} s ({args.dtype})')
    inputs = load_file(args.inputs)
    pixels = inputs['pixel_values'].to(dtype)
    ids = inputs['input_ids'].long()
    # <IMG_CONTEXT> is the id the prompt repeats for every visual token (the tokenizer's, as chat() sets it).
    tokenizer_config = json.load(open(os.path.join(args.model, 'added_tokens.json')))
    model.img_context_token_id = tokenizer_config['<IMG_CONTEXT>']

    with torch.no_grad():
        t = time.perf_counter()
        if args.pvc:
            import pvc_spec
            tiles = [1] * pixels.shape[0] if args.data_flag == 3 else [pixels.shape[0]]
            visual = pvc_spec.visual_tokens(model, pixels, args.data_flag, tiles, pvc_fields)
        else:
            visual = model.extract_feature(pixels).reshape(-1, model.language_model.config.hidden_size)
        vision_ms = (time.perf_counter() - t) * 1000
        log(f'vision {vision_ms / 1000:.1f} s')
        # What upstream's generate() does after extract_feature: the prompt's <IMG_CONTEXT> rows replaced.
        embeds = model.language_model.get_input_embeddings()(ids)
        selected = ids[0] == model.img_context_token_id
        assert int(selected.sum()) == visual.shape[0], (int(selected.sum()), visual.shape)
        embeds[0, selected] = visual.to(embeds.dtype)
        clock = step_clock()
        t = time.perf_counter()
        out = model.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                                            eos_token_id=2, pad_token_id=2, stopping_criteria=StoppingCriteriaList([clock]))
        first_ms = (clock.at[0] - t) * 1000
        # generate() from embeddings puts a placeholder id first; min_new_tokens makes the rest exactly new_tokens.
        new_ids = out[0, -args.new_tokens:].tolist()
        decode_s = clock.at[-1] - clock.at[0]
    result = {
        'backend': 'pytorch', 'torch': torch.__version__, 'threads': torch.get_num_threads(), 'dtype': args.dtype,
        'promptTokens': ids.shape[1], 'newTokens': len(new_ids), 'loadMs': load_ms, 'visionMs': vision_ms,
        'prefillMs': first_ms, 'firstTokenMs': vision_ms + first_ms,
        'decodeTokensPerSecond': (len(clock.at) - 1) / decode_s,
        'peakRssMB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'ids': new_ids,
    }
    log(f"prefill {result['prefillMs'] / 1000:.1f} s, decode {result['decodeTokensPerSecond']:.2f} tokens/s")
    print(json.dumps(result))


def load_pvc(ckpt, dtype):
    """The PVC checkpoint in `dtype`, built as from_pretrained builds (default dtype `dtype`, no random
    init), its ViT layers' AdaLN and temporal attention read off the tensor names; and its PVC config fields."""
    import pvc_spec
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    from safetensors.torch import load_file
    from transformers.modeling_utils import no_init_weights
    config = InternVLChatConfig.from_pretrained(ckpt)
    names = json.load(open(os.path.join(ckpt, 'model.safetensors.index.json')))['weight_map']

    def layers_with(part):
        prefix = 'vision_model.encoder.layers.'
        return sorted({int(n[len(prefix):].split('.')[0]) for n in names if n.startswith(prefix) and f'.{part}.' in n})
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            vision = pvc_spec.PVCVisionModel(config.vision_config, layers_with('adaLN_modulation'), layers_with('temporal_attn'))
            model = InternVLChatModel(config, vision_model=vision)
    finally:
        torch.set_default_dtype(default)
    for f in sorted(set(names.values())):
        model.load_state_dict(load_file(os.path.join(ckpt, f)), strict=False)
    expected = set(model.state_dict())
    assert expected == set(names), f'{ckpt}: no tensor for {sorted(expected - set(names))[:5]}, unknown {sorted(set(names) - expected)[:5]}'
    fields = json.load(open(os.path.join(ckpt, 'config.json')))
    return model.to(dtype).eval(), {k: fields[k] for k in ('image_repeat_time', 'video_repeat_time')}


if __name__ == '__main__':
    main()

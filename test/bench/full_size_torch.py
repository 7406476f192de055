#!/usr/bin/env python3
"""The PyTorch side of the full-size suite (`npm run bench -- --suites full-size`): upstream's InternVL2
model (imported from --upstream, never committed) in bfloat16 (the seed's dtype) or float32, eager on the
CPU, on the same HF checkpoint, pixels and prompt ids as test/bench/full-size.ts. Times as that script
does: vision (extract_feature on every tile), prefill (generate() up to its first token, less the vision
time it includes), decode (the other new tokens). One JSON line on stdout; progress on stderr."""
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
    args = ap.parse_args()
    mf.setup_upstream(os.path.abspath(args.upstream))
    from internvl.model.internvl_chat import InternVLChatModel
    from safetensors.torch import load_file
    from transformers import StoppingCriteriaList

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
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
        model.extract_feature(pixels)
        vision_ms = (time.perf_counter() - t) * 1000
        log(f'vision {vision_ms / 1000:.1f} s')
        clock = step_clock()
        t = time.perf_counter()
        out = model.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                             eos_token_id=2, pad_token_id=2, stopping_criteria=StoppingCriteriaList([clock]))
        first_ms = (clock.at[0] - t) * 1000
        decode_s = clock.at[-1] - clock.at[0]
    result = {
        'backend': 'pytorch', 'torch': torch.__version__, 'threads': torch.get_num_threads(), 'dtype': args.dtype,
        'promptTokens': ids.shape[1], 'newTokens': out.shape[1] - 1, 'loadMs': load_ms, 'visionMs': vision_ms,
        'prefillMs': first_ms - vision_ms, 'firstTokenMs': first_ms,
        'decodeTokensPerSecond': (len(clock.at) - 1) / decode_s,
        'peakRssMB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'ids': out[0].tolist(),
    }
    log(f"prefill {result['prefillMs'] / 1000:.1f} s, decode {result['decodeTokensPerSecond']:.2f} tokens/s")
    print(json.dumps(result))


if __name__ == '__main__':
    main()

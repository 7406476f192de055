#!/usr/bin/env python3
"""Beam search references: transformers 4.37.2's generate(num_beams=...) on the committed tiny
checkpoints, through upstream's chat() / batch_chat() (tiny-internvl2, image prompts) and the PVC spec's
chat (tiny-pvc, video prompt), plus generate() called directly on the prompts' embeddings (single and
left-padded batches) with eos ids the random models actually produce, so that hypotheses end early and
length_penalty / early_stopping decide the result.

Reads the checkpoints make_fixtures.py and pvc_spec.py wrote (run those first); writes
test/fixtures/reference/beam/<fixture>.json (+ .safetensors with the prompts' embeddings). See
README.md beside this file for the command.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

# (num_beams, length_penalty, early_stopping): 2, 3 and 5 beams, two length penalties, both
# early_stopping settings (and "never").
GRID = [(2, 1.0, False), (2, 2.0, True), (3, 1.0, True), (3, 0.5, False), (5, 1.0, False), (5, 2.0, True),
        (5, 0.5, 'never'), (3, 1.0, 'never')]


class Recorder:
    """Wraps language_model.generate so that it also returns the sequence scores (output_scores only
    records them: the search itself is unchanged) and remembers its inputs."""

    def __init__(self, lm):
        self.lm, self.original, self.calls = lm, lm.generate, []

    def __enter__(self):
        def generate(*a, **k):
            out = self.original(*a, **k, return_dict_in_generate=True, output_scores=True)
            self.calls.append({'inputs_embeds': k['inputs_embeds'].clone(), 'attention_mask': k['attention_mask'].tolist(),
                               'sequences': out.sequences.tolist(),
                               'scores': out.sequences_scores.tolist() if out.sequences_scores is not None else None})
            return out.sequences
        self.lm.generate = generate
        return self

    def __exit__(self, *exc):
        self.lm.generate = self.original


def gen_config(num_beams, length_penalty, early_stopping, **extra):
    return {'max_new_tokens': 10, 'do_sample': False, 'num_beams': num_beams, 'length_penalty': length_penalty,
            'early_stopping': early_stopping, **extra}


def direct_cases(lm, embeds, mask, eos, tensors, key, cases):
    """generate() on the embeddings themselves, with the given eos ids."""
    out = []
    for name, cfg in cases:
        with torch.no_grad():
            r = lm.generate(inputs_embeds=embeds, attention_mask=torch.tensor(mask), eos_token_id=eos, pad_token_id=2,
                            return_dict_in_generate=True, output_scores=True, use_cache=True, **cfg)
        out.append({'name': name, 'embeds': key, 'attention_mask': mask, 'eos_token_id': eos, 'generation_config': cfg,
                    'sequences': r.sequences.tolist(), 'scores': r.sequences_scores.tolist()})
    tensors[key] = embeds.clone()
    return out


def direct_grid(prefix, extra_cases=()):
    cases = [(f'{prefix}b{nb}-lp{lp}-es{es}', gen_config(nb, lp, es, max_new_tokens=12)) for nb, lp, es in GRID]
    return cases + list(extra_cases)


def internvl2(root, doc, tensors):
    ckpt = os.path.join(root, 'checkpoints', 'tiny-internvl2')
    model = mf.load_float32(ckpt)
    tok = mf.load_tokenizer(ckpt)[0]
    size = model.config.vision_config.image_size
    pv_a = mf.pixel_values(3, size, mf.SEED + 1)  # make_fixtures.py's image A and B
    pv = torch.cat([pv_a, mf.pixel_values(1, size, mf.SEED + 2)])
    chats, batches = [], []
    with Recorder(model.language_model) as rec:
        for nb, lp, es in GRID:
            cfg = gen_config(nb, lp, es)
            answer = model.chat(tok, pv_a, 'Describe the image.', dict(cfg))
            call = rec.calls.pop()
            chats.append({'name': f'b{nb}-lp{lp}-es{es}', 'question': 'Describe the image.', 'generation_config': cfg,
                          'sequences': call['sequences'], 'scores': call['scores'], 'answer': answer})
        # num_return_sequences, repetition_penalty and min_new_tokens
        cfg = gen_config(5, 1.0, False, num_return_sequences=3, repetition_penalty=1.3, min_new_tokens=4)
        answer = model.chat(tok, pv_a, 'What is in the image?', dict(cfg))
        call = rec.calls.pop()
        chats.append({'name': 'b5-return3-rep1.3-min4', 'question': 'What is in the image?', 'generation_config': cfg,
                      'sequences': call['sequences'], 'scores': call['scores'], 'answer': answer})
        questions = ['Describe this image in detail.', 'What animal is in the picture?']
        for nb, lp, es in [(3, 1.0, True), (5, 2.0, False), (2, 0.5, 'never')]:
            cfg = gen_config(nb, lp, es, num_return_sequences=2 if nb == 5 else 1)
            answers = model.batch_chat(tok, pv, questions, dict(cfg), num_patches_list=[3, 1])
            call = rec.calls.pop()
            key = 'batch.inputs_embeds'
            tensors[key] = call['inputs_embeds']
            batches.append({'name': f'b{nb}-lp{lp}-es{es}', 'questions': questions, 'num_patches_list': [3, 1],
                            'generation_config': cfg, 'embeds': key, 'attention_mask': call['attention_mask'],
                            'sequences': call['sequences'], 'scores': call['scores'], 'answers': answers})
        # The single-image prompt's embeddings, for generate() with an eos the model produces.
        model.chat(tok, pv_a, 'Describe the image.', gen_config(2, 1.0, False))
        single = rec.calls.pop()
    doc['chat'] = chats
    doc['batch_chat'] = batches
    # A prompt longer than max_position_embeddings x the rope_scaling factor (48 x 2 here): upstream's
    # chat() runs it with dynamic NTK scaling; a fresh model, whose rotary state starts unscaled.
    long_model = mf.load_with_positions(ckpt, 48)
    with Recorder(long_model.language_model) as rec:
        cfg = gen_config(3, 1.0, False)
        answer = long_model.chat(tok, pv_a, 'Describe the image.', dict(cfg))
        call = rec.calls.pop()
    doc['long_context'] = {'max_position_embeddings': 48, 'chat': {'name': 'b3-lp1.0-esFalse', 'question': 'Describe the image.',
                                                                    'generation_config': cfg, 'sequences': call['sequences'],
                                                                    'scores': call['scores'], 'answer': answer}}
    # <|im_end|> never ends a hypothesis of these random models; these ids (tokens the search meets
    # often, found by trying) end hypotheses early, so that length_penalty and early_stopping decide.
    extra = [('b4-return4-rep1.2-min2', gen_config(4, 1.0, False, max_new_tokens=12, num_return_sequences=4,
                                                  repetition_penalty=1.2, min_new_tokens=2))]
    lm = model.language_model
    doc['direct'] = direct_cases(lm, single['inputs_embeds'], single['attention_mask'], [279, 147], tensors,
                                 'single.inputs_embeds', direct_grid('eos279+147-', extra))
    doc['direct'] += direct_cases(lm, single['inputs_embeds'], single['attention_mask'], [669], tensors,
                                  'single.inputs_embeds', direct_grid('eos669-')[:5])
    doc['direct'] += direct_cases(lm, tensors['batch.inputs_embeds'], batches[0]['attention_mask'], [279, 147], tensors,
                                  'batch.inputs_embeds', direct_grid('batch-eos279+147-')[:5])


def pvc(root, upstream_commit, doc, tensors):
    import pvc_spec
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    from safetensors.torch import load_file

    ckpt = os.path.join(root, 'checkpoints', 'tiny-pvc')
    with open(os.path.join(root, 'reference', 'tiny-pvc', 'reference.json')) as f:
        spec = json.load(f)
    tok = mf.load_tokenizer(ckpt)[0]
    config = InternVLChatConfig.from_pretrained(ckpt)
    model = InternVLChatModel(config, vision_model=pvc_spec.PVCVisionModel(config.vision_config, spec['adaln_layers'], spec['temporal_layers']))
    state = {}
    for f in sorted(os.listdir(ckpt)):
        if f.endswith('.safetensors'):
            state.update({k: v.float() for k, v in load_file(os.path.join(ckpt, f)).items()})
    model.load_state_dict(state, strict=True)
    model = model.float().eval()
    seed = spec['seed']
    size = config.vision_config.image_size
    image_a = mf.pixel_values(3, size, seed + 1)  # pvc_spec.py's image A and clip
    clip = mf.pixel_values(6, size, seed + 3)
    prefix = ''.join(f'Frame{i + 1}: <image>\n' for i in range(clip.shape[0]))
    chats = []
    with Recorder(model.language_model) as rec:
        for nb, lp, es in GRID:
            cfg = gen_config(nb, lp, es)
            r = pvc_spec.pvc_chat(model, tok, clip, prefix + 'Describe this video.', cfg, 3, [1] * 6, spec['pvc'])
            call = rec.calls.pop()
            chats.append({'name': f'video-b{nb}-lp{lp}-es{es}', 'question': r['question'], 'data_flag': 3,
                          'num_patches_list': [1] * 6, 'generation_config': cfg, 'sequences': call['sequences'],
                          'scores': call['scores'], 'answer': r['answer']})
        pvc_spec.pvc_chat(model, tok, clip, prefix + 'Describe this video.', gen_config(2, 1.0, False), 3, [1] * 6, spec['pvc'])
        video = rec.calls.pop()
        pvc_spec.pvc_chat(model, tok, image_a, 'What is in the image?', gen_config(2, 1.0, False), 1, [3], spec['pvc'])
        image = rec.calls.pop()
    doc['chat'] = chats
    # A batch of the video prompt and the image prompt, left-padded as batch_chat pads.
    ev, ei = video['inputs_embeds'][0], image['inputs_embeds'][0]
    T = max(ev.shape[0], ei.shape[0])
    pad = model.language_model.get_input_embeddings()(torch.tensor([2])).detach()[0]

    def left(e):
        return torch.cat([pad.expand(T - e.shape[0], -1), e]) if e.shape[0] < T else e
    batch = torch.stack([left(ev), left(ei)])
    mask = [[0] * (T - e.shape[0]) + [1] * e.shape[0] for e in (ev, ei)]
    lm = model.language_model
    doc['direct'] = direct_cases(lm, video['inputs_embeds'], video['attention_mask'], [314], tensors,
                                 'video.inputs_embeds', direct_grid('video-eos314-'))
    doc['direct'] += direct_cases(lm, video['inputs_embeds'], video['attention_mask'], [762, 2], tensors,
                                  'video.inputs_embeds', direct_grid('video-eos762+2-')[3:7])
    doc['direct'] += direct_cases(lm, batch, mask, [750, 657], tensors, 'batch.inputs_embeds',
                                  direct_grid('batch-eos750+657-')[:5])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--upstream-commit', required=True)
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
    args = ap.parse_args()
    mf.setup_upstream(os.path.abspath(args.upstream))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    root = os.path.abspath(args.out)
    out_dir = os.path.join(root, 'reference', 'beam')
    import transformers
    for name, build in [('tiny-internvl2', lambda d, t: internvl2(root, d, t)),
                        ('tiny-pvc', lambda d, t: pvc(root, args.upstream_commit, d, t))]:
        doc = {'fixture': name, 'upstream_commit': args.upstream_commit,
               'versions': {'torch': torch.__version__, 'transformers': transformers.__version__}}
        tensors = {}
        build(doc, tensors)
        mf.write_reference(out_dir, tensors, doc)
        os.replace(os.path.join(out_dir, 'reference.json'), os.path.join(out_dir, f'{name}.json'))
        os.replace(os.path.join(out_dir, 'tensors.safetensors'), os.path.join(out_dir, f'{name}.safetensors'))
        print(f'{name}: {len(doc["chat"])} chats, {len(doc["direct"])} direct generate() calls', file=sys.stderr)


if __name__ == '__main__':
    main()

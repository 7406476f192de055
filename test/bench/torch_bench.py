#!/usr/bin/env python3
"""The PyTorch side of `npm run bench`: upstream's InternVL2 model (imported from --upstream, never
committed), float32 eager on the CPU, on the same checkpoint and inputs as the tfjs worker. JSON on stdout."""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'reference'))
import make_fixtures as mf  # noqa: E402  (upstream set-up: sys.path, DropPath stand-in, .cuda())


def best_ms(f, runs):
    """After a warm-up call, the fastest of `runs` calls (the tfjs worker takes the same statistic)."""
    f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1000)
    return min(times)


def step_clock():
    """A stopping criterion that records when it is called (generate() calls it after each step's
    choice, greedy and beam search alike) and never stops: `.at` holds the times."""
    from transformers import StoppingCriteria

    class Clock(StoppingCriteria):
        def __init__(self):
            self.at = []

        def __call__(self, input_ids, scores, **kwargs):
            self.at.append(time.perf_counter())
            return False
    return Clock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--model', required=True, help='the HF checkpoint directory')
    ap.add_argument('--inputs', required=True)
    ap.add_argument('--measures', default='vision,llm')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--decode-steps', type=int, default=16)
    ap.add_argument('--beam-steps', type=int, default=16)
    args = ap.parse_args()
    mf.setup_upstream(os.path.abspath(args.upstream))
    from internvl.model.internvl_chat import InternVLChatModel
    from safetensors.torch import load_file
    t0 = time.perf_counter()
    model = InternVLChatModel.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    result = {'backend': 'pytorch', 'torch': torch.__version__, 'threads': torch.get_num_threads(),
              'loadMs': (time.perf_counter() - t0) * 1000}
    inputs = load_file(args.inputs)
    measures = args.measures.split(',')
    with torch.no_grad():
        if 'vision' in measures:
            pixels = inputs['pixel_values']
            result['visionMsPerTile'] = best_ms(lambda: model.extract_feature(pixels), args.runs) / pixels.shape[0]
        if 'llm' in measures:
            lm = model.language_model
            embeds = inputs['embeds']
            result['prefillTokens'] = embeds.shape[1]

            def prefill():
                out = lm(inputs_embeds=embeds, use_cache=True, return_dict=True)
                return out.past_key_values
            result['prefillMs'] = best_ms(prefill, args.runs)
            past = prefill()
            vocab = lm.config.vocab_size
            # Decode: blocks of decode_steps cached steps after the prompt; the fastest block's rate.
            rates = []
            for _ in range(args.runs):
                t = time.perf_counter()
                for s in range(args.decode_steps):
                    out = lm(input_ids=torch.tensor([[(s * 7919) % vocab]]), past_key_values=past, use_cache=True, return_dict=True)
                    past = out.past_key_values
                rates.append(args.decode_steps / (time.perf_counter() - t))
            result['decodeTokensPerSecond'] = max(rates)
        if 'prefill' in measures:
            # One long prompt, as the decoder runs it in chat (eager attention over the whole prompt),
            # then the output head on the last position only (the tfjs side computes the same).
            lm = model.language_model
            embeds = inputs['embeds']
            result['measure'] = 'prefill'
            result['tokens'] = embeds.shape[1]
            result['rssBeforeMB'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t = time.perf_counter()
            hidden = lm.model(inputs_embeds=embeds, use_cache=True, return_dict=True).last_hidden_state
            lm.output(hidden[:, -1:])
            result['ms'] = (time.perf_counter() - t) * 1000
        if 'beams' in measures:
            # As the tfjs worker: time per generated token of greedy and of 5 beams, generate()'s
            # bookkeeping included: from the first step's stopping-criteria call (made after each
            # step's choice, greedy and beam search alike) to the last, over the steps between.
            from transformers import StoppingCriteriaList
            lm = model.language_model
            embeds = inputs['embeds']
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)

            def per_step(num_beams):
                times = []
                for run in range(args.runs + 1):  # run 0 is the warm-up
                    clock = step_clock()
                    lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=args.beam_steps,
                                min_new_tokens=args.beam_steps, num_beams=num_beams, do_sample=False, eos_token_id=2,
                                pad_token_id=2, stopping_criteria=StoppingCriteriaList([clock]))
                    if run > 0:
                        times.append((clock.at[-1] - clock.at[0]) * 1000 / (len(clock.at) - 1))
                return min(times)
            result['greedyMsPerStep'] = per_step(1)
            result['beam5MsPerStep'] = per_step(5)
    result['peakRssMB'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""PyTorch's answers on the MMBench-format scenes set (make_mmbench_scenes.py) under PVC's MMBench protocol:
the PVC repository's own eval/mmbench/evaluate_mmbench.py (imported from --pvc-eval, a checkout that lives
outside this repository) reads the TSV (pandas), builds each question, tiles the image (its MMBenchDataset
with --dynamic and --max-num) and reads the answer (its post_process); the model is the scenes toy as the
PVC spec oracle runs it (pvc_spec.py on upstream InternVL, the committed bf16 shards read in float32) with
the script's decoding: 1 beam (the script forces it with --dynamic), max_new_tokens 100, min_new_tokens 1, no
sampling, no data flag; each item on a fresh rotary state (make_mvbench_reference.fresh_rotary). The
script's prompt dict (local to its __main__, so not importable) is repeated below. An item is right when
post_process's letter is the answer column's. Writes reference.json beside the set: each item's prompt
ids, output ids, answer, the letter read, and the accuracy per category and overall ('Avg', percent).

  /tmp/oracle-venv/bin/pip install pillow==13.0.0 pandas==3.1.1   # PVC's script also imports transformers
  /tmp/oracle-venv/bin/python test/reference/make_mmbench_reference.py --upstream /tmp/upstream/internvl_chat \
    --upstream-commit dbda466ce1ff2b3a829d37149f5d2262456c6115 --pvc-eval /tmp/PVC-eval \
    --pvc-commit 3a031d2f24d19caf3c1dbf59f365dd31baa9bfc4
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import make_mvbench_reference as mvr  # noqa: E402
import pvc_spec  # noqa: E402
import train_scenes as T  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# evaluate_mmbench.py's __main__: the instruction after the options.
PROMPT = {'en': "Answer with the option's letter from the given choices directly.", 'cn': '请直接回答选项字母。'}


def main():
    ap = mvr.oracle_arguments()
    ap.add_argument('--data', default=os.path.join(HERE, '..', 'fixtures', 'mmbench-scenes', 'mmbench_dev_en_scenes.tsv'))
    ap.add_argument('--max-num', type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pvc = mvr.import_pvc_eval(args, 'mmbench')

    tok, _ = mf.load_tokenizer(args.checkpoint)
    config, _ = T.build_model(tok)
    dataset = pvc.MMBenchDataset(os.path.abspath(args.data), PROMPT, 'en', input_size=T.IMAGE_SIZE, dynamic_image_size=True,
                                 use_thumbnail=config.use_thumbnail, max_num=args.max_num)
    model = pvc_spec.load_float32(args.checkpoint, config, T.ADALN_LAYERS, T.TEMPORAL_LAYERS)
    generation = dict(num_beams=1, max_new_tokens=100, min_new_tokens=1, do_sample=False)
    items, per_task = [], {}
    t0 = time.time()
    for i in range(len(dataset)):
        d = dataset[i]
        task = dataset.df.iloc[i]['category']
        mvr.fresh_rotary(model)
        with torch.no_grad():
            r = pvc_spec.pvc_chat(model, tok, d['pixel_values'], d['question'], generation, None, [d['pixel_values'].shape[0]], T.PVC)
        option = pvc.post_process(r['answer'], d['option'])
        right = option == d['answer']
        per_task.setdefault(task, []).append(right)
        items.append({'id': str(d['index']), 'task': task, 'question': d['question'], 'tiles': d['pixel_values'].shape[0],
                      'prompt_ids': len(r['input_ids']), 'output_ids': r['output_ids'], 'pred': r['answer'], 'option': option,
                      'gt': d['answer'], 'correct': right})
        print(json.dumps({k: items[-1][k] for k in ('id', 'tiles', 'pred', 'option', 'gt', 'correct')}), flush=True)
    accuracy = {task: sum(v) / len(v) * 100 for task, v in per_task.items()}
    accuracy['Avg'] = sum(sum(v) for v in per_task.values()) / len(items) * 100
    doc = {'made_by': 'test/reference/make_mmbench_reference.py', 'upstream_commit': args.upstream_commit, 'pvc_commit': args.pvc_commit,
           'max_num': args.max_num, 'num_beams': 1, 'seconds': round(time.time() - t0, 1), 'accuracy': accuracy, 'items': items}
    with open(os.path.join(os.path.dirname(os.path.abspath(args.data)), 'reference.json'), 'w') as f:
        json.dump(doc, f, indent=1)
        f.write('\n')
    print(json.dumps({'accuracy': accuracy}))


if __name__ == '__main__':
    main()

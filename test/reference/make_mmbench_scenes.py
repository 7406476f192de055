#!/usr/bin/env python3
"""A small benchmark in MMBench's published layout, made from the synthetic scenes (scenes.py beside this
file): one TSV file as MMBench's dev sets are (index, question, hint, A..D, answer, category, l2-category,
source, comment, image as base64 PNG; an empty cell where an item has no hint or fewer options), for
`pvc eval --benchmark mmbench` and its PyTorch reference (make_mvbench_reference.py --benchmark mmbench).
Seeded. Categories (MMBench's column, the per-task accuracy) are the scenes' question kinds; every fourth
item carries a hint, every third has three options instead of four.

  /tmp/oracle-venv/bin/python test/reference/make_mmbench_scenes.py   # Pillow 13.0.0
"""
import argparse
import base64
import csv
import io
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenes as S  # noqa: E402

KINDS = ['colour', 'shape', 'count', 'position']
POOLS = {'colour': list(S.COLOURS), 'shape': S.SHAPES, 'count': ['1', '2', '3', '4'], 'position': ['left', 'right', 'top', 'bottom']}
COLUMNS = ['index', 'question', 'hint', 'A', 'B', 'C', 'D', 'answer', 'category', 'l2-category', 'source', 'comment', 'image']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures', 'mmbench-scenes',
                                                   'mmbench_dev_en_scenes.tsv'))
    ap.add_argument('--per-kind', type=int, default=4)
    ap.add_argument('--seed', type=int, default=2413)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for kind in KINDS:
        for _ in range(args.per_kind):
            s = S.image_sample(rng, kind)
            n = 3 if len(rows) % 3 == 2 else 4
            options = [s['answer']] + rng.sample([x for x in POOLS[kind] if x != s['answer']], n - 1)
            rng.shuffle(options)
            png = io.BytesIO()
            S.render(s['scenes'][0]).save(png, format='PNG')
            rows.append({
                'index': 1000 + len(rows),
                'question': s['question'],
                'hint': 'The picture shows simple shapes on a plain background.' if len(rows) % 4 == 3 else '',
                **{k: (options[i] if i < n else '') for i, k in enumerate('ABCD')},
                'answer': 'ABCD'[options.index(s['answer'])],
                'category': kind,
                'l2-category': 'scenes',
                'source': 'scenes.py',
                'comment': '',
                'image': base64.b64encode(png.getvalue()).decode('ascii'),
            })
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w', newline='') as f:
        w = csv.DictWriter(f, COLUMNS, delimiter='\t', lineterminator='\n')
        w.writeheader()
        w.writerows(rows)
    print(json.dumps({'out': args.out, 'items': len(rows), 'kinds': KINDS}))


if __name__ == '__main__':
    main()

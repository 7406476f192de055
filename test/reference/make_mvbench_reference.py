#!/usr/bin/env python3
"""PyTorch's answers on the MVBench-format scenes set (make_mvbench_scenes.py) under PVC's MVBench protocol:
the PVC repository's own eval/mvbench/evaluate_mvbench.py (imported from --pvc-eval, a checkout that lives
outside this repository) reads the set, samples the frames (decord), builds each question and parses the
answer (its MVBenchDataset and check_ans); the model is the scenes toy as the PVC spec oracle runs it
(pvc_spec.py on upstream InternVL, the committed bf16 shards read in float32) with the script's decoding:
num_beams 5 (PVC's default below 20B parameters), max_new_tokens 1000, min_new_tokens 1, no sampling,
data_flag 3; each item on a fresh rotary state (below). The two instruction strings of PVC's evaluate_chat_model (local there, so not importable) are
repeated below. Writes reference.json beside the set: each item's prompt, ids, answer and whether PVC's
check_ans counts it right, and the accuracy per task and overall ('Avg', in percent, as PVC prints it).

  /tmp/oracle-venv/bin/pip install pillow==13.0.0 decord==0.6.0 opencv-python-headless==5.1.0.95 imageio==2.38.2
  /tmp/oracle-venv/bin/python test/reference/make_mvbench_reference.py --upstream /tmp/upstream/internvl_chat \
    --upstream-commit dbda466ce1ff2b3a829d37149f5d2262456c6115 --pvc-eval /tmp/PVC-eval \
    --pvc-commit 3a031d2f24d19caf3c1dbf59f365dd31baa9bfc4 --num-segments 8
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import make_mvbench_scenes as MS  # noqa: E402
import make_preprocess_fixtures as mpf  # noqa: E402
import pvc_spec  # noqa: E402
import train_scenes as T  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# PVC's evaluate_chat_model: the instruction before the question and the line after the options.
PROMPT = ('Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement of '
          'objects, and the action and pose of persons. Based on your observations, select the best option that '
          'accurately addresses the question.\n')
QUESTION_PROMPT = '\nOnly give the best option.'
# The set's tasks: MVBench's names, files and folders, as make_mvbench_scenes.py wrote them (none with start/end).
TASKS = {task: (file, folder) for task, (file, folder, _) in MS.TASKS.items()}


def fresh_rotary(model):
    """Each rotary embedding as the model loaded it. Upstream's dynamic-NTK rotary keeps the cache (and the
    scaled base) of the longest sequence seen, so past max_position_embeddings (2048 for the toy, whose
    96-frame prompts are ~2420 tokens; 32768 for PVC-InternVL2-8B) an answer would depend on the items
    answered before it in the same process: here, as in the port, every item is answered as on a freshly
    loaded model, so that the results do not depend on the order or on how the items are shared out."""
    for m in model.modules():
        if hasattr(m, 'max_seq_len_cached') and hasattr(m, 'scaling_factor'):
            m.__init__(m.dim, m.max_position_embeddings, m.base, None, m.scaling_factor)
        elif hasattr(m, 'max_seq_len_cached'):
            m.__init__(m.dim, m.max_position_embeddings, m.base, None)


def import_pvc_eval(args, benchmark):
    """PVC's eval/<benchmark>/evaluate_<benchmark>.py from the --pvc-eval checkout, upstream InternVL set up first."""
    mf.setup_upstream(os.path.abspath(args.upstream))
    mpf.torchvision_stand_in()  # PVC's utils/preprocess.py imports torchvision's transforms (see the README)
    sys.path.insert(0, os.path.abspath(args.pvc_eval))  # its eval script imports utils.preprocess
    spec = importlib.util.spec_from_file_location(f'pvc_{benchmark}', os.path.join(args.pvc_eval, 'eval', benchmark, f'evaluate_{benchmark}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle_arguments():
    """The options both PVC benchmark references take: upstream, PVC's eval checkout, their commits, the toy."""
    ap = argparse.ArgumentParser()
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--upstream-commit', required=True)
    ap.add_argument('--pvc-eval', required=True, help='a checkout of OpenGVLab/PVC (eval/ and utils/)')
    ap.add_argument('--pvc-commit', required=True)
    ap.add_argument('--checkpoint', default=os.path.join(HERE, '..', 'fixtures', 'checkpoints', 'scenes-pvc'))
    ap.add_argument('--threads', type=int, default=2)
    return ap


def main():
    ap = oracle_arguments()
    ap.add_argument('--data', default=os.path.join(HERE, '..', 'fixtures', 'mvbench-scenes'))
    ap.add_argument('--num-segments', type=int, default=96)
    ap.add_argument('--num-beams', type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pvc = import_pvc_eval(args, 'mvbench')

    data = os.path.abspath(args.data)
    data_list = {task: (file, os.path.join(data, 'video', folder) + '/', 'video', False) for task, (file, folder) in TASKS.items()}
    dataset = pvc.MVBenchDataset(os.path.join(data, 'json'), data_list, prompt=PROMPT, question_prompt=QUESTION_PROMPT,
                                 num_segments=args.num_segments, input_size=T.IMAGE_SIZE, dynamic_image_size=False)
    tok, _ = mf.load_tokenizer(args.checkpoint)
    config, _ = T.build_model(tok)
    model = pvc_spec.load_float32(args.checkpoint, config, T.ADALN_LAYERS, T.TEMPORAL_LAYERS)
    generation = dict(num_beams=args.num_beams, max_new_tokens=1000, min_new_tokens=1, do_sample=False)
    items, per_task = [], {}
    counts = {}
    t0 = time.time()
    for i in range(len(dataset)):
        d = dataset[i]
        entry = dataset.data_list[i]
        task = d['task_type']
        index = counts.get(task, 0)
        counts[task] = index + 1
        fresh_rotary(model)
        with torch.no_grad():
            r = pvc_spec.pvc_chat(model, tok, d['pixel_values'], d['question'], generation, 3, d['num_patches_list'], T.PVC)
        right = bool(pvc.check_ans(r['answer'], d['answer']))
        per_task.setdefault(task, []).append(right)
        items.append({'id': f'{TASKS[task][0][:-5]}/{index}', 'task': task, 'video': entry['data']['video'], 'question': d['question'],
                      'prompt_ids': len(r['input_ids']), 'output_ids': r['output_ids'], 'pred': r['answer'], 'gt': d['answer'],
                      'correct': right})
        print(json.dumps({k: items[-1][k] for k in ('id', 'pred', 'gt', 'correct')}), flush=True)
    accuracy = {task: sum(v) / len(v) * 100 for task, v in per_task.items()}
    accuracy['Avg'] = sum(sum(v) for v in per_task.values()) / len(items) * 100
    doc = {'made_by': 'test/reference/make_mvbench_reference.py', 'upstream_commit': args.upstream_commit, 'pvc_commit': args.pvc_commit,
           'num_segments': args.num_segments, 'num_beams': args.num_beams, 'seconds': round(time.time() - t0, 1),
           'accuracy': accuracy, 'items': items}
    with open(os.path.join(data, 'reference.json'), 'w') as f:
        json.dump(doc, f, indent=1)
        f.write('\n')
    print(json.dumps({'accuracy': accuracy}))


if __name__ == '__main__':
    main()

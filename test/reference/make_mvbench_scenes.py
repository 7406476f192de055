#!/usr/bin/env python3
"""A small benchmark in MVBench's published layout, made from the synthetic scenes (scenes.py beside this
file): `json/<task>.json` files (a list of {video, question, candidates, answer}) and the videos under the
folders MVBench's task table names, for `pvc eval --benchmark mvbench` and its PyTorch reference
(make_mvbench_reference.py). Seeded; the videos are 8 frames of 112 px at 8 fps, H.264 lossless RGB
(libx264rgb, qp 0), so that every decoder gives back the rendered pixels.

  python3 test/reference/make_mvbench_scenes.py --ffmpeg node_modules/@ffmpeg-installer/linux-x64/ffmpeg

Tasks (MVBench's names, files and folders), from the scenes' video events:
  Moving Direction   moving_direction.json  video/clevrer/video_validation/  a shape moves left/right/up/down
  Object Existence   object_existence.json  video/clevrer/video_validation/  which shape appears first / disappears
  State Change       state_change.json      video/perception/videos/         a shape's colour at the start / end
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenes as S  # noqa: E402

TASKS = {
    'Moving Direction': ('moving_direction.json', 'clevrer/video_validation', ['move']),
    'Object Existence': ('object_existence.json', 'clevrer/video_validation', ['appear', 'disappear']),
    'State Change': ('state_change.json', 'perception/videos', ['colour']),
}
FPS = 8


def candidates(rng, s):
    """Four options: the answer and three others of its kind (directions, shapes or colours), shuffled."""
    pool = S.DIRECTIONS if s['event'] == 'move' else S.SHAPES if s['event'] in ('appear', 'disappear') else list(S.COLOURS)
    options = [s['answer']] + rng.sample([x for x in pool if x != s['answer']], 3)
    rng.shuffle(options)
    return options


def encode(ffmpeg, frames, path):
    with tempfile.TemporaryDirectory() as tmp:
        for k, sc in enumerate(frames):
            S.render(sc).save(os.path.join(tmp, f'{k + 1:03d}.png'))
        subprocess.run([ffmpeg, '-loglevel', 'error', '-y', '-framerate', str(FPS), '-i', os.path.join(tmp, '%03d.png'),
                        '-c:v', 'libx264rgb', '-qp', '0', '-preset', 'veryslow', '-pix_fmt', 'rgb24', path], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures', 'mvbench-scenes'))
    ap.add_argument('--ffmpeg', default='ffmpeg')
    ap.add_argument('--per-task', type=int, default=6)
    ap.add_argument('--seed', type=int, default=2412)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(os.path.join(args.out, 'json'))
    rng = random.Random(args.seed)
    for task, (file, folder, events) in TASKS.items():
        os.makedirs(os.path.join(args.out, 'video', folder), exist_ok=True)
        items = []
        while len(items) < args.per_task:
            s = S.video_sample(rng)
            # Events of the task, taken in turn (Object Existence: appear, disappear, appear, ...).
            if s['event'] != events[len(items) % len(events)]:
                continue
            name = f"scenes-{s['event']}-{len(items):03d}.mp4"
            encode(args.ffmpeg, s['scenes'], os.path.join(args.out, 'video', folder, name))
            items.append({'video': name, 'question': s['question'], 'candidates': candidates(rng, s), 'answer': s['answer']})
        with open(os.path.join(args.out, 'json', file), 'w') as f:
            json.dump(items, f, indent=1)
            f.write('\n')
    print(json.dumps({'out': args.out, 'tasks': {t: args.per_task for t in TASKS}}))


if __name__ == '__main__':
    main()

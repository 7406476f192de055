#!/usr/bin/env python3
"""Preprocessing references: upstream's image tiling (PIL) and video frame sampling (decord).

Runs `utils/preprocess.py` of OpenGVLab/PVC (the PVC quick start's load_image / dynamic_preprocess /
get_index / load_video, identical to InternVL2's), imported from a checkout given by --pvc, never
committed. Writes test/fixtures/images/ (generated test images) and test/fixtures/reference/preprocess/.
See README.md beside this file.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import types

import numpy as np
import torch
from PIL import Image

SEED = 20241212


def torchvision_stand_in():
    """PyPI's torchvision does not load beside the CPU torch wheel. preprocess.py uses five transforms
    on PIL images; these stand-ins do what torchvision does for PIL input: Resize calls PIL's resize
    with the given filter (antialiasing is PIL's own), ToTensor is uint8 HWC -> float32 CHW / 255,
    Normalize subtracts the mean and divides by the std per channel in float32."""
    tv = types.ModuleType('torchvision')
    T = types.ModuleType('torchvision.transforms')
    F = types.ModuleType('torchvision.transforms.functional')

    class InterpolationMode:
        BICUBIC = Image.BICUBIC

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class Lambda:
        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            return self.f(x)

    class Resize:
        def __init__(self, size, interpolation):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            h, w = self.size
            return img.resize((w, h), self.interpolation)

    class ToTensor:
        def __call__(self, img):
            a = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], len(img.getbands()))
            return a.permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
            self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

        def __call__(self, t):
            return t.sub(self.mean).div(self.std)

    for name, obj in dict(Compose=Compose, Lambda=Lambda, Resize=Resize, ToTensor=ToTensor, Normalize=Normalize).items():
        setattr(T, name, obj)
    F.InterpolationMode = InterpolationMode
    tv.transforms, T.functional = T, F
    sys.modules.update({'torchvision': tv, 'torchvision.transforms': T, 'torchvision.transforms.functional': F})


def load_upstream(pvc_dir):
    path = os.path.join(pvc_dir, 'utils', 'preprocess.py')
    if not os.path.exists(path):
        sys.exit(f'--pvc {pvc_dir}: no utils/preprocess.py (pass a checkout of OpenGVLab/PVC)')
    torchvision_stand_in()
    import importlib.util
    spec = importlib.util.spec_from_file_location('pvc_preprocess', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pattern(w, h, seed):
    """A smooth but non-trivial RGB image (compresses well, every pixel differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    f = rng.uniform(0.002, 0.05, size=(3, 2))
    ph = rng.uniform(0, 6.28, size=3)
    img = np.stack([127.5 + 120 * np.sin(f[c, 0] * x + f[c, 1] * y + ph[c]) for c in range(3)], axis=-1)
    img += 6 * np.sin(0.9 * x)[..., None] * np.cos(0.7 * y)[..., None]  # fine detail the filters must handle
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generated_images(out_dir):
    """(file name, max_num) for each generated image; files written into out_dir."""
    specs = []

    def save(name, image, max_num, **kw):
        image.save(os.path.join(out_dir, name), **kw)
        specs.append((name, max_num))

    rgb = lambda w, h, s: Image.fromarray(pattern(w, h, s), 'RGB')
    save('tiny-1x1.png', Image.new('RGB', (1, 1), (200, 30, 90)), 12)
    save('tiny-13x7.png', rgb(13, 7, 1), 12)
    save('small-13x7-max1.png', rgb(13, 7, 2), 1)
    save('large-4000x3000.jpg', rgb(4000, 3000, 3), 12, quality=70)
    save('tall-1-12.png', rgb(60, 720, 4), 12)
    save('wide-12-1.png', rgb(720, 60, 5), 12)
    # Exact ties of the aspect-ratio rule: 11.5 is halfway between 11:1 and 12:1; the later candidate
    # wins only when the image area exceeds half the candidate's tiled area.
    save('tie-11.5-small.png', rgb(230, 20, 6), 12)
    save('tie-11.5-large.jpg', rgb(4600, 400, 7), 12, quality=80)
    save('tie-5.5-max6-small.png', rgb(110, 20, 8), 6)
    save('tie-5.5-max6-large.jpg', rgb(2200, 400, 9), 6, quality=80)
    save('gray.png', Image.fromarray(pattern(300, 200, 10)[..., 0], 'L'), 6)
    rgba = np.concatenate([pattern(320, 240, 11), pattern(320, 240, 12)[..., :1]], axis=-1)
    save('rgba.png', Image.fromarray(rgba, 'RGBA'), 12)
    save('palette.png', rgb(250, 180, 13).quantize(colors=64, method=Image.Quantize.MEDIANCUT), 12)
    save('odd-1000x747-max6.jpg', rgb(1000, 747, 14), 6, quality=80)
    return specs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pvc', required=True, help='checkout of OpenGVLab/PVC (holds utils/preprocess.py)')
    ap.add_argument('--pvc-commit', required=True)
    ap.add_argument('--assets', required=True, help='the shared assets folder (example_image1.jpg, ...)')
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
    args = ap.parse_args()
    up = load_upstream(os.path.abspath(args.pvc))
    out = os.path.abspath(args.out)
    img_dir = os.path.join(out, 'images')
    ref_dir = os.path.join(out, 'reference', 'preprocess')
    for d in (img_dir, ref_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    images = [(os.path.join(args.assets, f), f, 12) for f in ('example_image1.jpg', 'example_image2.jpg')]
    images += [(os.path.join(img_dir, f), f, m) for f, m in generated_images(img_dir)]
    records = []
    for path, name, max_num in images:
        image = Image.open(path).convert('RGB')
        tiles = up.dynamic_preprocess(image, image_size=448, use_thumbnail=True, max_num=max_num)
        records.append({
            'file': name, 'asset': not path.startswith(img_dir),
            'max_num': max_num, 'size': list(image.size), 'num_tiles': len(tiles),
            'tile_sha256': [hashlib.sha256(np.asarray(t, np.uint8).tobytes()).hexdigest() for t in tiles],
        })
    # Float pixel_values through upstream's load_image for one small image (1 tile).
    pv = up.load_image(os.path.join(img_dir, 'small-13x7-max1.png'), max_num=1)
    from safetensors.torch import save_file
    tensors = {'small-13x7-max1.pixel_values': pv.contiguous()}

    # Candidate grids in upstream's order (a set of tuples, then a stable sort by area).
    orders = {}
    for min_num in (1, 2, 3):
        for max_num in range(min_num, 41):
            target = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if i * j <= max_num and i * j >= min_num)
            orders[f'{min_num}-{max_num}'] = [list(r) for r in sorted(target, key=lambda x: x[0] * x[1])]

    # Video: decord's frame count and fps, get_index for several settings, frames of one of them.
    import decord
    video = os.path.join(args.assets, 'example_video.mp4')
    vr = decord.VideoReader(video, ctx=decord.cpu(0), num_threads=1)
    max_frame, fps = len(vr) - 1, float(vr.get_avg_fps())
    settings = [{'num_segments': 8, 'bound': None}, {'num_segments': 32, 'bound': None},
                {'num_segments': 64, 'bound': None}, {'num_segments': 16, 'bound': [3.5, 12.25]},
                {'num_segments': 1200, 'bound': None}]
    for s in settings:
        s['frame_indices'] = up.get_index(s['bound'], fps, max_frame, first_idx=0, num_segments=s['num_segments']).tolist()
    frames_dir = os.path.join(ref_dir, 'video-frames')
    os.makedirs(frames_dir)
    # Four of the eight frames of the first setting, as decord decodes them (lossless PNG).
    for k in settings[0]['frame_indices'][::2]:
        Image.fromarray(vr[k].asnumpy()).save(os.path.join(frames_dir, f'frame-{k:05d}.png'))
    _, npl = up.load_video(video, num_segments=8, max_num=1)
    save_file(tensors, os.path.join(ref_dir, 'tensors.safetensors'), metadata={'format': 'pt'})

    doc = {'pvc_commit': args.pvc_commit, 'images': records, 'candidate_orders': orders,
           'video': {'file': 'example_video.mp4', 'frames': len(vr), 'max_frame': max_frame, 'fps': fps,
                     'settings': settings, 'num_patches_list_8': npl,
                     'frames_dir': 'video-frames', 'frames_of_setting': 0},
           'versions': {'pillow': Image.__version__, 'decord': decord.__version__, 'numpy': np.__version__}}
    with open(os.path.join(ref_dir, 'reference.json'), 'w') as f:
        json.dump(doc, f, indent=1)
        f.write('\n')
    print('done', file=sys.stderr)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""Synthetic scenes: a seeded generator of images, image pairs and short videos of coloured shapes,
with English questions and one-word answers, for training and testing the tiny PVC-InternVL2 model
(train_scenes.py beside this file). Pure Python + Pillow; no model code.

Kinds of question (the `kind` of a sample):
  colour    What colour is the star?                        -> red
  shape     What shape is the blue object?                  -> circle
  exists    Is there a triangle?                            -> yes / no
  count     How many shapes are there?                      -> 3
  position  Is the square on the left or on the right?      -> left   (also top / bottom)
  multi     Image-1 / Image-2: what differs between them?   -> colour / shape / count / position
  video     Which way does the circle move? / Which shape appears first? / What colour is the star
            at the end? / Which shape disappears?           -> a direction, a shape or a colour
"""
import math
import random

from PIL import Image, ImageDraw

COLOURS = {
    'red': (220, 40, 40),
    'green': (40, 170, 60),
    'blue': (40, 80, 225),
    'yellow': (240, 210, 40),
    'purple': (150, 60, 190),
    'orange': (250, 140, 30),
}
SHAPES = ['circle', 'square', 'triangle', 'star', 'cross']
BACKGROUNDS = [(245, 245, 245), (225, 225, 215), (200, 205, 210), (60, 60, 70), (235, 230, 245)]
KINDS = ['colour', 'shape', 'exists', 'count', 'position', 'multi', 'video']
DIFFERENCES = ['colour', 'shape', 'count', 'position']
DIRECTIONS = ['left', 'right', 'up', 'down']
VIDEO_FRAMES = 8


# ---- drawing -------------------------------------------------------------------------------------

def draw_shape(d, shape, cx, cy, r, fill):
    if shape == 'circle':
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == 'square':
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == 'triangle':
        d.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)], fill=fill)
    elif shape == 'star':
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.42
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fill)
    elif shape == 'cross':
        w = r * 0.36
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(shape)


def background(rng, w, h):
    """Plain, or a low-contrast texture (stripes, checks or a gradient) that PNG still compresses well."""
    base = rng.choice(BACKGROUNDS)
    img = Image.new('RGB', (w, h), base)
    kind = rng.choice(['plain', 'plain', 'stripes', 'checks', 'gradient'])
    d = ImageDraw.Draw(img)
    dark = base[0] < 128
    other = tuple(min(255, max(0, c + (25 if dark else -25))) for c in base)
    if kind == 'stripes':
        step = rng.choice([6, 8, 12])
        for x in range(-h, w, step * 2):
            d.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=other)
    elif kind == 'checks':
        step = rng.choice([8, 12, 16])
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=other)
    elif kind == 'gradient':
        for y in range(h):
            t = y / max(1, h - 1)
            d.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(base, other)))
    return img


def render(scene):
    img = background(random.Random(scene['bg_seed']), scene['w'], scene['h'])
    d = ImageDraw.Draw(img)
    for o in scene['objects']:
        draw_shape(d, o['shape'], o['x'] * scene['w'], o['y'] * scene['h'], o['r'] * min(scene['w'], scene['h']), COLOURS[o['colour']])
    return img


def object_mask(scene, size):
    """Index (1 + object number, 0 background) of what is drawn at each pixel of the scene rendered at
    size x size (for square scenes): the vision stage's per-patch targets."""
    img = Image.new('L', (size, size), 0)
    d = ImageDraw.Draw(img)
    for k, o in enumerate(scene['objects']):
        draw_shape(d, o['shape'], o['x'] * size, o['y'] * size, o['r'] * size, k + 1)
    return img


# ---- scenes ----------------------------------------------------------------------------------------

def canvas(rng, square=False):
    """A size that the dynamic tiling (max 4 tiles of 112) turns into 1 tile (square, at most 150 px)
    or 2 tiles and a thumbnail (2:1 or 1:2)."""
    aspect = 'square' if square else rng.choice(['square', 'square', 'wide', 'tall'])
    if aspect == 'square':
        s = rng.randint(96, 150)
        return s, s
    long, short = rng.randint(200, 280), 0
    short = long // 2
    return (long, short) if aspect == 'wide' else (short, long)


def place(rng, objects, w, h, shape, colour, margin=0.04):
    """Adds a non-overlapping object (position in [0, 1] of width and height, r in units of the short side)."""
    m = min(w, h)
    for _ in range(200):
        r = rng.uniform(0.13, 0.2) if len(objects) < 2 else rng.uniform(0.11, 0.16)
        rx, ry = r * m / w, r * m / h
        x, y = rng.uniform(rx + margin, 1 - rx - margin), rng.uniform(ry + margin, 1 - ry - margin)
        if all(math.hypot((x - o['x']) * w, (y - o['y']) * h) > (r + o['r']) * m * 1.15 for o in objects):
            objects.append({'shape': shape, 'colour': colour, 'x': x, 'y': y, 'r': r})
            return True
    return False


def scene(rng, n=None, square=False):
    """1 to 4 objects, each of its own shape and its own colour (so that every question has one answer)."""
    w, h = canvas(rng, square)
    n = n or rng.randint(1, 4)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(list(COLOURS), n)
    objects = []
    for s, c in zip(shapes, colours):
        place(rng, objects, w, h, s, c)
    return {'w': w, 'h': h, 'objects': objects, 'bg_seed': rng.randrange(1 << 30)}


# ---- questions -------------------------------------------------------------------------------------

def image_question(rng, kind, sc):
    objs = sc['objects']
    if kind == 'colour':
        o = rng.choice(objs)
        return f"What colour is the {o['shape']}?", o['colour']
    if kind == 'shape':
        o = rng.choice(objs)
        return f"What shape is the {o['colour']} object?", o['shape']
    if kind == 'exists':
        s = rng.choice(SHAPES)
        return f'Is there a {s}?', 'yes' if any(o['shape'] == s for o in objs) else 'no'
    if kind == 'count':
        return 'How many shapes are there?', str(len(objs))
    if kind == 'position':
        # An object well off the centre on the asked axis (a quarter of the way from the middle at least).
        options = []
        for o in objs:
            if abs(o['x'] - 0.5) > 0.12:
                options.append((f"Is the {o['shape']} on the left or on the right?", 'left' if o['x'] < 0.5 else 'right'))
            if abs(o['y'] - 0.5) > 0.12:
                options.append((f"Is the {o['shape']} at the top or at the bottom?", 'top' if o['y'] < 0.5 else 'bottom'))
        return rng.choice(options) if options else None
    raise ValueError(kind)


def image_sample(rng, kind):
    for _ in range(50):
        sc = scene(rng)
        qa = image_question(rng, kind, sc)
        if qa:
            return {'kind': kind, 'data_flag': 1, 'scenes': [sc], 'question': qa[0], 'answer': qa[1]}
    raise RuntimeError('no position question found')


def multi_sample(rng):
    """Two square scenes that differ in exactly one way."""
    diff = rng.choice(DIFFERENCES)
    for _ in range(50):
        a = scene(rng, n=rng.randint(1, 3) if diff == 'count' else None, square=True)
        b = {**a, 'objects': [dict(o) for o in a['objects']]}
        k = rng.randrange(len(b['objects']))
        o = b['objects'][k]
        if diff == 'colour':
            o['colour'] = rng.choice([c for c in COLOURS if c not in {x['colour'] for x in a['objects']}])
        elif diff == 'shape':
            o['shape'] = rng.choice([s for s in SHAPES if s not in {x['shape'] for x in a['objects']}])
        elif diff == 'count':
            if not place(rng, b['objects'], b['w'], b['h'], rng.choice([s for s in SHAPES if s not in {x['shape'] for x in a['objects']}]),
                         rng.choice([c for c in COLOURS if c not in {x['colour'] for x in a['objects']}])):
                continue
        else:  # move one object by at least a third of the image
            others = b['objects'][:k] + b['objects'][k + 1:]
            placed = list(others)
            if not place(rng, placed, b['w'], b['h'], o['shape'], o['colour']):
                continue
            new = placed[-1]
            if math.hypot(new['x'] - o['x'], new['y'] - o['y']) < 0.33:
                continue
            b['objects'] = others[:k] + [new] + others[k:]
        if rng.random() < 0.5:  # the added object may be in either image
            a, b = b, a
        return {'kind': 'multi', 'data_flag': 2, 'scenes': [a, b],
                'question': 'Image-1: <image>\nImage-2: <image>\nWhat differs between Image-1 and Image-2?', 'answer': diff}
    raise RuntimeError('no pair found')


def video_sample(rng):
    """VIDEO_FRAMES square frames of 112 px; one event that needs time to be told."""
    event = rng.choice(['move', 'appear', 'colour', 'disappear'])
    size = 112
    base = scene(rng, n=rng.randint(1, 2), square=True)
    base['w'] = base['h'] = size
    frames = []
    T = VIDEO_FRAMES
    if event == 'move':
        direction = rng.choice(DIRECTIONS)
        shape = rng.choice([s for s in SHAPES if s not in {o['shape'] for o in base['objects']}])
        colour = rng.choice([c for c in COLOURS if c not in {o['colour'] for o in base['objects']}])
        r = rng.uniform(0.12, 0.16)
        span = rng.uniform(0.4, 0.6)
        lo, hi = r + 0.02, 1 - r - 0.02
        start, across = rng.uniform(lo, hi - span), rng.uniform(lo, hi)
        path = []
        for t in range(T):
            p = start + span * t / (T - 1)
            if direction in ('left', 'up'):
                p = (hi + lo) - p
            path.append((p, across) if direction in ('left', 'right') else (across, p))
        # the static objects are those the mover never touches
        static = [o for o in base['objects'] if all(math.hypot(o['x'] - x, o['y'] - y) > o['r'] + r + 0.02 for x, y in path)]
        frames = [{**base, 'objects': static + [{'shape': shape, 'colour': colour, 'x': x, 'y': y, 'r': r}]} for x, y in path]
        return {'kind': 'video', 'event': event, 'data_flag': 3, 'scenes': frames,
                'question': f'Which way does the {shape} move?', 'answer': direction}
    if event == 'appear':
        sc = scene(rng, n=2, square=True)
        sc['w'] = sc['h'] = size
        first, second = sc['objects']
        t1 = rng.randint(1, T // 2 - 1)
        t2 = rng.randint(t1 + 2, T - 2)
        for t in range(T):
            frames.append({**sc, 'objects': [o for o, ts in ((first, t1), (second, t2)) if t >= ts]})
        return {'kind': 'video', 'event': event, 'data_flag': 3, 'scenes': frames,
                'question': 'Which shape appears first?', 'answer': first['shape']}
    if event == 'disappear':
        sc = scene(rng, n=rng.randint(2, 3), square=True)
        sc['w'] = sc['h'] = size
        gone = rng.choice(sc['objects'])
        t1 = rng.randint(2, T - 3)
        for t in range(T):
            frames.append({**sc, 'objects': [o for o in sc['objects'] if o is not gone or t < t1]})
        return {'kind': 'video', 'event': event, 'data_flag': 3, 'scenes': frames,
                'question': 'Which shape disappears?', 'answer': gone['shape']}
    # colour change: asked at the start or at the end
    o = rng.choice(base['objects'])
    new = rng.choice([c for c in COLOURS if c not in {x['colour'] for x in base['objects']}])
    t1 = rng.randint(2, T - 2)
    for t in range(T):
        frames.append({**base, 'objects': [{**x, 'colour': new} if x is o and t >= t1 else x for x in base['objects']]})
    when = rng.choice(['start', 'end'])
    return {'kind': 'video', 'event': event, 'data_flag': 3, 'scenes': frames,
            'question': f"What colour is the {o['shape']} at the {when}?", 'answer': o['colour'] if when == 'start' else new}


def sample(rng, kind):
    if kind == 'multi':
        return multi_sample(rng)
    if kind == 'video':
        return video_sample(rng)
    return image_sample(rng, kind)


def prompt_question(s):
    """The question as chat() gets it: video frames prefixed Frame{k}: <image> (upstream's video example)."""
    if s['data_flag'] == 3:
        return ''.join(f'Frame{k + 1}: <image>\n' for k in range(len(s['scenes']))) + s['question']
    if s['data_flag'] == 1:
        return '<image>\n' + s['question']
    return s['question']


def corpus_lines():
    """Every question template and answer word (for the tokenizer)."""
    lines = []
    for s in SHAPES:
        lines += [f'What colour is the {s}?', f'Is there a {s}?', f'Is the {s} on the left or on the right?',
                  f'Is the {s} at the top or at the bottom?', f'Which way does the {s} move?',
                  f'What colour is the {s} at the start?', f'What colour is the {s} at the end?', s]
    for c in COLOURS:
        lines += [f'What shape is the {c} object?', c]
    lines += ['How many shapes are there?', 'Which shape appears first?', 'Which shape disappears?',
              'Image-1: <image>\nImage-2: <image>\nWhat differs between Image-1 and Image-2?',
              ''.join(f'Frame{k + 1}: <image>\n' for k in range(16))]
    return lines + ANSWERS


# Every answer word (the tokenizer must make each one piece).
ANSWERS = list(COLOURS) + SHAPES + DIFFERENCES + DIRECTIONS + ['yes', 'no', 'top', 'bottom', '1', '2', '3', '4']

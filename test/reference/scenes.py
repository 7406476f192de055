#!/usr/bin/env python3
"""Synthetic scenes: a seeded generator of images, image pairs and short videos of coloured shapes,
with English questions and one-word answers, for training and testing the tiny PVC-InternVL2 model
(train_scenes.py beside this file). Pure Python + Pillow; no model code. Every object sits in a cell of its
own of a grid of CELLS cells along the short side (grid()), so that after the dynamic tiling one 28 px
visual token shows one object; a video's mover steps from cell to cell.

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
CELLS = 4


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


def draw_object(d, scene, o, fill):
    """One of the scene's objects, in pixels of the scene's size (x, y in [0, 1] of width and height, r in
    units of the short side)."""
    draw_shape(d, o['shape'], o['x'] * scene['w'], o['y'] * scene['h'], o['r'] * min(scene['w'], scene['h']), fill)


def render(scene):
    img = background(random.Random(scene['bg_seed']), scene['w'], scene['h'])
    d = ImageDraw.Draw(img)
    for o in scene['objects']:
        draw_object(d, scene, o, COLOURS[o['colour']])
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


def grid(w, h):
    """The cells objects sit in: CELLS along the short side, as many of the same size along the long one
    (4 x 4 in a square picture, 8 x 4 in a 2:1 one). After the dynamic tiling every cell is one 28 px
    visual token of a 112 px tile, so that a token shows one object."""
    m = min(w, h)
    return round(CELLS * w / m), round(CELLS * h / m)


def cell_of(o, w, h):
    gx, gy = grid(w, h)
    return int(o['x'] * gx), int(o['y'] * gy)


def put(rng, cell, w, h, shape, colour):
    """An object in a cell: radius 0.34 to 0.46 of the cell (in units of the short side), centre jittered
    so that it stays inside the cell."""
    gx, gy = grid(w, h)
    r = rng.uniform(0.34, 0.46) / CELLS
    j = 0.5 / CELLS - r - 0.01
    m = min(w, h)
    return {'shape': shape, 'colour': colour, 'x': (cell[0] + 0.5) / gx + rng.uniform(-j, j) * m / w,
            'y': (cell[1] + 0.5) / gy + rng.uniform(-j, j) * m / h, 'r': r}


def place(rng, objects, w, h, shape, colour, away_from=None):
    """Adds an object in a free cell (position in [0, 1] of width and height, r in units of the short
    side); away_from: a cell whose centre must be at least a third of the picture away."""
    gx, gy = grid(w, h)
    taken = {cell_of(o, w, h) for o in objects}
    free = [(i, j) for j in range(gy) for i in range(gx) if (i, j) not in taken and
            (away_from is None or math.hypot((i - away_from[0]) / gx, (j - away_from[1]) / gy) >= 0.33)]
    if not free:
        return False
    objects.append(put(rng, rng.choice(free), w, h, shape, colour))
    return True


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
        else:  # move one object to a cell at least a third of the image away
            others = b['objects'][:k] + b['objects'][k + 1:]
            placed = list(others)
            if not place(rng, placed, b['w'], b['h'], o['shape'], o['colour'], away_from=cell_of(o, b['w'], b['h'])):
                continue
            b['objects'] = others[:k] + [placed[-1]] + others[k:]
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
    if event == 'move':  # from cell to cell along a row or a column, 2 or 3 cells in all
        direction = rng.choice(DIRECTIONS)
        shape = rng.choice([sh for sh in SHAPES if sh not in {o['shape'] for o in base['objects']}])
        colour = rng.choice([c for c in COLOURS if c not in {o['colour'] for o in base['objects']}])
        steps = rng.randint(2, CELLS - 1)
        first, line = rng.randint(0, CELLS - 1 - steps), rng.randint(0, CELLS - 1)
        along = [first + round(steps * t / (T - 1)) for t in range(T)]
        if direction in ('left', 'up'):
            along = [CELLS - 1 - p for p in along]
        path = [(p, line) if direction in ('left', 'right') else (line, p) for p in along]
        mover = put(rng, path[0], size, size, shape, colour)
        # the static objects are those outside the mover's cells
        static = [o for o in base['objects'] if cell_of(o, size, size) not in set(path)]
        frames = [{**base, 'objects': static + [{**mover, 'x': mover['x'] + (c[0] - path[0][0]) / CELLS, 'y': mover['y'] + (c[1] - path[0][1]) / CELLS}]}
                  for c in path]
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

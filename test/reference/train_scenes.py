#!/usr/bin/env python3
"""Trains the tiny PVC-InternVL2 model on synthetic scenes (scenes.py) on the CPU, writes it as a plain
HF checkpoint (bf16 shards, index, config, tokenizer files) and a held-out evaluation set with PyTorch's
greedy answers. See README.md beside this file for the command and the commit it ran from.

The model is upstream's InternVLChatModel (mlp1, pixel shuffle, InternLM2, the internlm2-chat template)
with pvc_spec.py's PVC vision model (AdaLN, temporal attention), imported from --upstream; images are
tiled by the PVC repository's preprocess.py (dynamic tiling with a thumbnail), imported from --pvc.

Recipe (three stages, seeded, counted in steps):
  1. vision: the ViT and mlp1 with throw-away linear heads on the visual tokens (one per 28 px cell: patch
     28, no pixel shuffle; scenes.py puts every object in a cell of its own): first shape and colour alone,
     one frame per tile; then every target, images with their 4 repeats and 8-frame videos: shape, colour,
     row and column per token; in videos what left the cell since the first frame and since when its
     object is there; per tile, which shapes and colours and how many objects;
  then mlp1's last layer is re-centred and re-scaled (center_visual_tokens);
  2. end to end: every question kind, the answer token and <|im_end|> as targets, plus a guidance loss:
     three attention heads told where to look (the word naming the object, then the object's visual
     tokens; see lm_loss and Data.focus) and the answer read early, after LLM layer 1; the ViT and mlp1
     frozen for the first steps.
  3. position: position questions in more than half of every batch, with heads 2 and 3 of layer 1 also
     told to look at the asked object (after stage 2 the values of heads 0 and 1 no longer carried where
     it is); the vision side frozen.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import make_preprocess_fixtures as mpf  # noqa: E402
import pvc_spec  # noqa: E402
import scenes as S  # noqa: E402

SEED = 20251125
IMAGE_SIZE = 112
MAX_TILES = 4
# 28 px patches, one per cell of scenes.py's grid, so that a patch holds one whole object (with objects at
# free positions, 14 or 28 px patches, the ViT stayed at chance on shape for hundreds of steps), and no
# pixel shuffle (downsample_ratio 1): 16 tokens per tile and frame, each showing one object or none.
VISION = dict(hidden_size=192, intermediate_size=768, num_attention_heads=6, num_hidden_layers=4, image_size=IMAGE_SIZE,
              patch_size=28, norm_type='layer_norm', qkv_bias=True, qk_normalization=False)
DOWNSAMPLE = 1.0
LLM = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
           max_position_embeddings=2048, rope_scaling={'type': 'dynamic', 'factor': 2.0})
PVC = {'use_temporal': True, 'image_repeat_time': 4, 'video_repeat_time': 1, 'tile_repeat_way': None, 'mlp_add_ops': None}
ADALN_LAYERS, TEMPORAL_LAYERS = [0, 1, 2, 3], [2, 3]
SP_VOCAB = 640
EVAL_PER_KIND = 100


def tokenizer_corpus():
    lines = [mf.SYSTEM_MESSAGE] * 20
    for q in S.corpus_lines():
        lines += [q] * 10
    for word in S.ANSWERS:  # alone and after a space, as pieces of their own
        lines += [word, ' ' + word, word + '?'] * 20
    lines += ['<|im_start|>user\n', '<|im_end|>', '<|im_start|>assistant\n', '<img>', '</img>'] * 20
    return lines


def build_tokenizer(ckpt):
    sp = mf.train_tokenizer(ckpt, tokenizer_corpus(), SP_VOCAB)
    mf.write_tokenizer_files(ckpt, sp)
    tok, _ = mf.load_tokenizer(ckpt)
    # Every answer one token: the first generated token decides the answer.
    for word in S.ANSWERS:
        assert len(tok(word, add_special_tokens=False)['input_ids']) == 1, (word, tok.tokenize(word))
    return tok


def build_model(tok):
    from internvl.model.internvl_chat import InternVLChatModel
    config = mf.make_config(VISION, LLM, len(tok), None)
    config.downsample_ratio = DOWNSAMPLE
    config.max_dynamic_patch = MAX_TILES
    return config, InternVLChatModel(config, vision_model=pvc_spec.PVCVisionModel(config.vision_config, ADALN_LAYERS, TEMPORAL_LAYERS))


def init_for_training(model):
    """Token embeddings of unit scale (HF's 0.02 makes them ~50 times smaller than the visual tokens out
    of mlp1, and the RMSNorm of such large inputs passes next to no gradient back into mlp1 and the ViT)."""
    with torch.no_grad():
        model.language_model.get_input_embeddings().weight.normal_(0.0, 1.0)


# ---- data ------------------------------------------------------------------------------------------

class Data:
    def __init__(self, pre, tok, model):
        self.pre, self.tok, self.model = pre, tok, model
        self.transform = pre.build_transform(IMAGE_SIZE)
        self.im_end = tok.convert_tokens_to_ids('<|im_end|>')
        self.img_context = tok.convert_tokens_to_ids('<IMG_CONTEXT>')

    def tiles(self, img):
        return [self.transform(t) for t in self.pre.dynamic_preprocess(img, max_num=MAX_TILES, image_size=IMAGE_SIZE, use_thumbnail=True)]

    def encode(self, s, images=None):
        """Pixel tiles, the prompt's ids, the training targets of a sample and its focus (focus())."""
        images = images or [S.render(sc) for sc in s['scenes']]
        if s['data_flag'] == 3:
            per = [[self.transform(img)] for img in images]
        else:
            per = [self.tiles(img) for img in images]
        pixels = torch.stack([t for p in per for t in p])
        num_patches = [len(p) for p in per]
        query, _ = pvc_spec.prompt_of(self.model, self.tok, S.prompt_question(s), num_patches, s['data_flag'], PVC)
        prompt = self.tok(query)['input_ids']
        answer = self.tok(s['answer'], add_special_tokens=False)['input_ids'] + [self.im_end]
        return {'pixels': pixels, 'num_patches': num_patches, 'data_flag': s['data_flag'], 'ids': prompt + answer,
                'labels': [-100] * len(prompt) + answer, 'focus': self.focus(s, prompt), 'kind': s['kind']}

    # ---- where the answer is: targets for two attention heads (see lm_loss) ----

    def token_cover(self, tile):
        """Per visual token of a 112 px mask tile (white: the object), the largest share of one of its
        patches that the object covers; tokens in the projector's order (through the model's pixel shuffle)."""
        P = VISION['patch_size']
        g = IMAGE_SIZE // P
        a = np.asarray(tile.convert('L'), np.float32).reshape(g, P, g, P).mean((1, 3)) / 255.0
        x = self.model.pixel_shuffle(torch.from_numpy(a).reshape(1, g, g, 1), scale_factor=self.model.downsample_ratio)
        return x.reshape(-1, x.shape[-1]).amax(-1)

    def object_tokens(self, sc, objects, tiled, last_tile=False):
        """Indices, among a picture's visual tokens (all tiles and repeats, or one video frame), of the
        tokens that show one of the objects; last_tile: only those of the whole-picture view (the
        thumbnail, or the single tile), where left and right, top and bottom are the picture's."""
        mask = Image.new('RGB', (sc['w'], sc['h']), 0)
        d = ImageDraw.Draw(mask)
        for o in objects:
            S.draw_object(d, sc, o, (255, 255, 255))
        tiles = self.pre.dynamic_preprocess(mask, max_num=MAX_TILES, image_size=IMAGE_SIZE, use_thumbnail=True) if tiled else [mask]
        reps = PVC['image_repeat_time'] if tiled else PVC['video_repeat_time']
        cover = torch.cat([self.token_cover(t).repeat(reps) for t in tiles])
        if last_tile:
            cover[:-cover.shape[0] // len(tiles)] = 0
        return (cover > 0.1).nonzero().flatten().tolist()

    def focus(self, s, prompt):
        """Where the answer is, for the focus loss (lm_loss): the prompt position of the word naming the
        object asked about (None if no word names it), and positions of visual tokens for two heads
        ('first', 'last'): the named object (in the whole-picture view for where it is); for two images,
        Image-2's tokens where the two differ (where an object changed, moved from or to, or was added or
        removed), with 'align': pairs of prompt positions, each Image-2 token and the Image-1 token of the
        same cell, for head 1 of layer 0 (so that an Image-2 token can tell that it differs); in a video,
        the object at the first and the last frame that tell the answer (what moved, at the start and the
        end; a colour when asked; what appeared first, at the end; where what disappeared was, at the end).
        None for other questions."""
        ctx = [i for i, t in enumerate(prompt) if t == self.img_context]
        named = [w for w in S.SHAPES + list(S.COLOURS) if re.search(rf'\b{w}\b', s['question'])]
        word = None
        if named:
            pieces = [i for i, t in enumerate(prompt) if self.tok.convert_ids_to_tokens(t).lstrip('\u2581') == named[0]]
            word = pieces[-1] if pieces else None
        frames = s['scenes']
        out = lambda first, last: {'word': word, 'p': len(prompt) - 1, 'first': first, 'last': last} if first and last else None  # noqa: E731
        if s['data_flag'] == 1:
            sc = frames[0]
            hits = [o for o in sc['objects'] if named and named[0] in (o['shape'], o['colour'])]
            if not hits:  # how many, or "is there a ...?" with the answer no
                return None
            toks = [ctx[i] for i in self.object_tokens(sc, hits[:1], True, last_tile=s['kind'] == 'position')]
            return out(toks, toks)
        if s['data_flag'] == 2:  # square scenes: one tile each, the same cells
            a, b = frames
            changed = [o for o in a['objects'] if o not in b['objects']] + [o for o in b['objects'] if o not in a['objects']]
            n = len(ctx) // 2
            toks = [ctx[n + i] for i in self.object_tokens(b, changed, True)]
            return {**out(toks, toks), 'align': (ctx[n:], ctx[:n])} if toks else None
        event, T = s['event'], len(frames)
        per_frame = len(ctx) // T

        def at(t, sc, pick):
            hits = [o for o in sc['objects'] if pick(o)]
            return [ctx[t * per_frame + i] for i in self.object_tokens(sc, hits[:1], False)] if hits else []

        if event == 'move':
            pick = lambda o: o['shape'] == named[0]  # noqa: E731
            return out(at(0, frames[0], pick), at(T - 1, frames[T - 1], pick))
        if event == 'colour':
            t = 0 if s['question'].endswith('start?') else T - 1
            toks = at(t, frames[t], lambda o: o['shape'] == named[0])
            return out(toks, toks)
        # what appeared first, at the end; where what disappeared was (in the first frame), at the end
        toks = at(T - 1, frames[T - 1] if event == 'appear' else frames[0], lambda o: o['shape'] == s['answer'])
        return out(toks, toks)


def collate(items):
    L = max(len(x['ids']) for x in items)
    ids = torch.full((len(items), L), 2, dtype=torch.long)
    labels = torch.full((len(items), L), -100, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for i, x in enumerate(items):  # right padding: positions are 0.. for every row, as in generation
        ids[i, :len(x['ids'])] = torch.tensor(x['ids'])
        labels[i, :len(x['labels'])] = torch.tensor(x['labels'])
        mask[i, :len(x['ids'])] = 1
    return ids, labels, mask


def visual_tokens_batch(model, items):
    """pvc_spec.visual_tokens for a batch: all image tiles (4 repeats each, a sequence per tile) in one ViT
    pass and all videos (a sequence per video) in another; tokens returned per item, in prompt order."""
    out = [None] * len(items)
    images = [i for i, x in enumerate(items) if x['data_flag'] != 3]
    videos = [i for i, x in enumerate(items) if x['data_flag'] == 3]
    if images:
        reps = PVC['image_repeat_time']
        tiles = torch.cat([items[i]['pixels'] for i in images])
        tok = pvc_spec.project(model, model.vision_model(tiles.repeat_interleave(reps, dim=0), reps))
        for i, part in zip(images, tok.split([items[i]['pixels'].shape[0] * reps for i in images])):
            out[i] = part.reshape(-1, part.shape[-1])
    if videos:
        T = items[videos[0]]['pixels'].shape[0]
        assert all(items[i]['pixels'].shape[0] == T for i in videos)
        tok = pvc_spec.project(model, model.vision_model(torch.cat([items[i]['pixels'] for i in videos]), T))
        for i, part in zip(videos, tok.split(T)):
            out[i] = part.reshape(-1, part.shape[-1])
    return out


def lm_loss(model, items, img_context, vision_grad=True, position_heads=()):
    """Cross-entropy of the answer, rows right, and the guidance loss (logged as focus_loss): (1) focus: at the position that
    predicts the answer, head 0 of layer 0 should look at the word naming the object, heads 0 and 1 of
    layer 1 at the object's visual tokens (a video's first and last frame that matter; for two images,
    where Image-2 differs, which head 1 of layer 0 can tell by looking, at every Image-2 token, at the
    Image-1 token of the same cell); a tiny LLM trained from scratch otherwise sits for thousands of
    steps at answering about a random object of the picture (the two hops, word then object, each need
    the other to be rewarded); (2) early answer: the answer
    token read from the residual after layer 1 through the final norm and the output layer. Without (2)
    the heads found the object but after 600 steps the layer's output still did not carry its colour
    (a linear probe: 59% where the layer's input at the object gave 100%)."""
    ids, labels, mask = collate(items)
    lm = model.language_model
    embeds = lm.get_input_embeddings()(ids)
    with torch.set_grad_enabled(vision_grad):
        vis = torch.cat(visual_tokens_batch(model, items))
    sel = (ids == img_context).reshape(-1)
    assert int(sel.sum()) == vis.shape[0]
    flat = embeds.reshape(-1, embeds.shape[-1])
    flat = flat.index_put((sel.nonzero(as_tuple=True)[0],), vis)
    out = lm(inputs_embeds=flat.reshape(embeds.shape), attention_mask=mask, output_attentions=True, output_hidden_states=True)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    a0, a1 = out.attentions[0].float(), out.attentions[1].float()
    terms = []
    for i, x in enumerate(items):
        f = x['focus']
        if f is None:
            continue
        if f['word'] is not None:
            terms.append(-torch.log(a0[i, 0, f['p'], f['word']] + 1e-6))
        if 'align' in f:
            q, k = f['align']
            terms.append(-torch.log(a0[i, 1, q, k] + 1e-6).mean())
        terms.append(-torch.log(a1[i, 0, f['p'], f['first']].sum() + 1e-6))
        terms.append(-torch.log(a1[i, 1, f['p'], f['last']].sum() + 1e-6))
        if x['kind'] == 'position':
            terms += [-torch.log(a1[i, h, f['p'], f['first']].sum() + 1e-6) for h in position_heads]
    focus = torch.stack(terms).sum() / len(items) if terms else torch.zeros(())
    first = (labels != -100).float().argmax(-1)  # each row's first answer token
    every = torch.arange(len(items))
    early = lm.output(lm.model.norm(out.hidden_states[2][every, first - 1])).float()
    focus = focus + nn.functional.cross_entropy(early, labels[every, first])
    with torch.no_grad():
        pred = logits.argmax(-1)
        rows = ((pred == target) | (target == -100)).all(-1)
    return loss, rows, focus, vis.detach().norm(dim=-1).mean()


# ---- stage 1: the vision side with per-token targets ------------------------------------------------

N_SHAPES, N_COLOURS = len(S.SHAPES), len(S.COLOURS)
CELL = round(VISION['patch_size'] / DOWNSAMPLE)  # the pixels of one visual token
GRID = IMAGE_SIZE // CELL


def label_map(sc):
    """The scene's object index at every pixel (1 + object number, 0 background), at its own size."""
    img = Image.new('L', (sc['w'], sc['h']), 0)
    d = ImageDraw.Draw(img)
    for k, o in enumerate(sc['objects']):
        S.draw_object(d, sc, o, k + 1)
    return img


def tile_labels(sc, n_tiles):
    """label_map cut as dynamic_preprocess cuts the picture into n_tiles tiles (1, or 2 and a thumbnail for
    2:1 and 1:2 scenes), each resized to the tile size with nearest-neighbour sampling."""
    lab = label_map(sc)
    if n_tiles == 1:
        return [lab.resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST)]
    gx, gy = (2, 1) if sc['w'] > sc['h'] else (1, 2)
    assert n_tiles == gx * gy + 1, (sc['w'], sc['h'], n_tiles)
    big = lab.resize((IMAGE_SIZE * gx, IMAGE_SIZE * gy), Image.NEAREST)
    tiles = [big.crop((i * IMAGE_SIZE, j * IMAGE_SIZE, (i + 1) * IMAGE_SIZE, (j + 1) * IMAGE_SIZE)) for j in range(gy) for i in range(gx)]
    return tiles + [lab.resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST)]


def cell_objects(tile):
    """Per visual token (a patch: downsample_ratio 1), the index of the object covering at least 15% of
    it (the largest), 0 for background; and the objects seen anywhere in the tile."""
    a = np.asarray(tile, np.int64)
    P = CELL
    cells = a.reshape(GRID, P, GRID, P).transpose(0, 2, 1, 3).reshape(GRID * GRID, -1)
    out = np.zeros(GRID * GRID, np.int64)
    for p in range(GRID * GRID):
        c = np.bincount(cells[p], minlength=5)
        k = int(c[1:].argmax()) + 1
        if c[k] >= 0.15 * cells.shape[1]:
            out[p] = k
    return out, sorted(set(np.unique(a).tolist()) - {0})


def object_targets(sc, cells, seen):
    """Shape and colour (1-based, 0 background) per token, and the tile's bag of shapes and colours."""
    shape = np.array([S.SHAPES.index(sc['objects'][k - 1]['shape']) + 1 if k else 0 for k in cells])
    colour = np.array([list(S.COLOURS).index(sc['objects'][k - 1]['colour']) + 1 if k else 0 for k in cells])
    bag = torch.zeros(N_SHAPES + N_COLOURS)
    for k in seen:
        o = sc['objects'][k - 1]
        bag[S.SHAPES.index(o['shape'])] = bag[N_SHAPES + list(S.COLOURS).index(o['colour'])] = 1
    return shape, colour, bag


def image_batch(rng, pre, transform, n):
    """Tiles of n scenes of every aspect (single tiles, the two tiles of a 2:1 or 1:2 scene, thumbnails):
    pixels, per-token shape and colour, and per tile its bag of shapes and colours and its object count."""
    xs, shapes, colours, bags, counts = [], [], [], [], []
    while len(xs) < n:
        sc = S.scene(rng)
        rgb = pre.dynamic_preprocess(S.render(sc), max_num=MAX_TILES, image_size=IMAGE_SIZE, use_thumbnail=True)
        for t, lab in zip(rgb, tile_labels(sc, len(rgb))):
            cells, seen = cell_objects(lab)
            sh, co, bag = object_targets(sc, cells, seen)
            xs.append(transform(t))
            shapes.append(sh)
            colours.append(co)
            bags.append(bag)
            counts.append(len(seen))
    return (torch.stack(xs[:n]), torch.from_numpy(np.stack(shapes[:n])), torch.from_numpy(np.stack(colours[:n])), torch.stack(bags[:n]),
            torch.tensor(counts[:n]))


def video_batch(rng, transform, n):
    """n clips of S.VIDEO_FRAMES frames: per frame and token the shape and colour now, the shape that was
    there in the first frame and is gone now (what disappeared or moved away), and since which frame the
    object now there has been there (what appeared first). Shapes are unique within a clip."""
    xs, shapes, colours, gone, since = [], [], [], [], []
    for _ in range(n):
        frames = S.video_sample(rng)['scenes']
        cur = []
        for sc in frames:
            cells, _ = cell_objects(label_map(sc))
            sh, co, _ = object_targets(sc, cells, [])
            xs.append(transform(S.render(sc)))
            shapes.append(sh)
            colours.append(co)
            cur.append(sh)
        cur = np.stack(cur)
        g = np.where((cur == 0) & (cur[:1] != 0), cur[:1], 0)
        s = np.full(cur.shape, -100)
        for t in range(len(frames)):
            for p in range(cur.shape[1]):
                if cur[t, p]:
                    k = t
                    while k > 0 and cur[k - 1, p] == cur[t, p]:
                        k -= 1
                    s[t, p] = k
        gone.append(g)
        since.append(s)
    cat = lambda v: torch.from_numpy(np.concatenate(v))  # noqa: E731
    return torch.stack(xs), torch.from_numpy(np.stack(shapes)), torch.from_numpy(np.stack(colours)), cat(gone), cat(since)


def train_vision(model, rng, pre, steps, images, videos, log, objects_first, lr=1e-3, warmup=100):
    """The ViT (AdaLN and temporal attention included) and mlp1, with throw-away linear heads on the
    visual tokens: per token the shape and colour it shows, its row and column in the tile, and in
    videos what left it since the first frame and since when its object is there; per tile (the mean of
    its tokens: what a first, uniform attention of the LLM reads) the shapes and colours seen and how many
    objects. The first objects_first steps learn shape and colour alone, one frame per tile and twice the
    tiles (with every target at once, shape stayed near chance for hundreds of steps); then images run as
    chat() runs them, each tile a sequence of image_repeat_time frames, beside videos."""
    D, T = LLM['hidden_size'], S.VIDEO_FRAMES
    transform = pre.build_transform(IMAGE_SIZE)
    ns, nc, nq = N_SHAPES + 1, N_COLOURS + 1, N_SHAPES + N_COLOURS
    token_head, video_head, tile_head = nn.Linear(D, ns + nc + 2 * GRID), nn.Linear(D, ns + T), nn.Linear(D, nq + 5)
    heads = [token_head, video_head, tile_head]
    trunk = list(model.vision_model.parameters()) + list(model.mlp1.parameters())
    opt = torch.optim.AdamW([{'params': trunk}, {'params': [p for h in heads for p in h.parameters()]}], lr=lr, weight_decay=0.0)
    ce, bce = nn.functional.cross_entropy, nn.functional.binary_cross_entropy_with_logits
    # what left a cell is rare: its classes weigh more than "nothing left"
    gone_weight = torch.tensor([1.0] + [10.0] * N_SHAPES)
    rows = torch.arange(GRID * GRID) // GRID
    cols = torch.arange(GRID * GRID) % GRID
    start = time.time()

    def objects(logits, shape, colour):
        return ce(logits[..., :ns].reshape(-1, ns), shape.reshape(-1)) + ce(logits[..., ns:ns + nc].reshape(-1, nc), colour.reshape(-1))

    def places(logits):
        n = logits.shape[0]
        return ce(logits[..., ns + nc:ns + nc + GRID].reshape(-1, GRID), rows.repeat(n)) + ce(logits[..., ns + nc + GRID:].reshape(-1, GRID), cols.repeat(n))

    for step in range(steps):
        # warm-up, and again for the trunk when the new heads start (their first gradients are large)
        opt.param_groups[0]['lr'] = lr * min(1.0, (step + 1) / warmup, (step + 1 - objects_first) / warmup if step >= objects_first else 1.0)
        first = step < objects_first
        R, n = (1, 2 * images) if first else (PVC['image_repeat_time'], images)
        x, sh, co, bag, count = image_batch(rng, pre, transform, n)
        tok = pvc_spec.project(model, model.vision_model(x.repeat_interleave(R, dim=0), R))  # [n * R, N, D]
        rep = lambda v: v.repeat_interleave(R, dim=0)  # noqa: E731
        lg = token_head(tok)
        tile = tile_head(tok.reshape(n, R, -1, D).mean((1, 2)))
        loss = objects(lg, rep(sh), rep(co))
        if not first:
            loss = loss + places(lg) + bce(tile[:, :nq], bag) + ce(tile[:, nq:], count)
            vx, vsh, vco, vgone, vsince = video_batch(rng, transform, videos)
            vtok = pvc_spec.project(model, model.vision_model(vx, T))  # [videos * T, N, D]
            vlg, vlog = token_head(vtok), video_head(vtok)
            loss = loss + objects(vlg, vsh, vco) + places(vlg) + ce(vlog[..., :ns].reshape(-1, ns), vgone.reshape(-1), weight=gone_weight) + \
                ce(vlog[..., ns:].reshape(-1, T), vsince.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            with torch.no_grad():
                obj = rep(sh) > 0
                acc = lambda pred, y, m: round((pred == y)[m].float().mean().item(), 3)  # noqa: E731
                log({'stage': 'vision', 'step': step, 'minutes': round((time.time() - start) / 60, 2), 'loss': round(loss.item(), 4),
                     'token_shape_acc': acc(lg[..., :ns].argmax(-1), rep(sh), obj), 'token_colour_acc': acc(lg[..., ns:ns + nc].argmax(-1), rep(co), obj),
                     **({} if first else {'tile_count_acc': acc(tile[:, nq:].argmax(-1), count, count >= 0),
                                          'video_shape_acc': acc(vlg[..., :ns].argmax(-1), vsh, vsh > 0),
                                          'video_gone_acc': acc(vlog[..., :ns].argmax(-1), vgone, vgone > 0),
                                          'video_since_acc': acc(vlog[..., ns:].argmax(-1), vsince, vsince >= 0)})})


# ---- stage 2: end to end ---------------------------------------------------------------------------

def center_visual_tokens(model, data, rng, n=64):
    """Between the stages: after stage 1 the visual tokens share a large common part (in the first toy their
    norm was ~150, 10% of it varying between scenes), which the LLM's RMSNorm turns into near-constant
    inputs. Shifting
    mlp1's last bias by their mean over n scenes and scaling the last layer to the token embeddings' scale
    (unit variance per dimension) leaves what varies. A change of two parameters; the model stays plain."""
    items = [data.encode(S.sample(rng, k)) for k in (S.KINDS * n)[:n]]
    with torch.no_grad():
        vis = torch.cat(visual_tokens_batch(model, items))
        last = model.mlp1[3]
        last.bias -= vis.mean(0)
        scale = 1.0 / (vis - vis.mean(0)).std().item()
        last.weight *= scale
        last.bias *= scale

# multi-image and video questions come 1.5 times as often as each single-image kind
MIX = ['colour', 'shape', 'exists', 'count', 'position', 'multi', 'video', 'colour', 'shape', 'exists', 'count', 'position', 'multi', 'video', 'multi', 'video']
# stage 3: position questions in more than half of every batch, the other kinds beside them
POSITION_MIX = ['position'] * 16 + MIX


def train_end_to_end(model, data, rng, steps, batch, log, lr=1.5e-3, frozen_vision_steps=600, snapshot=None, mix=MIX, position_heads=(),
                     stage='end-to-end'):
    """The vision side (ViT and mlp1) is frozen for the first frozen_vision_steps and then learns at a
    quarter of the LLM's rate: trained with the LLM from the start, mlp1 grew the visual tokens' norm
    from ~9 (the token embeddings' scale, center_visual_tokens) to ~180 in 600 steps, and the LLM,
    though its heads found the asked object, did not learn to read its colour or shape."""
    img_context = data.tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    vision = list(model.vision_model.parameters()) + list(model.mlp1.parameters())
    ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{'params': vision, 'lr': lr * 0.25}, {'params': rest, 'lr': lr}], weight_decay=0.0)
    base = [g['lr'] for g in opt.param_groups]
    start = time.time()
    running = {}
    for step in range(steps):
        frac = step / steps
        scale = min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g, b in zip(opt.param_groups, base):
            g['lr'] = b * scale
        frozen = step < frozen_vision_steps  # first the LLM learns to read the stage-1 tokens
        kinds = [mix[(step * batch + i) % len(mix)] for i in range(batch)]
        items = [data.encode(S.sample(rng, k)) for k in kinds]
        loss, rows, focus, vis_norm = lm_loss(model, items, img_context, vision_grad=not frozen, position_heads=position_heads)
        opt.zero_grad()
        (loss + focus).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k, ok in zip(kinds, rows.tolist()):
            running.setdefault(k, []).append(ok)
        if step % 25 == 0:
            log({'stage': stage, 'step': step, 'minutes': round((time.time() - start) / 60, 2), 'loss': round(loss.item(), 4),
                 'focus_loss': round(focus.item(), 4), 'visual_token_norm': round(vis_norm.item(), 1), 'lr': round(opt.param_groups[1]['lr'], 6),
                 'train_acc_last_200': {k: round(sum(v[-200:]) / len(v[-200:]), 3) for k, v in sorted(running.items())}})
        if snapshot and step % 200 == 199:  # to look at (or resume from by hand) while it trains; not part of the result
            torch.save(model.state_dict(), snapshot)


# ---- checkpoint and evaluation set -----------------------------------------------------------------

def write_eval(model, tok, pre, out_dir, seed, per_kind=EVAL_PER_KIND):
    """per_kind samples of every kind from a seed training never uses, as PNG files, with the
    question, the true answer and PyTorch's greedy answer from the files (as chat() gets them)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.join(out_dir, 'images'))
    rng = random.Random(seed)
    transform = pre.build_transform(IMAGE_SIZE)
    records = []
    for kind in S.KINDS:
        for n in range(per_kind):
            s = S.sample(rng, kind)
            files = []
            for k, sc in enumerate(s['scenes']):
                name = f'images/{kind}-{n:03d}' + (f'-{k + 1}' if len(s['scenes']) > 1 else '') + '.png'
                S.render(sc).save(os.path.join(out_dir, name), optimize=True)
                files.append(name)
            if s['data_flag'] == 3:  # frames as load_video gives them: one tile each, resized to the tile size
                per = [[transform(Image.open(os.path.join(out_dir, f)).convert('RGB'))] for f in files]
            else:
                per = [[transform(t) for t in pre.dynamic_preprocess(Image.open(os.path.join(out_dir, f)).convert('RGB'), max_num=MAX_TILES,
                                                                     image_size=IMAGE_SIZE, use_thumbnail=True)] for f in files]
            pixels = torch.stack([t for p in per for t in p])
            num_patches = [len(p) for p in per]
            r = pvc_spec.pvc_chat(model, tok, pixels, S.prompt_question(s), {'max_new_tokens': 8, 'do_sample': False}, s['data_flag'], num_patches, PVC)
            records.append({'id': f'{kind}-{n:03d}', 'kind': kind, **({'event': s['event']} if 'event' in s else {}), 'files': files,
                            'data_flag': s['data_flag'], 'num_patches_list': num_patches, 'question': r['question'], 'answer': s['answer'],
                            'torch_answer': r['answer'], 'torch_output_ids': r['output_ids'],
                            # what is drawn in each file: size, and objects with centre (x, y) and radius r as
                            # fractions of the width, the height and the shorter side
                            'scenes': [{'w': sc['w'], 'h': sc['h'], 'objects': [{k: (round(v, 4) if isinstance(v, float) else v)
                                                                                 for k, v in o.items()} for o in sc['objects']]}
                                       for sc in s['scenes']]})
    return records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--upstream-commit', required=True)
    ap.add_argument('--pvc', required=True, help='a checkout of OpenGVLab/PVC (its utils/preprocess.py)')
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
    ap.add_argument('--vision-steps', type=int, default=1800, help='stage 1 steps')
    ap.add_argument('--objects-steps', type=int, default=600, help='of which the first learn shape and colour alone')
    ap.add_argument('--steps', type=int, default=3400, help='stage 2 (end-to-end) steps')
    ap.add_argument('--position-steps', type=int, default=1000, help='stage 3 (position questions first) steps')
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--vision-cache', help='write the model after stage 1 here, or start from it when it exists (to iterate on stage 2)')
    ap.add_argument('--end-to-end-cache', help='write the model after stage 2 here, or start stage 3 from it when it exists')
    ap.add_argument('--snapshot', help='write the float32 state here every 200 end-to-end steps')
    ap.add_argument('--eval-per-kind', type=int, default=EVAL_PER_KIND, help='held-out questions of every kind')
    ap.add_argument('--eval-only', action='store_true', help='rewrite the evaluation set from the committed checkpoint')
    args = ap.parse_args()
    mf.setup_upstream(os.path.abspath(args.upstream))
    pre = mpf.load_upstream(os.path.abspath(args.pvc))
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    out_root = os.path.abspath(args.out)
    ckpt = os.path.join(out_root, 'checkpoints', 'scenes-pvc')
    eval_dir = os.path.join(out_root, 'scenes-eval')
    log_path = os.path.join(out_root, 'scenes-eval', 'training-log.jsonl')

    if not args.eval_only:
        shutil.rmtree(ckpt, ignore_errors=True)
        os.makedirs(ckpt)
        tok = build_tokenizer(ckpt)
        config, model = build_model(tok)
        init_for_training(model)
        n_params = sum(p.numel() for p in model.parameters())
        log_lines = []

        def log(rec):
            rec = {'t': round(time.time() - t0, 1), **rec}
            log_lines.append(rec)
            print(json.dumps(rec), flush=True)

        t0 = time.time()
        log({'params': n_params, 'vocab': len(tok), 'args': vars(args)})
        rng = random.Random(SEED)
        model.train()
        data = Data(pre, tok, model)
        if args.end_to_end_cache and os.path.exists(args.end_to_end_cache):  # stages 1 and 2 as an earlier run left them
            model.load_state_dict(torch.load(args.end_to_end_cache, weights_only=False))
            log({'stage': 'end-to-end', 'from_cache': args.end_to_end_cache})
        else:
            if args.vision_cache and os.path.exists(args.vision_cache):  # stage 1 as an earlier run of this command left it
                cache = torch.load(args.vision_cache, weights_only=False)
                model.load_state_dict(cache['model'])
                rng.setstate(cache['rng'])
                torch.set_rng_state(cache['torch_rng'])
                log({'stage': 'vision', 'from_cache': args.vision_cache})
            else:
                train_vision(model, rng, pre, args.vision_steps, args.batch, args.batch // 8, log, objects_first=args.objects_steps)
                center_visual_tokens(model, data, rng)
                if args.vision_cache:
                    torch.save({'model': model.state_dict(), 'rng': rng.getstate(), 'torch_rng': torch.get_rng_state()}, args.vision_cache)
            train_end_to_end(model, data, rng, args.steps, args.batch, log, snapshot=args.snapshot)
            if args.end_to_end_cache:
                torch.save(model.state_dict(), args.end_to_end_cache)
        # stage 3, seeded on its own (so that it starts the same from the cache): position questions, with
        # heads 2 and 3 of layer 1 also told to look at the object, the vision side frozen
        torch.manual_seed(SEED + 2)
        train_end_to_end(model, data, random.Random(SEED + 2), args.position_steps, args.batch, log, lr=1e-3,
                         frozen_vision_steps=args.position_steps, mix=POSITION_MIX, position_heads=(2, 3), stage='position')
        log({'done': True, 'minutes': round((time.time() - t0) / 60, 1)})
        pvc_spec.save_checkpoint(model, ckpt, tok, PVC, '2MB')
    else:  # the training log of the committed checkpoint stays (write_eval clears the directory)
        with open(log_path) as f:
            log_lines = [json.loads(line) for line in f]
    tok, _ = mf.load_tokenizer(ckpt)
    config, _ = build_model(tok)
    model = pvc_spec.load_float32(ckpt, config, ADALN_LAYERS, TEMPORAL_LAYERS)
    with torch.no_grad():
        records = write_eval(model, tok, pre, eval_dir, SEED + 1, args.eval_per_kind)
    acc = {}
    for r in records:
        acc.setdefault(r['kind'], []).append(r['torch_answer'] == r['answer'])
    summary = {k: round(sum(v) / len(v), 3) for k, v in acc.items()}
    doc = {'generator': 'test/reference/scenes.py', 'trainer': 'test/reference/train_scenes.py', 'seed': SEED + 1,
           'upstream_commit': args.upstream_commit, 'image_size': IMAGE_SIZE, 'max_num': MAX_TILES,
           'torch_accuracy': summary, 'questions': records}
    with open(os.path.join(eval_dir, 'eval.json'), 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write('\n')
    with open(log_path, 'w') as f:
        f.writelines(json.dumps(x) + '\n' for x in log_lines)
    print(json.dumps({'torch_accuracy': summary}), flush=True)


if __name__ == '__main__':
    main()

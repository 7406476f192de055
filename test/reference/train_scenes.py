#!/usr/bin/env python3
"""Trains the tiny PVC-InternVL2 model on synthetic scenes (scenes.py) on the CPU, writes it as a plain
HF checkpoint (bf16 shards, index, config, tokenizer files) and a held-out evaluation set with PyTorch's
greedy answers. See README.md beside this file for the command and the commit it ran from.

The model is upstream's InternVLChatModel (mlp1, pixel shuffle, InternLM2, the internlm2-chat template)
with pvc_spec.py's PVC vision model (AdaLN, temporal attention), imported from --upstream; images are
tiled by the PVC repository's preprocess.py (dynamic tiling with a thumbnail), imported from --pvc.

Recipe (two stages, seeded, counted in steps):
  1. vision: the ViT and mlp1, one 112 px tile per scene, with throw-away linear heads: the shape and the
     colour under each 14 px patch, the shapes and colours in each visual token's region, and in the tile
     with its number of objects;
  then mlp1's last layer is re-centred and re-scaled (center_visual_tokens);
  2. end to end: every question kind, the answer token and <|im_end|> as the only targets, the ViT frozen
     for the first steps.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import make_preprocess_fixtures as mpf  # noqa: E402
import pvc_spec  # noqa: E402
import scenes as S  # noqa: E402

SEED = 20251125
IMAGE_SIZE = 112
MAX_TILES = 4
VISION = dict(hidden_size=96, intermediate_size=384, num_attention_heads=4, num_hidden_layers=4, image_size=IMAGE_SIZE,
              patch_size=14, norm_type='layer_norm', qkv_bias=True, qk_normalization=False)
LLM = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
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
    config.downsample_ratio = 0.25
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

    def tiles(self, img):
        return [self.transform(t) for t in self.pre.dynamic_preprocess(img, max_num=MAX_TILES, image_size=IMAGE_SIZE, use_thumbnail=True)]

    def encode(self, s, images=None):
        """Pixel tiles, the prompt's ids and the training targets of a sample."""
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
                'labels': [-100] * len(prompt) + answer}


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


def lm_loss(model, items, img_context):
    ids, labels, mask = collate(items)
    lm = model.language_model
    embeds = lm.get_input_embeddings()(ids)
    vis = torch.cat(visual_tokens_batch(model, items))
    sel = (ids == img_context).reshape(-1)
    assert int(sel.sum()) == vis.shape[0]
    flat = embeds.reshape(-1, embeds.shape[-1])
    flat = flat.index_put((sel.nonzero(as_tuple=True)[0],), vis)
    out = lm(inputs_embeds=flat.reshape(embeds.shape), attention_mask=mask)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        pred = logits.argmax(-1)
        rows = ((pred == target) | (target == -100)).all(-1)
    return loss, rows


# ---- stage 1: the vision side with per-patch, per-token and per-image targets -----------------------

def patch_targets(rng, n, transform):
    """n square scenes rendered at 96 .. 224 px and resized to the tile size (so that objects come in the
    sizes tiles and thumbnails show), with the shape and colour index under each patch (0: background),
    the shapes and colours present, and the number of objects."""
    xs, shapes, colours, present, counts = [], [], [], [], []
    g = IMAGE_SIZE // VISION['patch_size']
    for _ in range(n):
        sc = S.scene(rng, square=True)
        size = rng.randint(96, 224)
        sc['w'] = sc['h'] = size
        img = S.render(sc).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        mask = np.array(S.object_mask(sc, size).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST)).reshape(g, IMAGE_SIZE // g, g, IMAGE_SIZE // g)
        mask = mask.transpose(0, 2, 1, 3).reshape(g * g, -1)
        sh, co = np.zeros(g * g, np.int64), np.zeros(g * g, np.int64)
        for p in range(g * g):
            c = np.bincount(mask[p], minlength=5)
            k = int(c[1:].argmax()) + 1
            if c[k] >= 0.15 * mask.shape[1]:
                o = sc['objects'][k - 1]
                sh[p], co[p] = S.SHAPES.index(o['shape']) + 1, list(S.COLOURS).index(o['colour']) + 1
        xs.append(transform(img))
        shapes.append(torch.from_numpy(sh))
        colours.append(torch.from_numpy(co))
        p = torch.zeros(len(S.SHAPES) + len(S.COLOURS))
        for o in sc['objects']:
            p[S.SHAPES.index(o['shape'])] = p[len(S.SHAPES) + list(S.COLOURS).index(o['colour'])] = 1
        present.append(p)
        counts.append(len(sc['objects']) - 1)
    return torch.stack(xs), torch.stack(shapes), torch.stack(colours), torch.stack(present), torch.tensor(counts)


def token_presence(model, shapes, colours):
    """Which shapes and colours each visual token's patches show: the per-patch one-hot maps through the
    same pixel shuffle as the features (so the token order is the projector's)."""
    ns, nc = len(S.SHAPES) + 1, len(S.COLOURS) + 1
    onehot = torch.cat([nn.functional.one_hot(shapes, ns)[..., 1:], nn.functional.one_hot(colours, nc)[..., 1:]], -1).float()
    B, P, L = onehot.shape
    g = int(P ** 0.5)
    shuffled = model.pixel_shuffle(onehot.reshape(B, g, g, L), scale_factor=model.downsample_ratio)
    return shuffled.reshape(B, -1, shuffled.shape[-1] // L, L).amax(2)


def train_vision(model, rng, transform, steps, batch, log):
    """The ViT and mlp1 with throw-away linear heads: shape and colour under each patch (ViT output), the
    shapes and colours in each visual token's region, and in the whole tile with the number of objects
    (mean of its visual tokens: what a first, uniform attention of the LLM reads). One frame per tile
    (t = 0): more scenes per step for the same compute."""
    C, D = VISION['hidden_size'], LLM['hidden_size']
    ns, nc, nq = len(S.SHAPES) + 1, len(S.COLOURS) + 1, len(S.SHAPES) + len(S.COLOURS)
    patch_head, token_head, image_head = nn.Linear(C, ns + nc), nn.Linear(D, nq), nn.Linear(D, nq + 4)
    heads = [patch_head, token_head, image_head]
    params = list(model.vision_model.parameters()) + list(model.mlp1.parameters()) + [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    ce, bce = nn.functional.cross_entropy, nn.functional.binary_cross_entropy_with_logits
    for step in range(steps):
        x, sh, co, present, count = patch_targets(rng, batch, transform)
        h = model.vision_model(x, 1)
        tokens = pvc_spec.project(model, h)
        patch_logits = patch_head(h[:, 1:])
        token_logits = token_head(tokens)
        image_logits = image_head(tokens.mean(1))
        loss = ce(patch_logits[..., :ns].reshape(-1, ns), sh.reshape(-1)) + ce(patch_logits[..., ns:].reshape(-1, nc), co.reshape(-1)) + \
            bce(token_logits, token_presence(model, sh, co)) + bce(image_logits[:, :nq], present) + ce(image_logits[:, nq:], count)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            with torch.no_grad():
                acc_s = (patch_logits[..., :ns].argmax(-1) == sh)[sh > 0].float().mean().item()
                acc_c = (patch_logits[..., ns:].argmax(-1) == co)[co > 0].float().mean().item()
                acc_n = (image_logits[:, nq:].argmax(-1) == count).float().mean().item()
                acc_p = ((image_logits[:, :nq] > 0).float() == present).float().mean().item()
            log({'stage': 'vision', 'step': step, 'loss': round(loss.item(), 4), 'object_patch_shape_acc': round(acc_s, 3),
                 'object_patch_colour_acc': round(acc_c, 3), 'tile_count_acc': round(acc_n, 3), 'tile_presence_acc': round(acc_p, 3)})


# ---- stage 2: end to end ---------------------------------------------------------------------------

def center_visual_tokens(model, data, rng, n=64):
    """Between the stages: after stage 1 the visual tokens share a large common part (their norm ~150,
    10% of it varying between scenes), which the LLM's RMSNorm turns into near-constant inputs. Shifting
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


def train_end_to_end(model, data, rng, steps, batch, log, lr=1.5e-3, frozen_vision_steps=300, snapshot=None):
    img_context = data.tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    vision = list(model.vision_model.parameters())
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
        kinds = [MIX[(step * batch + i) % len(MIX)] for i in range(batch)]
        items = [data.encode(S.sample(rng, k)) for k in kinds]
        loss, rows = lm_loss(model, items, img_context)
        opt.zero_grad()
        loss.backward()
        if step < frozen_vision_steps:  # first the LLM and mlp1 learn to read the stage-1 features
            for p in vision:
                p.grad = None
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k, ok in zip(kinds, rows.tolist()):
            running.setdefault(k, []).append(ok)
        if step % 25 == 0:
            log({'stage': 'end-to-end', 'step': step, 'minutes': round((time.time() - start) / 60, 2), 'loss': round(loss.item(), 4),
                 'lr': round(opt.param_groups[1]['lr'], 6),
                 'train_acc_last_200': {k: round(sum(v[-200:]) / len(v[-200:]), 3) for k, v in sorted(running.items())}})
        if snapshot and step % 200 == 199:  # to look at (or resume from by hand) while it trains; not part of the result
            torch.save(model.state_dict(), snapshot)


# ---- checkpoint and evaluation set -----------------------------------------------------------------

def write_eval(model, tok, pre, out_dir, seed):
    """EVAL_PER_KIND samples of every kind from a seed training never uses, as PNG files, with the
    question, the true answer and PyTorch's greedy answer from the files (as chat() gets them)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.join(out_dir, 'images'))
    rng = random.Random(seed)
    transform = pre.build_transform(IMAGE_SIZE)
    records = []
    for kind in S.KINDS:
        for n in range(EVAL_PER_KIND):
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
    ap.add_argument('--vision-steps', type=int, default=1000, help='stage 1 steps (of 2 x batch tiles)')
    ap.add_argument('--steps', type=int, default=1600, help='stage 2 (end-to-end) steps')
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--snapshot', help='write the float32 state here every 200 end-to-end steps')
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
        train_vision(model, rng, pre.build_transform(IMAGE_SIZE), args.vision_steps, args.batch * 2, log)
        data = Data(pre, tok, model)
        center_visual_tokens(model, data, rng)
        train_end_to_end(model, data, rng, args.steps, args.batch, log, snapshot=args.snapshot)
        log({'done': True, 'minutes': round((time.time() - t0) / 60, 1)})
        pvc_spec.save_checkpoint(model, ckpt, tok, PVC, '2MB')
    else:
        log_lines = None
    tok, _ = mf.load_tokenizer(ckpt)
    config, _ = build_model(tok)
    model = pvc_spec.load_float32(ckpt, config, ADALN_LAYERS, TEMPORAL_LAYERS)
    with torch.no_grad():
        records = write_eval(model, tok, pre, eval_dir, SEED + 1)
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
    if log_lines is not None:
        with open(log_path, 'w') as f:
            f.writelines(json.dumps(x) + '\n' for x in log_lines)
    print(json.dumps({'torch_accuracy': summary}), flush=True)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""PVC spec v0 (../shared/design/pvc.md) in PyTorch, built on the upstream InternViT classes, and the
`tiny-pvc` checkpoint + references it produces.

PVC's released modeling code is not available, so this is the project's own reading of the paper:
an independent implementation of the same spec as src/vision/temporal.ts, in another framework,
reusing upstream's InternVisionEmbeddings / InternVisionEncoderLayer / mlp1 / pixel_shuffle /
InternLM2 / conversation template (imported from --upstream, never copied). Run after
make_fixtures.py (it reuses its tokenizer files and helpers); see README.md beside this file.
"""
import argparse
import json
import math
import os
import shutil
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (tokenizer files, config, randomisation, upstream set-up)

TIME_FREQ_DIM = 256


def timestep_features(t, dim=TIME_FREQ_DIM):
    """s(t) = [cos(t f_0..f_{d/2-1}), sin(...)], f_i = exp(-ln(10000) i / (d/2)) (DiT order, cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedder(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        # The features are computed in float32; a bf16 model (the full-size bench) takes them in its dtype.
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


class TemporalAttention(nn.Module):
    """Causal attention over the frames of one sequence, per spatial position, heads as the ViT's."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, frames):
        # x: [S*T, N, C] -> per (sequence, position): attention over T
        ST, N, C = x.shape
        S, T, H, d = ST // frames, frames, self.heads, C // self.heads
        qkv = self.qkv(x).reshape(S, T, N, 3, H, d).permute(3, 0, 2, 4, 1, 5)  # 3, S, N, H, T, d
        q, k, v = qkv.unbind(0)
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(causal, float('-inf'))
        probs = scores.softmax(-1)
        self.last_probs = probs.detach().clone()  # [S, N, H, T, T], read by the reference writer
        out = probs @ v  # S, N, H, T, d
        out = out.permute(0, 3, 1, 2, 4).reshape(ST, N, C)
        return self.proj(out)


def pvc_encoder_layer(config, adaln, temporal):
    """Upstream's InternVisionEncoderLayer (its attn, mlp, norms and layer scales, under their own
    names), plus AdaLN modulation and, in temporal layers, T-MHA."""
    from internvl.model.internvl_chat.modeling_intern_vit import InternVisionEncoderLayer

    class PVCEncoderLayer(InternVisionEncoderLayer):
        def __init__(self):
            super().__init__(config, drop_path_rate=0.0)
            C = config.hidden_size
            if adaln:
                self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(C, 4 * C))
            if temporal:
                self.temporal_attn = TemporalAttention(C, config.num_attention_heads)
                self.norm_t = nn.LayerNorm(C, eps=config.layer_norm_eps)
                self.ls_t = nn.Parameter(torch.ones(C))

        def forward(self, x, e, frames):
            if adaln:
                shift1, scale1, shift2, scale2 = self.adaLN_modulation(e)[:, None, :].chunk(4, dim=-1)
            else:
                shift1 = scale1 = shift2 = scale2 = torch.zeros(())
            x = x + self.attn(self.norm1(x) * (1 + scale1) + shift1) * self.ls1
            if temporal:
                x = x + self.ls_t * self.temporal_attn(self.norm_t(x), frames)
            x = x + self.mlp(self.norm2(x) * (1 + scale2) + shift2) * self.ls2
            return x

    return PVCEncoderLayer()


class PVCVisionModel(nn.Module):
    """Frames [S*T, 3, H, W] (S sequences of T frames, sequence-major) -> hidden state per frame."""

    def __init__(self, config, adaln_layers, temporal_layers):
        super().__init__()
        from internvl.model.internvl_chat.modeling_intern_vit import InternVisionEmbeddings
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.time_embedder = TimeEmbedder(config.hidden_size)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([
            pvc_encoder_layer(config, i in adaln_layers, i in temporal_layers) for i in range(config.num_hidden_layers)])

    def forward(self, pixel_values, frames, hooks=None):
        x = self.embeddings(pixel_values)
        t = torch.arange(frames).repeat(pixel_values.shape[0] // frames)
        e = self.time_embedder(t)
        if hooks is not None:
            hooks['vision.embeddings'] = x.clone()
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x, e, frames)
            if hooks is not None:
                hooks[f'vision.layers.{i}.out'] = x.clone()
                if hasattr(layer, 'temporal_attn'):
                    hooks[f'vision.layers.{i}.temporal.probs'] = layer.temporal_attn.last_probs
        return x


# ---- PVC chat -------------------------------------------------------------------------------------

def visual_tokens(model, pixel_values, data_flag, num_patches_list, cfg, hooks=None):
    """Sequences per pvc.md: image tiles repeated image_repeat_time times; a video's frames (one tile
    each) as one sequence, each frame video_repeat_time times; output tile-major."""
    if data_flag == 3:
        assert all(n == 1 for n in num_patches_list)
        reps = cfg['video_repeat_time']
        frames = pixel_values.repeat_interleave(reps, dim=0)  # one sequence: the clip
        T = frames.shape[0]
    else:
        reps = cfg['image_repeat_time']
        frames = pixel_values.repeat_interleave(reps, dim=0)  # each tile its own sequence of reps frames
        T = reps
    out = project(model, model.vision_model(frames, T, hooks))
    if hooks is not None:
        hooks['projector.out'] = out.clone()
    return out.reshape(-1, out.shape[-1])


def project(model, h):
    """ViT hidden states [frames, 1 + N, C] -> visual tokens [frames, num_image_token, D]: the class
    token dropped, upstream's pixel shuffle and mlp1."""
    h = h[:, 1:, :]
    g = int(h.shape[1] ** 0.5)
    h = h.reshape(h.shape[0], g, g, -1)
    h = model.pixel_shuffle(h, scale_factor=model.downsample_ratio)
    h = h.reshape(h.shape[0], -1, h.shape[-1])
    return model.mlp1(h)


def prompt_of(model, tokenizer, question, num_patches_list, data_flag, cfg, history=None):
    from internvl.conversation import get_conv_template
    template = get_conv_template(model.template)
    template.system_message = model.system_message
    for q, a in history or []:
        template.append_message(template.roles[0], q)
        template.append_message(template.roles[1], a)
    template.append_message(template.roles[0], question)
    template.append_message(template.roles[1], None)
    query = template.get_prompt()
    reps = cfg['video_repeat_time'] if data_flag == 3 else cfg['image_repeat_time']
    for n in num_patches_list:
        query = query.replace('<image>', '<img>' + '<IMG_CONTEXT>' * model.num_image_token * n * reps + '</img>', 1)
    return query, template.sep


def pvc_chat(model, tokenizer, pixel_values, question, gen_cfg, data_flag, num_patches_list, cfg, hooks=None):
    if pixel_values is not None and '<image>' not in question:
        question = '<image>\n' + question
    query, sep = prompt_of(model, tokenizer, question, num_patches_list, data_flag, cfg)
    ids = tokenizer(query, return_tensors='pt')['input_ids']
    img_context = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')
    lm = model.language_model
    with torch.no_grad():
        embeds = lm.get_input_embeddings()(ids).clone()
        if pixel_values is not None:
            vis = visual_tokens(model, pixel_values, data_flag, num_patches_list, cfg, hooks)
            sel = ids[0] == img_context
            assert int(sel.sum()) == vis.shape[0], (int(sel.sum()), vis.shape)
            embeds[0, sel] = vis
        out = lm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                          eos_token_id=tokenizer.convert_tokens_to_ids(sep), **gen_cfg)
        if hooks is not None:
            hooks['llm.inputs_embeds'] = embeds.clone()
            hooks['llm.logits'] = lm(inputs_embeds=embeds).logits.clone()
    response = tokenizer.batch_decode(out, skip_special_tokens=True)[0].split(sep)[0].strip()
    return {'question': question, 'prompt': query, 'input_ids': ids[0].tolist(), 'output_ids': out[0].tolist(),
            'answer': response, 'data_flag': data_flag, 'num_patches_list': num_patches_list}


# ---- checkpoints ------------------------------------------------------------------------------------

def save_checkpoint(model, ckpt, tok, pvc, shard_size):
    """A PVC checkpoint in the HF layout: bf16 shards and index, config with model_type pvc_internvl and
    the PVC fields, generation_config (eos <|im_end|>, <|im_start|>)."""
    model = model.to(torch.bfloat16)
    model.save_pretrained(ckpt, safe_serialization=True, max_shard_size=shard_size)
    with open(os.path.join(ckpt, 'config.json')) as f:
        hf = json.load(f)
    hf.update(model_type='pvc_internvl', architectures=['PVCInternVLChatModel'], **pvc)
    with open(os.path.join(ckpt, 'config.json'), 'w') as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write('\n')
    with open(os.path.join(ckpt, 'generation_config.json'), 'w') as f:
        json.dump({'eos_token_id': [tok.convert_tokens_to_ids('<|im_end|>'), tok.convert_tokens_to_ids('<|im_start|>')],
                   'transformers_version': '4.37.2'}, f, indent=2)
        f.write('\n')


def load_float32(ckpt, config, adaln_layers, temporal_layers):
    """The checkpoint as the port loads it: the bf16 shards read in float32."""
    from internvl.model.internvl_chat import InternVLChatModel
    from safetensors.torch import load_file
    model = InternVLChatModel(config, vision_model=PVCVisionModel(config.vision_config, adaln_layers, temporal_layers))
    state = {}
    for f in sorted(os.listdir(ckpt)):
        if f.endswith('.safetensors'):
            state.update({k: v.float() for k, v in load_file(os.path.join(ckpt, f)).items()})
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--upstream', required=True)
    ap.add_argument('--upstream-commit', required=True)
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
    args = ap.parse_args()
    mf.setup_upstream(os.path.abspath(args.upstream))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_root = os.path.abspath(args.out)
    from internvl.model.internvl_chat import InternVLChatModel

    name, seed = 'tiny-pvc', mf.SEED + 200
    ckpt = os.path.join(out_root, 'checkpoints', name)
    shutil.rmtree(ckpt, ignore_errors=True)
    os.makedirs(ckpt)
    src_tok = os.path.join(out_root, 'checkpoints', 'tiny-internvl2')
    for f in ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json'):
        shutil.copyfile(os.path.join(src_tok, f), os.path.join(ckpt, f))
    tok, _ = mf.load_tokenizer(ckpt)
    vision = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, image_size=112,
                  patch_size=14, norm_type='layer_norm', qkv_bias=True, qk_normalization=False)
    llm = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
               max_position_embeddings=2048, rope_scaling={'type': 'dynamic', 'factor': 2.0})
    config = mf.make_config(vision, llm, len(tok), None)
    config.downsample_ratio = 0.25
    pvc = {'use_temporal': True, 'image_repeat_time': 4, 'video_repeat_time': 1, 'tile_repeat_way': None, 'mlp_add_ops': None}
    adaln_layers, temporal_layers = [0, 1, 2], [1, 2]  # AdaLN everywhere, T-MHA in the last L = 2 layers

    torch.manual_seed(seed)
    model = InternVLChatModel(config, vision_model=PVCVisionModel(config.vision_config, adaln_layers, temporal_layers))
    mf.randomize(model, seed)
    save_checkpoint(model, ckpt, tok, pvc, '300KB')
    model = load_float32(ckpt, config, adaln_layers, temporal_layers)

    size = vision['image_size']
    image_a = mf.pixel_values(3, size, seed + 1)
    image_b = mf.pixel_values(1, size, seed + 2)
    clip = mf.pixel_values(6, size, seed + 3)
    gen = {'max_new_tokens': 16, 'do_sample': False}
    tensors, doc = {}, {'fixture': name, 'seed': seed, 'upstream_commit': args.upstream_commit,
                        'spec': 'PVC spec v0 (pvc.md)', 'pvc': pvc, 'adaln_layers': adaln_layers,
                        'temporal_layers': temporal_layers, 'num_image_token': model.num_image_token}
    tensors['image_a'] = image_a
    tensors['image_b'] = image_b
    tensors['clip'] = clip
    chats = []
    hooks = {}
    chats.append(dict(name='single-image', **pvc_chat(model, tok, image_a, 'What is in the image?', gen, 1, [3], pvc, hooks)))
    tensors.update({f'single.{k}': v for k, v in hooks.items()})
    chats.append(dict(name='multi-image', **pvc_chat(model, tok, torch.cat([image_a, image_b]),
                                                     'Image-1: <image>\nImage-2: <image>\nWhat differs?', gen, 2, [3, 1], pvc)))
    hooks = {}
    prefix = ''.join(f'Frame{i + 1}: <image>\n' for i in range(clip.shape[0]))
    chats.append(dict(name='video', **pvc_chat(model, tok, clip, prefix + 'Describe this video.', gen, 3, [1] * clip.shape[0], pvc, hooks)))
    tensors.update({f'video.{k}': v for k, v in hooks.items()})
    doc['chat'] = chats
    mf.write_reference(os.path.join(out_root, 'reference', name), tensors, doc)
    print(f'{name}: written', file=sys.stderr)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""The PyTorch oracle: writes tiny InternVL2 checkpoints in the real HF layout and the reference
tensors that the tfjs port is compared with.

The model code is NOT part of this repository: it is imported from an upstream checkout of
OpenGVLab/InternVL given by --upstream (the directory that contains the `internvl` package, i.e.
`.../internvl_chat`). See README.md beside this file for the commit and the exact commands.

Everything is seeded; running the script twice gives byte-identical files.
"""
import argparse
import hashlib
import io
import json
import os
import random
import shutil
import sys
import types

import torch

SEED = 20241212
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The six InternLM2 placeholder pieces at the end of tokenizer.model, and the names that
# tokenizer_config.json's added_tokens_decoder gives them (real ids 92538..92543).
INTERNLM2_SPECIAL = ['<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>', '<|im_start|>']
# InternVL's added tokens (real ids 92544..92552, added_tokens.json).
INTERNVL_ADDED = ['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>']
SP_VOCAB = 1000  # learned sentencepiece pieces (3 control + 256 bytes + merges and characters)
SYSTEM_MESSAGE = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。'


def setup_upstream(path):
    """Makes `import internvl` resolve to the upstream checkout, and patches what a CPU run needs."""
    if not os.path.isdir(os.path.join(path, 'internvl', 'model')):
        sys.exit(f'--upstream {path}: no internvl/model directory there (pass .../InternVL/internvl_chat)')
    sys.path.insert(0, path)
    import transformers  # noqa: F401  (imported before any stand-in below, which it must not see)
    try:
        import timm.models.layers  # noqa: F401
    except Exception as e:  # PyPI's torchvision does not load beside the CPU torch wheel, and timm imports it
        # Upstream imports timm only for DropPath, which it instantiates only when drop_path_rate > 0.
        # Our configs use 0, so a stand-in that refuses to be constructed is exact.
        print(f'note: timm unavailable ({type(e).__name__}); using a DropPath stand-in (drop_path_rate is 0)', file=sys.stderr)

        class DropPath(torch.nn.Module):
            def __init__(self, *args, **kwargs):
                raise RuntimeError('DropPath stand-in: drop_path_rate must be 0 for the oracle')

        timm = types.ModuleType('timm')
        models = types.ModuleType('timm.models')
        layers = types.ModuleType('timm.models.layers')
        layers.DropPath = DropPath
        timm.models, models.layers = models, layers
        sys.modules.update({'timm': timm, 'timm.models': models, 'timm.models.layers': layers})
    # chat()/batch_chat() move inputs with .cuda(); on this CPU-only oracle that is the identity.
    torch.Tensor.cuda = lambda self, *a, **k: self


# ---- tokenizer ---------------------------------------------------------------------------------

def training_corpus():
    """A deterministic mixed corpus: English, Chinese, digits, code, chat markup."""
    rng = random.Random(SEED)
    english = ('the a an image picture photo shows there is are of in on with and to for this that what '
               'describe red panda tree bamboo animal sitting eating green leaves brown fur white face '
               'two three four five people dog cat car street city building sky cloud water river '
               'left right top bottom middle background foreground small large tall bright dark '
               'question answer model vision language token frame video clip first second next '
               'hello who are you I am assistant please tell me more about differences between').split()
    chinese = list('你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型英文名叫有用无害助手图片中有什么'
                   '请描述这张视频里的动物熊猫在吃竹子两个一三四五颜色红绿蓝天空白云城市街道汽车人')
    lines = [SYSTEM_MESSAGE, 'Image-1: <image>\nImage-2: <image>\n', 'Frame1: <image>\nFrame2: <image>\n']
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(english) for _ in range(rng.randint(3, 14))]
            s = ' '.join(words)
            s = s[0].upper() + s[1:] + rng.choice(['.', '?', '!', ',', ''])
        elif kind < 0.8:
            s = ''.join(rng.choice(chinese) for _ in range(rng.randint(4, 20))) + rng.choice(['。', '？', '，', ''])
        elif kind < 0.9:
            s = f'{rng.randint(0, 99999)} + {rng.randint(0, 999)} = {rng.random():.4f}'
        else:
            s = f'def f(x):\n    return x * {rng.randint(1, 9)}  # {rng.choice(english)}\n\t{rng.choice(english)}'
        lines.append(s)
    return lines


def train_tokenizer(out_dir, corpus=None, vocab_size=SP_VOCAB):
    """A sentencepiece BPE model with InternLM2's settings on `corpus` (default: training_corpus()),
    plus the six placeholder pieces; returns the number of pieces."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus or training_corpus()), model_writer=buf,
        model_type='bpe', vocab_size=vocab_size, byte_fallback=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name='identity', split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentencepiece_length=16,
        input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    assert len(proto.pieces) == vocab_size, len(proto.pieces)
    # Placeholder pieces at the end, as in InternLM2's tokenizer.model (their names there are opaque).
    for k in range(len(INTERNLM2_SPECIAL)):
        piece = proto.pieces.add()
        piece.piece = f'[UNUSED_TOKEN_{141 + k}]'
        piece.score = 0.0
        piece.type = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
    with open(os.path.join(out_dir, 'tokenizer.model'), 'wb') as f:
        f.write(proto.SerializeToString(deterministic=True))
    return len(proto.pieces)


def write_tokenizer_files(out_dir, sp_size):
    def entry(content):
        return {'content': content, 'lstrip': False, 'normalized': False, 'rstrip': False,
                'single_word': False, 'special': True}

    decoder = {'0': entry('<unk>'), '1': entry('<s>'), '2': entry('</s>')}
    first_special = sp_size - len(INTERNLM2_SPECIAL)
    for k, tok in enumerate(INTERNLM2_SPECIAL):
        decoder[str(first_special + k)] = entry(tok)
    for k, tok in enumerate(INTERNVL_ADDED):
        decoder[str(sp_size + k)] = entry(tok)
    additional = ['<|im_start|>', '<|im_end|>', '<|action_start|>', '<|action_end|>', '<|interpreter|>', '<|plugin|>'] + INTERNVL_ADDED
    config = {
        'add_bos_token': True,
        'add_eos_token': False,
        'added_tokens_decoder': decoder,
        'additional_special_tokens': additional,
        'auto_map': {'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer', None]},
        'bos_token': '<s>',
        'clean_up_tokenization_spaces': False,
        'eos_token': '</s>',
        'model_max_length': 8192,
        'pad_token': '</s>',
        'tokenizer_class': 'InternLM2Tokenizer',
        'unk_token': '<unk>',
    }
    special_map = {
        'additional_special_tokens': additional,
        'bos_token': {k: v for k, v in entry('<s>').items() if k != 'special'},
        'eos_token': {k: v for k, v in entry('</s>').items() if k != 'special'},
        'pad_token': {k: v for k, v in entry('</s>').items() if k != 'special'},
        'unk_token': {k: v for k, v in entry('<unk>').items() if k != 'special'},
    }
    added = {tok: sp_size + k for k, tok in enumerate(INTERNVL_ADDED)}
    for name, obj in [('tokenizer_config.json', config), ('special_tokens_map.json', special_map), ('added_tokens.json', added)]:
        with open(os.path.join(out_dir, name), 'w', encoding='utf-8') as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write('\n')
    return sp_size + len(INTERNVL_ADDED)


def load_tokenizer(ckpt_dir):
    from internvl.model.internlm2.tokenization_internlm2 import InternLM2Tokenizer

    class RecordingTokenizer(InternLM2Tokenizer):
        """Upstream's slow tokenizer, remembering the texts chat()/batch_chat() tokenize."""
        calls = []

        def __call__(self, text, *args, **kwargs):
            RecordingTokenizer.calls.append(text)
            return super().__call__(text, *args, **kwargs)

    return InternLM2Tokenizer.from_pretrained(ckpt_dir), RecordingTokenizer.from_pretrained(ckpt_dir)


def tokenizer_corpus():
    """At least 300 strings covering what the fast tokenizer must reproduce."""
    rng = random.Random(SEED + 7)
    base = [
        'Hello world', 'Hello, who are you?', 'What is in the image?', 'Describe the image in detail.',
        ' leading space', 'trailing space ', '  two leading spaces', 'a  b   c    d', '     ', ' ', '',
        'line one\nline two', '\n\nstarts with newlines', 'tabs\tin\tthe\tmiddle', '\t\tindented', 'mixed \n\t \n end',
        'CRLF line\r\nnext', 'Ünïcödé àccents café naïve', 'Привет, мир', 'مرحبا بالعالم', 'नमस्ते दुनिया', 'こんにちは世界',
        '안녕하세요', 'emoji 😀🐼🎉 and 👩‍👩‍👧 family', '🐼', '熊猫在吃竹子。', '图片中有什么？', SYSTEM_MESSAGE,
        '1234567890', '3.14159 + 2.71828 = 5.85987', 'x = [1, 2, 3]', 'def f(x):\n    return x * 2',
        '<image>\nWhat is this?', 'Image-1: <image>\nImage-2: <image>\nCompare them.', 'Frame1: <image>\nFrame2: <image>\n',
        '<img><IMG_CONTEXT><IMG_CONTEXT></img>', 'before<|im_end|>after', 'before <|im_end|> after', '<|im_start|>user\nhi<|im_end|>',
        '<s>text</s>', 'a<unk>b', '<ref>the panda</ref><box>[[1, 2, 3, 4]]</box>', '<quad>x</quad>', '<|plugin|><|interpreter|><|action_start|><|action_end|>',
        '[UNUSED_TOKEN_145]', '▁already▁escaped', 'zero\u200bwidth', 'nul\x00byte', 'bell\x07', '\u00a0non-breaking\u00a0space',
        '<|im_start|>system\n' + SYSTEM_MESSAGE + '<|im_end|><|im_start|>user\n<image>\nWhat is in the image?<|im_end|><|im_start|>assistant\n',
        '<|im_start|>system\n' + SYSTEM_MESSAGE + '<|im_end|><|im_start|>user\nHello<|im_end|><|im_start|>assistant\nHi there!<|im_end|><|im_start|>user\nMore<|im_end|><|im_start|>assistant\n',
    ]
    pieces = ['the', ' panda', ' 熊猫', '😀', ' ', '  ', '\n', '\t', '<|im_end|>', '<IMG_CONTEXT>', '<img>', 'é', 'ß', '42', '!', '?',
              'Bamboo', ' 竹子', 'مرحبا', 'Ж', '\u3000', '</s>', 'green leaves', '。', '，', '\r\n', '🐼🐼', 'x' * 20, 'www']
    out = list(base)
    while len(out) < 320:
        out.append(''.join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return out


def tokenizer_reference(tok, out_root):
    texts = tokenizer_corpus()
    records = []
    for text in texts:
        ids = tok(text)['input_ids']
        records.append({'text': text, 'ids': ids, 'decoded': tok.decode(ids, skip_special_tokens=True)})
    # Arbitrary id sequences (broken byte sequences, specials in the middle): decoding only.
    rng = random.Random(SEED + 8)
    n = len(tok)
    decodes = []
    for _ in range(60):
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 20))]
        decodes.append({'ids': ids, 'decoded': tok.decode(ids, skip_special_tokens=True)})
    path = os.path.join(out_root, 'reference', 'tokenizer-corpus.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump({'tokenizer': 'upstream InternLM2Tokenizer (slow), tiny-internvl2 tokenizer files',
                   'encode': records, 'decode': decodes}, f, indent=1, ensure_ascii=False)
        f.write('\n')


# ---- models ------------------------------------------------------------------------------------

def make_config(vision, llm, vocab_size, eos_im_end):
    from internvl.model.internvl_chat import InternVLChatConfig

    vision_config = dict(
        architectures=['InternVisionModel'], model_type='intern_vit_6b', num_channels=3,
        dropout=0.0, attention_dropout=0.0, drop_path_rate=0.0, initializer_factor=1.0,
        initializer_range=0.02, use_flash_attn=False, hidden_act='gelu', layer_norm_eps=1e-6, **vision)
    llm_config = dict(
        architectures=['InternLM2ForCausalLM'], model_type='internlm2', vocab_size=vocab_size,
        hidden_act='silu', rms_norm_eps=1e-5, rope_theta=1000000, bias=False, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, attn_implementation='eager', initializer_range=0.02,
        auto_map={'AutoConfig': 'configuration_internlm2.InternLM2Config',
                  'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
                  'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'},
        **llm)
    return InternVLChatConfig(
        vision_config=vision_config, llm_config=llm_config, template='internlm2-chat', select_layer=-1,
        force_image_size=vision['image_size'], downsample_ratio=0.5, ps_version='v2', dynamic_image_size=True,
        use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=12, use_backbone_lora=0, use_llm_lora=0,
        architectures=['InternVLChatModel'], torch_dtype='bfloat16',
        auto_map={'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig',
                  'AutoModel': 'modeling_internvl_chat.InternVLChatModel',
                  'AutoModelForCausalLM': 'modeling_internvl_chat.InternVLChatModel'})


def randomize(model, seed):
    """Every parameter random, with scales that keep activations O(1), so that a swapped, transposed or
    ignored tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            r = torch.randn(p.shape, generator=g)
            last = name.rsplit('.', 1)[-1]
            if last == 'bias':
                p.copy_(0.1 * r)
            elif p.ndim == 1 and (last == 'weight' or 'norm' in name):  # norm weights
                p.copy_(1.0 + 0.2 * r)
            elif last in ('ls1', 'ls2', 'ls_t'):
                p.copy_(0.5 + 0.2 * r)
            elif 'class_embedding' in name or 'position_embedding' in name:
                p.copy_(0.5 * r)
            elif 'tok_embeddings' in name:
                p.copy_(r)
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(r / fan_in ** 0.5)
            else:
                raise ValueError(f'no init rule for {name} {tuple(p.shape)}')


def save_checkpoint(model, out_dir, vocab_size, im_end_id, im_start_id, shard_size):
    from safetensors.torch import load_file

    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=shard_size)
    with open(os.path.join(out_dir, 'generation_config.json'), 'w') as f:
        json.dump({'eos_token_id': [im_end_id, im_start_id], 'transformers_version': '4.37.2'}, f, indent=2)
        f.write('\n')
    index = os.path.join(out_dir, 'model.safetensors.index.json')
    assert os.path.exists(index), 'expected a sharded checkpoint'
    with open(index) as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
    assert len(shards) >= 2, shards
    for s in shards:  # every stored tensor is bf16, as in the real checkpoint
        assert all(t.dtype == torch.bfloat16 for t in load_file(os.path.join(out_dir, s)).values())
    return shards


def load_float32(ckpt_dir):
    from internvl.model.internvl_chat import InternVLChatModel
    model = InternVLChatModel.from_pretrained(ckpt_dir, torch_dtype=torch.float32)
    return model.eval()


def pixel_values(n_tiles, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_tiles, 3, size, size, generator=g)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# ---- references --------------------------------------------------------------------------------

def vision_reference(model, pv, out):
    """ViT embeddings and every layer's output (hooks), then the projector output."""
    captured = {}
    hooks = [model.vision_model.embeddings.register_forward_hook(
        lambda m, i, o: captured.__setitem__('vision.embeddings', o.detach().clone()))]
    for i, layer in enumerate(model.vision_model.encoder.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, inp, o, i=i: captured.__setitem__(f'vision.layers.{i}.out', o.detach().clone())))
        # The attention probabilities are the input of the (identity) dropout after the softmax.
        hooks.append(layer.attn.attn_drop.register_forward_hook(
            lambda m, inp, o, i=i: captured.__setitem__(f'vision.layers.{i}.attn.probs', inp[0].detach().clone())))
    with torch.no_grad():
        proj = model.extract_feature(pv)
    for h in hooks:
        h.remove()
    out.update(captured)
    out['projector.out'] = proj.detach().clone()
    return proj


def llm_reference(model, input_ids, vit_embeds, img_context_id, out, n_greedy=16):
    lm = model.language_model
    with torch.no_grad():
        embeds = lm.get_input_embeddings()(input_ids).clone()
        if vit_embeds is not None:
            sel = input_ids[0] == img_context_id
            assert int(sel.sum()) == vit_embeds.shape[0] * vit_embeds.shape[1]
            embeds[0, sel] = vit_embeds.reshape(-1, embeds.shape[-1])
        captured = {}
        hooks = []
        for i, layer in enumerate(lm.model.layers):
            hooks.append(layer.register_forward_hook(
                lambda m, inp, o, i=i: captured.__setitem__(f'llm.layers.{i}.out', o[0].detach().clone())))
        hooks.append(lm.model.norm.register_forward_hook(
            lambda m, inp, o: captured.__setitem__('llm.norm', o.detach().clone())))
        result = lm(inputs_embeds=embeds, use_cache=False, return_dict=True, output_attentions=True)
        for h in hooks:
            h.remove()
        for i, probs in enumerate(result.attentions):
            captured[f'llm.layers.{i}.attn.probs'] = probs.detach().clone()
        out['llm.inputs_embeds'] = embeds.clone()
        out.update(captured)
        out['llm.logits'] = result.logits.detach().clone()
        # Greedy continuation with the KV cache, no stopping: exactly n_greedy tokens (argmax of each step).
        tokens = [int(result.logits[0, -1].argmax())]
        step = lm(inputs_embeds=embeds, use_cache=True, return_dict=True)
        past = step.past_key_values
        while len(tokens) < n_greedy:
            step = lm(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True, return_dict=True)
            past = step.past_key_values
            tokens.append(int(step.logits[0, -1].argmax()))
    return tokens


def ntk_reference(ckpt_dir, input_ids, max_pos, tensors, n_steps=16):
    """The LLM alone with a small max_position_embeddings, run past it: upstream's dynamic NTK rope
    (stateful: the base grows with the sequence seen so far). A fresh model, so no earlier state."""
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    cfg = InternVLChatConfig.from_pretrained(ckpt_dir)
    cfg.llm_config.max_position_embeddings = max_pos
    lm = InternVLChatModel.from_pretrained(ckpt_dir, config=cfg, torch_dtype=torch.float32).eval().language_model
    with torch.no_grad():
        out = lm(input_ids=torch.tensor([input_ids]), use_cache=True, return_dict=True)
        tensors['ntk.prompt_logits'] = out.logits.clone()
        tokens = [int(out.logits[0, -1].argmax())]
        past, steps = out.past_key_values, []
        while len(tokens) < n_steps:
            out = lm(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True, return_dict=True)
            past = out.past_key_values
            steps.append(out.logits[0, -1].clone())
            tokens.append(int(out.logits[0, -1].argmax()))
    tensors['ntk.step_logits'] = torch.stack(steps)
    return {'max_position_embeddings': max_pos, 'input_ids': input_ids, 'tokens': tokens}


def load_with_positions(ckpt_dir, max_pos):
    """A fresh float32 model of the checkpoint with a smaller max_position_embeddings (its rotary
    embedding starts unscaled: upstream's dynamic NTK state grows with the sequences it has seen)."""
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    cfg = InternVLChatConfig.from_pretrained(ckpt_dir)
    cfg.llm_config.max_position_embeddings = max_pos
    return InternVLChatModel.from_pretrained(ckpt_dir, config=cfg, torch_dtype=torch.float32).eval()


def long_context_chats(ckpt_dir, rec_tok, cases, gen_cfg, max_pos):
    """upstream chat() on prompts longer than max_position_embeddings x the rope_scaling factor: it
    refuses nothing, and InternLM2's dynamic NTK rope runs past that length. A fresh model per call."""
    records = [run_chat(load_with_positions(ckpt_dir, max_pos), rec_tok, name, pv, question, gen_cfg, **kwargs)[0]
               for name, pv, question, kwargs in cases]
    return {'max_position_embeddings': max_pos, 'chat': records}


def run_chat(model, rec_tok, conv_name, pv, question, gen_cfg, **kwargs):
    """One upstream chat() call, recording the prompt it built, the ids it fed and produced."""
    type(rec_tok).calls.clear()
    captured = {}
    original = model.generate

    def recording_generate(*a, **k):
        outputs = original(*a, **k)
        captured['input_ids'] = k['input_ids'].tolist()
        captured['attention_mask'] = k['attention_mask'].tolist()
        captured['output_ids'] = outputs.tolist()
        return outputs

    # chat() appends the new turn to the history list it is given: keep what went in.
    history_in = [list(h) for h in kwargs['history']] if kwargs.get('history') is not None else None
    model.generate = recording_generate
    try:
        result = model.chat(rec_tok, pv, question, dict(gen_cfg), **kwargs)
    finally:
        model.generate = original
    answer, history = result if kwargs.get('return_history') else (result, None)
    prompt = type(rec_tok).calls[-1]
    record = {'name': conv_name, 'question': question, 'num_patches_list': kwargs.get('num_patches_list'),
              'history_in': history_in, 'generation_config': gen_cfg,
              'prompt': prompt, 'input_ids': captured['input_ids'][0],
              'output_ids': captured['output_ids'][0], 'answer': answer}
    if history is not None:
        record['history_out'] = [list(h) for h in history]
    return record, answer


def write_reference(ref_dir, tensors, doc):
    from safetensors.torch import save_file
    os.makedirs(ref_dir, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in sorted(tensors.items())},
              os.path.join(ref_dir, 'tensors.safetensors'), metadata={'format': 'pt'})
    with open(os.path.join(ref_dir, 'reference.json'), 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write('\n')


def build_fixture(name, vision, llm, seed, tok_src, out_root, upstream_commit, shard_size, chat_references=True):
    ckpt_dir = os.path.join(out_root, 'checkpoints', name)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    os.makedirs(ckpt_dir)
    for f in ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json'):
        shutil.copyfile(os.path.join(tok_src, f), os.path.join(ckpt_dir, f))
    tok, rec_tok = load_tokenizer(ckpt_dir)
    vocab_size = len(tok)
    im_end, im_start = tok.convert_tokens_to_ids('<|im_end|>'), tok.convert_tokens_to_ids('<|im_start|>')
    img_context = tok.convert_tokens_to_ids('<IMG_CONTEXT>')

    from internvl.model.internvl_chat import InternVLChatModel
    torch.manual_seed(seed)
    config = make_config(vision, llm, vocab_size, im_end)
    model = InternVLChatModel(config)
    randomize(model, seed)
    shards = save_checkpoint(model, ckpt_dir, vocab_size, im_end, im_start, shard_size)
    del model

    model = load_float32(ckpt_dir)
    size = vision['image_size']
    # Image A: 2 tiles + thumbnail; image B: 1 tile.
    pv_a = pixel_values(3, size, seed + 1)
    pv_b = pixel_values(1, size, seed + 2)
    pv = torch.cat([pv_a, pv_b])
    tensors = {'pixel_values': pv}
    vit_embeds = vision_reference(model, pv, tensors)
    # A smaller input than the checkpoint's grid: upstream resizes the position embedding (bicubic).
    small = size - 2 * vision['patch_size']
    pv_small = pixel_values(2, small, seed + 3)
    with torch.no_grad():
        states = model.vision_model(pixel_values=pv_small, output_hidden_states=True, return_dict=True).hidden_states
    tensors['resized.pixel_values'] = pv_small
    tensors['resized.vision.embeddings'] = states[0].clone()
    tensors['resized.vision.out'] = states[-1].clone()
    doc = {'fixture': name, 'seed': seed, 'upstream_commit': upstream_commit,
           'versions': {'torch': torch.__version__, 'transformers': __import__('transformers').__version__},
           'shards': shards, 'vocab_size': vocab_size,
           'token_ids': {'<|im_end|>': im_end, '<|im_start|>': im_start, '<IMG_CONTEXT>': img_context,
                         '<img>': tok.convert_tokens_to_ids('<img>'), '</img>': tok.convert_tokens_to_ids('</img>')},
           'num_image_token': model.num_image_token,
           'pixel_values': {'image_a_tiles': 3, 'image_b_tiles': 1}}

    if chat_references:
        tokenizer_reference(tok, out_root)
        gen_cfg = {'max_new_tokens': 16, 'do_sample': False}
        chats = []
        single, answer = run_chat(model, rec_tok, 'single-image', pv_a, 'What is in the image?', gen_cfg)
        chats.append(single)
        multi, _ = run_chat(model, rec_tok, 'multi-image', pv, 'Image-1: <image>\nImage-2: <image>\nWhat are the differences between the two images?',
                            gen_cfg, num_patches_list=[3, 1])
        chats.append(multi)
        text, _ = run_chat(model, rec_tok, 'text-only', None, 'Hello, who are you?', gen_cfg)
        chats.append(text)
        first, _ = run_chat(model, rec_tok, 'history-turn-1', pv_a, '<image>\nDescribe the image.', gen_cfg, return_history=True)
        chats.append(first)
        second, _ = run_chat(model, rec_tok, 'history-turn-2', pv_a, 'Tell me more about the left part.', gen_cfg,
                             history=[tuple(h) for h in first['history_out']], return_history=True)
        chats.append(second)
        doc['chat'] = chats

        # batch_chat: two questions, one image each.
        type(rec_tok).calls.clear()
        captured = {}
        original = model.generate

        def recording_generate(*a, **k):
            outputs = original(*a, **k)
            captured.update(input_ids=k['input_ids'].tolist(), attention_mask=k['attention_mask'].tolist(),
                            output_ids=outputs.tolist())
            return outputs

        model.generate = recording_generate
        questions = ['Describe this image in detail.', 'What animal is in the picture?']
        answers = model.batch_chat(rec_tok, pv, questions, dict(gen_cfg), num_patches_list=[3, 1])
        model.generate = original
        doc['batch_chat'] = {'questions': questions, 'num_patches_list': [3, 1], 'generation_config': gen_cfg,
                             'prompts': type(rec_tok).calls[-1], **captured, 'answers': answers}

        # Layer-by-layer LLM reference on the single-image prompt.
        input_ids = torch.tensor([single['input_ids']])
        vit_a = vit_embeds[:3]
        doc['llm_prompt'] = 'chat[single-image].input_ids'
        doc['greedy16'] = llm_reference(model, input_ids, vit_a, img_context, tensors)
        doc['ntk'] = ntk_reference(ckpt_dir, text['input_ids'], 48, tensors)
        doc['long_context'] = long_context_chats(ckpt_dir, rec_tok, [
            ('single-image', pv_a, 'What is in the image?', {}),
            ('multi-image', pv, 'Image-1: <image>\nImage-2: <image>\nWhat are the differences between the two images?',
             {'num_patches_list': [3, 1]}),
        ], gen_cfg, 48)
    write_reference(os.path.join(out_root, 'reference', name), tensors, doc)
    print(f'{name}: {len(shards)} shards, {sum(p.numel() for p in model.parameters())} parameters', file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--upstream', required=True, help='path of OpenGVLab/InternVL internvl_chat (holds the internvl package)')
    ap.add_argument('--upstream-commit', required=True, help='the commit the upstream tree was taken from (recorded in the fixtures)')
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
    args = ap.parse_args()
    setup_upstream(os.path.abspath(args.upstream))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_root = os.path.abspath(args.out)
    os.makedirs(out_root, exist_ok=True)

    tok_dir = os.path.join(out_root, 'tokenizer-src.tmp')
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.makedirs(tok_dir)
    sp_size = train_tokenizer(tok_dir)
    write_tokenizer_files(tok_dir, sp_size)

    build_fixture('tiny-internvl2',
                  vision=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                              image_size=112, patch_size=14, norm_type='layer_norm', qkv_bias=True,
                              qk_normalization=False),
                  llm=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2, max_position_embeddings=2048,
                           rope_scaling={'type': 'dynamic', 'factor': 2.0}),
                  seed=SEED, tok_src=tok_dir, out_root=out_root, upstream_commit=args.upstream_commit, shard_size='300KB')
    build_fixture('tiny-internvit-rms',
                  vision=dict(hidden_size=48, intermediate_size=96, num_attention_heads=3, num_hidden_layers=2,
                              image_size=56, patch_size=14, norm_type='rms_norm', qkv_bias=False,
                              qk_normalization=True),
                  # A complete checkpoint needs an LLM; this fixture is about the vision tower, so it is minimal
                  # (plain multi-head attention) and gets no chat references.
                  llm=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=4, max_position_embeddings=2048, rope_scaling=None),
                  seed=SEED + 100, tok_src=tok_dir, out_root=out_root, upstream_commit=args.upstream_commit, shard_size='100KB',
                  chat_references=False)
    shutil.rmtree(tok_dir)

    # A digest of everything written, to compare runs.
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(out_root)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, out_root).encode())
            with open(p, 'rb') as fh:
                h.update(fh.read())
    print(f'fixtures digest: {h.hexdigest()}', file=sys.stderr)


if __name__ == '__main__':
    main()

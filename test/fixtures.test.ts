// The oracle's fixtures are complete and agree with their configs and with each other. Beyond
// shapes, a few values are recomputed here from the checkpoint tensors (read by our safetensors
// reader) and compared with what the upstream model produced from the same bytes.
import * as fs from 'fs';
import * as path from 'path';
import { SafetensorsCheckpoint } from '../src/io/safetensors';
import { checkpointDir, loadReference, readJson } from './helpers';

const FIXTURE_NAMES = ['tiny-internvl2', 'tiny-internvit-rms'];
const SYSTEM_MESSAGE = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。';
const INTERNLM2_SPECIAL = ['<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>', '<|im_start|>'];
const INTERNVL_ADDED = ['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>'];

interface HFConfig {
  model_type: string;
  force_image_size: number;
  downsample_ratio: number;
  ps_version: string;
  template: string;
  vision_config: {
    hidden_size: number;
    intermediate_size: number;
    num_attention_heads: number;
    num_hidden_layers: number;
    image_size: number;
    patch_size: number;
    norm_type: string;
    qkv_bias: boolean;
    qk_normalization: boolean;
  };
  llm_config: {
    vocab_size: number;
    hidden_size: number;
    intermediate_size: number;
    num_hidden_layers: number;
    num_attention_heads: number;
    num_key_value_heads: number;
    architectures: string[];
  };
}

/** Every tensor an InternVL2 (InternViT + mlp1 + InternLM2) checkpoint holds, with its shape. */
function expectedTensors(c: HFConfig): Map<string, number[]> {
  const v = c.vision_config;
  const l = c.llm_config;
  const t = new Map<string, number[]>();
  const C = v.hidden_size;
  const grid = v.image_size / v.patch_size;
  t.set('vision_model.embeddings.class_embedding', [1, 1, C]);
  t.set('vision_model.embeddings.patch_embedding.weight', [C, 3, v.patch_size, v.patch_size]);
  t.set('vision_model.embeddings.patch_embedding.bias', [C]);
  t.set('vision_model.embeddings.position_embedding', [1, grid * grid + 1, C]);
  for (let i = 0; i < v.num_hidden_layers; i++) {
    const p = `vision_model.encoder.layers.${i}.`;
    t.set(p + 'attn.qkv.weight', [3 * C, C]);
    if (v.qkv_bias) t.set(p + 'attn.qkv.bias', [3 * C]);
    if (v.qk_normalization) {
      t.set(p + 'attn.q_norm.weight', [C]);
      t.set(p + 'attn.k_norm.weight', [C]);
    }
    t.set(p + 'attn.proj.weight', [C, C]);
    t.set(p + 'attn.proj.bias', [C]);
    t.set(p + 'mlp.fc1.weight', [v.intermediate_size, C]);
    t.set(p + 'mlp.fc1.bias', [v.intermediate_size]);
    t.set(p + 'mlp.fc2.weight', [C, v.intermediate_size]);
    t.set(p + 'mlp.fc2.bias', [C]);
    for (const n of ['norm1', 'norm2']) {
      t.set(`${p}${n}.weight`, [C]);
      if (v.norm_type === 'layer_norm') t.set(`${p}${n}.bias`, [C]);
    }
    t.set(p + 'ls1', [C]);
    t.set(p + 'ls2', [C]);
  }
  const shuffled = C / (c.downsample_ratio * c.downsample_ratio);
  const D = l.hidden_size;
  t.set('mlp1.0.weight', [shuffled]);
  t.set('mlp1.0.bias', [shuffled]);
  t.set('mlp1.1.weight', [D, shuffled]);
  t.set('mlp1.1.bias', [D]);
  t.set('mlp1.3.weight', [D, D]);
  t.set('mlp1.3.bias', [D]);
  const headDim = D / l.num_attention_heads;
  t.set('language_model.model.tok_embeddings.weight', [l.vocab_size, D]);
  for (let i = 0; i < l.num_hidden_layers; i++) {
    const p = `language_model.model.layers.${i}.`;
    t.set(p + 'attention.wqkv.weight', [(l.num_attention_heads + 2 * l.num_key_value_heads) * headDim, D]);
    t.set(p + 'attention.wo.weight', [D, D]);
    t.set(p + 'feed_forward.w1.weight', [l.intermediate_size, D]);
    t.set(p + 'feed_forward.w3.weight', [l.intermediate_size, D]);
    t.set(p + 'feed_forward.w2.weight', [D, l.intermediate_size]);
    t.set(p + 'attention_norm.weight', [D]);
    t.set(p + 'ffn_norm.weight', [D]);
  }
  t.set('language_model.model.norm.weight', [D]);
  t.set('language_model.output.weight', [l.vocab_size, D]);
  return t;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe.each(FIXTURE_NAMES)('fixture %s', (name) => {
  const dir = checkpointDir(name);
  const config = readJson<HFConfig>(path.join(dir, 'config.json'));

  test('checkpoint directory has the files of a real InternVL2 checkpoint', () => {
    for (const f of [
      'config.json',
      'generation_config.json',
      'model.safetensors.index.json',
      'tokenizer.model',
      'tokenizer_config.json',
      'special_tokens_map.json',
      'added_tokens.json',
    ]) {
      expect(fs.existsSync(path.join(dir, f))).toBe(true);
    }
    expect(config.model_type).toBe('internvl_chat');
    expect(config.template).toBe('internlm2-chat');
    expect(config.llm_config.architectures).toEqual(['InternLM2ForCausalLM']);
    expect(config.force_image_size).toBe(config.vision_config.image_size);
  });

  test('every tensor the config implies is present with its shape, in bf16, over >= 2 shards, and nothing else', () => {
    const expected = expectedTensors(config);
    const ckpt = SafetensorsCheckpoint.open(dir);
    try {
      expect(ckpt.shards.size).toBeGreaterThanOrEqual(2);
      expect(ckpt.names.sort()).toEqual([...expected.keys()].sort());
      for (const [n, shape] of expected) {
        expect({ n, shape: ckpt.info(n).shape, dtype: ckpt.info(n).dtype }).toEqual({ n, shape, dtype: 'BF16' });
      }
    } finally {
      ckpt.close();
    }
  });

  test("tokenizer files: six InternLM2 specials at the end of the sentencepiece vocab, then InternVL's nine", () => {
    const tc = readJson<{ added_tokens_decoder: Record<string, { content: string; special: boolean }> }>(path.join(dir, 'tokenizer_config.json'));
    const added = readJson<Record<string, number>>(path.join(dir, 'added_tokens.json'));
    const vocab = config.llm_config.vocab_size;
    const spSize = vocab - INTERNVL_ADDED.length;
    const byId = new Map(Object.entries(tc.added_tokens_decoder).map(([id, e]) => [Number(id), e.content]));
    expect([0, 1, 2].map((i) => byId.get(i))).toEqual(['<unk>', '<s>', '</s>']);
    INTERNLM2_SPECIAL.forEach((tok, k) => expect(byId.get(spSize - INTERNLM2_SPECIAL.length + k)).toBe(tok));
    INTERNVL_ADDED.forEach((tok, k) => {
      expect(byId.get(spSize + k)).toBe(tok);
      expect(added[tok]).toBe(spSize + k);
    });
    expect(Object.values(tc.added_tokens_decoder).every((e) => e.special)).toBe(true);
    const gen = readJson<{ eos_token_id: number[] }>(path.join(dir, 'generation_config.json'));
    expect(gen.eos_token_id).toEqual([spSize - 2, spSize - 1]); // <|im_end|>, <|im_start|>
  });

  test('reference tensors have the shapes the config implies', () => {
    const { doc, tensors } = loadReference(name);
    try {
      const v = config.vision_config;
      const tiles = doc.pixel_values.image_a_tiles + doc.pixel_values.image_b_tiles;
      const grid = v.image_size / v.patch_size;
      const numImageToken = grid * grid * config.downsample_ratio ** 2;
      expect(doc.num_image_token).toBe(numImageToken);
      expect(doc.upstream_commit).toMatch(/^[0-9a-f]{40}$/);
      expect(tensors.info('pixel_values').shape).toEqual([tiles, 3, v.image_size, v.image_size]);
      expect(tensors.info('vision.embeddings').shape).toEqual([tiles, grid * grid + 1, v.hidden_size]);
      for (let i = 0; i < v.num_hidden_layers; i++) {
        expect(tensors.info(`vision.layers.${i}.out`).shape).toEqual([tiles, grid * grid + 1, v.hidden_size]);
      }
      expect(tensors.info('projector.out').shape).toEqual([tiles, numImageToken, config.llm_config.hidden_size]);
      for (const t of tensors.names) expect(tensors.info(t).dtype).toBe('F32');
    } finally {
      tensors.close();
    }
  });

  test('the CLS row of the ViT embeddings is class_embedding + position_embedding[0] from the checkpoint', () => {
    const { tensors } = loadReference(name);
    const ckpt = SafetensorsCheckpoint.open(dir);
    try {
      const C = config.vision_config.hidden_size;
      const cls = ckpt.readFloat32('vision_model.embeddings.class_embedding');
      const pos = ckpt.readFloat32('vision_model.embeddings.position_embedding').subarray(0, C);
      const emb = tensors.readFloat32('vision.embeddings');
      const tokens = tensors.info('vision.embeddings').shape[1];
      for (let tile = 0; tile < tensors.info('vision.embeddings').shape[0]; tile++) {
        const row = emb.subarray(tile * tokens * C, tile * tokens * C + C);
        expect(
          maxAbsDiff(
            row,
            cls.map((x, j) => x + pos[j]),
          ),
        ).toBeLessThan(1e-6);
      }
    } finally {
      ckpt.close();
      tensors.close();
    }
  });
});

describe('tiny-internvl2 chat and LLM references', () => {
  const name = 'tiny-internvl2';
  const config = readJson<HFConfig>(path.join(checkpointDir(name), 'config.json'));
  const { doc, tensors } = loadReference(name);
  afterAll(() => tensors.close());
  const imgContext = doc.token_ids['<IMG_CONTEXT>'];

  test('conversations cover single-image, multi-image, text-only and history, with template-shaped prompts', () => {
    expect(doc.chat!.map((c) => c.name)).toEqual(['single-image', 'multi-image', 'text-only', 'history-turn-1', 'history-turn-2']);
    for (const c of doc.chat!) {
      expect(c.prompt.startsWith(`<|im_start|>system\n${SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n`)).toBe(true);
      expect(c.prompt.endsWith('<|im_end|><|im_start|>assistant\n')).toBe(true);
      expect(c.input_ids[0]).toBe(1); // BOS
      const patches = c.num_patches_list ?? (c.name === 'text-only' ? [] : [doc.pixel_values.image_a_tiles]);
      const contexts = c.input_ids.filter((id) => id === imgContext).length;
      expect(contexts).toBe(doc.num_image_token * patches.reduce((a, b) => a + b, 0));
      expect(c.prompt.split('<IMG_CONTEXT>').length - 1).toBe(contexts);
      expect(c.output_ids.length).toBeLessThanOrEqual(1 + 16);
    }
    const second = doc.chat!.find((c) => c.name === 'history-turn-2')!;
    const first = doc.chat!.find((c) => c.name === 'history-turn-1')!;
    expect(second.history_in).toEqual(first.history_out);
    expect(second.prompt).toContain(`<|im_start|>assistant\n${first.answer}<|im_end|><|im_start|>user\nTell me more`);
  });

  test('batch_chat: two left-padded prompts with their masks', () => {
    const b = doc.batch_chat!;
    expect(b.prompts.length).toBe(2);
    expect(b.input_ids[0].length).toBe(b.input_ids[1].length);
    b.attention_mask.forEach((mask, i) => {
      const pads = mask.indexOf(1);
      expect(mask.slice(pads).every((m) => m === 1)).toBe(true);
      expect(b.input_ids[i].slice(0, pads).every((id) => id === 2)).toBe(true);
      expect(b.input_ids[i][pads]).toBe(1);
    });
    expect(b.answers.length).toBe(2);
  });

  test('merged embeddings: IMG_CONTEXT rows are the projector output in order, the rest are token embeddings', () => {
    const single = doc.chat!.find((c) => c.name === 'single-image')!;
    const D = config.llm_config.hidden_size;
    const embeds = tensors.readFloat32('llm.inputs_embeds');
    expect(tensors.info('llm.inputs_embeds').shape).toEqual([1, single.input_ids.length, D]);
    const proj = tensors.readFloat32('projector.out'); // rows of image A come first
    const ckpt = SafetensorsCheckpoint.open(checkpointDir(name));
    try {
      const table = ckpt.readFloat32('language_model.model.tok_embeddings.weight');
      let visual = 0;
      single.input_ids.forEach((id, pos) => {
        const row = embeds.subarray(pos * D, (pos + 1) * D);
        const expected = id === imgContext ? proj.subarray(visual * D, (visual + 1) * D) : table.subarray(id * D, (id + 1) * D);
        if (id === imgContext) visual++;
        expect(maxAbsDiff(row, expected)).toBe(0);
      });
      expect(visual).toBe(doc.num_image_token * doc.pixel_values.image_a_tiles);
    } finally {
      ckpt.close();
    }
  });

  test('per-layer LLM states, logits, and the greedy continuation agree with each other', () => {
    const L = doc.chat!.find((c) => c.name === 'single-image')!.input_ids.length;
    const { vocab_size: V, hidden_size: D, num_hidden_layers: layers } = config.llm_config;
    for (let i = 0; i < layers; i++) expect(tensors.info(`llm.layers.${i}.out`).shape).toEqual([1, L, D]);
    expect(tensors.info('llm.norm').shape).toEqual([1, L, D]);
    expect(tensors.info('llm.logits').shape).toEqual([1, L, V]);
    const logits = tensors.readFloat32('llm.logits').subarray((L - 1) * V);
    const argmax = logits.indexOf(Math.max(...logits));
    expect(doc.greedy16!.length).toBe(16);
    expect(doc.greedy16![0]).toBe(argmax);
    // chat() runs the same prompt greedily: its tokens (after the BOS generate() puts first) are a prefix.
    const chatIds = doc.chat!.find((c) => c.name === 'single-image')!.output_ids.slice(1);
    expect(doc.greedy16!.slice(0, chatIds.length)).toEqual(chatIds.slice(0, 16));
  });
});

test('the fixtures stay small: the parity fixtures under 20 MB, the scenes model under 12 MB, its held-out set under 3 MB', () => {
  const size = (d: string): number =>
    fs
      .readdirSync(d, { withFileTypes: true })
      .reduce((total, e) => total + (e.isDirectory() ? size(path.join(d, e.name)) : fs.statSync(path.join(d, e.name)).size), 0);
  const root = path.join(__dirname, 'fixtures');
  const scenesModel = size(path.join(root, 'checkpoints', 'scenes-pvc'));
  const scenesEval = size(path.join(root, 'scenes-eval'));
  expect(size(root) - scenesModel - scenesEval).toBeLessThan(20 * 1024 * 1024);
  expect(scenesModel).toBeLessThan(12 * 1024 * 1024);
  expect(scenesEval).toBeLessThan(3 * 1024 * 1024);
});

// The converted model's config.json: every field the code reads, spelled out, validated on load.
// Field names follow the HF config's (snake_case) so that a reader can match them with upstream.
// The converter builds it from a HuggingFace InternVL2 / PVC config (converter/hf_config.ts).
import * as path from 'path';
import { readJsonFile } from './json';

export const FORMAT_NAME = 'pvc-tfjs';
export const FORMAT_VERSION = 1;

export type NormType = 'layer_norm' | 'rms_norm';
export type PsVersion = 'v1' | 'v2';

export interface VisionConfig {
  hidden_size: number;
  intermediate_size: number;
  num_attention_heads: number;
  num_hidden_layers: number;
  /** Native input size of the checkpoint's position grid. */
  image_size: number;
  patch_size: number;
  num_channels: number;
  norm_type: NormType;
  layer_norm_eps: number;
  hidden_act: 'gelu';
  qkv_bias: boolean;
  qk_normalization: boolean;
}

export interface ProjectorConfig {
  /** vit hidden * (1 / downsample_ratio)^2 */
  input_size: number;
  hidden_size: number;
  /** mlp1.0 is nn.LayerNorm with PyTorch's default eps, not the ViT's. */
  layer_norm_eps: number;
}

export interface LLMConfig {
  architecture: 'InternLM2ForCausalLM';
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  hidden_act: 'silu';
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: { type: 'dynamic' | 'linear'; factor: number } | null;
  max_position_embeddings: number;
  bos_token_id: number;
  eos_token_id: number;
  pad_token_id: number;
}

export interface PVCConfig {
  use_temporal: boolean;
  image_repeat_time: number;
  video_repeat_time: number;
  /** ViT layers that carry AdaLN modulation / causal temporal attention (read from the tensors present). */
  adaln_layers: number[];
  temporal_layers: number[];
  /** Width of the sinusoidal timestep features fed to the time embedder. */
  time_embed_freq_dim: number;
}

export interface ModelConfig {
  format: typeof FORMAT_NAME;
  format_version: number;
  model_type: 'internvl_chat' | 'pvc_internvl';
  template: 'internlm2-chat';
  system_message: string;
  /** Input tile size (force_image_size, else the ViT's image_size). */
  image_size: number;
  downsample_ratio: number;
  ps_version: PsVersion;
  select_layer: number;
  /** Visual tokens per tile (per frame for PVC): (image_size / patch_size)^2 * downsample_ratio^2. */
  num_image_token: number;
  dynamic_image_size: boolean;
  use_thumbnail: boolean;
  min_dynamic_patch: number;
  max_dynamic_patch: number;
  vision: VisionConfig;
  projector: ProjectorConfig;
  llm: LLMConfig;
  /** Present for model_type pvc_internvl. */
  pvc: PVCConfig | null;
}

/** The internlm2-chat template's system message (59 characters; full-width comma after 大模型). */
export const INTERNLM2_CHAT_SYSTEM_MESSAGE = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。';

// ---- validation ----------------------------------------------------------------------------------

type Checker = (value: unknown) => string | null; // null when fine, else what was expected

const posInt: Checker = (v) => (Number.isSafeInteger(v) && (v as number) > 0 ? null : 'a positive integer');
const nonNegInt: Checker = (v) => (Number.isSafeInteger(v) && (v as number) >= 0 ? null : 'a non-negative integer');
const int: Checker = (v) => (Number.isSafeInteger(v) ? null : 'an integer');
const posNum: Checker = (v) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? null : 'a positive number');
const bool: Checker = (v) => (typeof v === 'boolean' ? null : 'true or false');
const str: Checker = (v) => (typeof v === 'string' ? null : 'a string');
const oneOf =
  (...values: unknown[]): Checker =>
  (v) =>
    values.includes(v) ? null : `one of ${values.map((x) => JSON.stringify(x)).join(', ')}`;
const intList: Checker = (v) => (Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && x >= 0) ? null : 'a list of non-negative integers');

function checkObject(obj: unknown, where: string, fields: Record<string, Checker>, source: string): void {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new Error(`${source}: ${where || 'config'} must be an object`);
  const record = obj as Record<string, unknown>;
  for (const [key, check] of Object.entries(fields)) {
    const name = where ? `${where}.${key}` : key;
    if (!(key in record)) throw new Error(`${source}: missing ${name}`);
    const problem = check(record[key]);
    if (problem !== null) throw new Error(`${source}: ${name} is ${JSON.stringify(record[key])}, expected ${problem}`);
  }
  for (const key of Object.keys(record)) {
    if (!(key in fields)) throw new Error(`${source}: unknown key ${where ? `${where}.` : ''}${key}`);
  }
}

/** Checks a converted config: every field present, typed and in range; unknown keys and values are errors. */
export function validateConfig(raw: unknown, source = 'config.json'): ModelConfig {
  checkObject(
    raw,
    '',
    {
      format: oneOf(FORMAT_NAME),
      format_version: oneOf(FORMAT_VERSION),
      model_type: oneOf('internvl_chat', 'pvc_internvl'),
      template: oneOf('internlm2-chat'),
      system_message: str,
      image_size: posInt,
      downsample_ratio: posNum,
      ps_version: oneOf('v1', 'v2'),
      select_layer: int,
      num_image_token: posInt,
      dynamic_image_size: bool,
      use_thumbnail: bool,
      min_dynamic_patch: posInt,
      max_dynamic_patch: posInt,
      vision: () => null,
      projector: () => null,
      llm: () => null,
      pvc: () => null,
    },
    source,
  );
  const c = raw as ModelConfig;
  checkObject(
    c.vision,
    'vision',
    {
      hidden_size: posInt,
      intermediate_size: posInt,
      num_attention_heads: posInt,
      num_hidden_layers: posInt,
      image_size: posInt,
      patch_size: posInt,
      num_channels: posInt,
      norm_type: oneOf('layer_norm', 'rms_norm'),
      layer_norm_eps: posNum,
      hidden_act: oneOf('gelu'),
      qkv_bias: bool,
      qk_normalization: bool,
    },
    source,
  );
  checkObject(c.projector, 'projector', { input_size: posInt, hidden_size: posInt, layer_norm_eps: posNum }, source);
  checkObject(
    c.llm,
    'llm',
    {
      architecture: oneOf('InternLM2ForCausalLM'),
      vocab_size: posInt,
      hidden_size: posInt,
      intermediate_size: posInt,
      num_hidden_layers: posInt,
      num_attention_heads: posInt,
      num_key_value_heads: posInt,
      head_dim: posInt,
      hidden_act: oneOf('silu'),
      rms_norm_eps: posNum,
      rope_theta: posNum,
      rope_scaling: (v) => {
        if (v === null) return null;
        if (typeof v !== 'object' || !['dynamic', 'linear'].includes((v as { type?: unknown }).type as string))
          return 'null or {type: "dynamic"|"linear", factor}';
        return posNum((v as { factor?: unknown }).factor) === null ? null : 'a rope_scaling factor > 0';
      },
      max_position_embeddings: posInt,
      bos_token_id: nonNegInt,
      eos_token_id: nonNegInt,
      pad_token_id: nonNegInt,
    },
    source,
  );
  if (c.pvc !== null) {
    checkObject(
      c.pvc,
      'pvc',
      {
        use_temporal: bool,
        image_repeat_time: posInt,
        video_repeat_time: posInt,
        adaln_layers: intList,
        temporal_layers: intList,
        time_embed_freq_dim: posInt,
      },
      source,
    );
  }
  checkDerived(c, source);
  return c;
}

/** Relations between fields that the code relies on. */
function checkDerived(c: ModelConfig, source: string): void {
  const fail = (msg: string): never => {
    throw new Error(`${source}: ${msg}`);
  };
  const v = c.vision;
  if (v.hidden_size % v.num_attention_heads !== 0)
    fail(`vision.hidden_size ${v.hidden_size} is not divisible by vision.num_attention_heads ${v.num_attention_heads}`);
  if (c.image_size % v.patch_size !== 0) fail(`image_size ${c.image_size} is not a multiple of vision.patch_size ${v.patch_size}`);
  const scale = 1 / c.downsample_ratio;
  if (!Number.isInteger(scale)) fail(`downsample_ratio ${c.downsample_ratio}: 1/downsample_ratio must be an integer`);
  const grid = c.image_size / v.patch_size;
  if (grid % scale !== 0) fail(`the ${grid}x${grid} patch grid does not divide by 1/downsample_ratio = ${scale}`);
  if (c.num_image_token !== (grid / scale) ** 2) fail(`num_image_token ${c.num_image_token} != (${grid} / ${scale})^2`);
  if (c.projector.input_size !== v.hidden_size * scale * scale) fail(`projector.input_size ${c.projector.input_size} != vision.hidden_size * ${scale * scale}`);
  if (c.projector.hidden_size !== c.llm.hidden_size) fail(`projector.hidden_size ${c.projector.hidden_size} != llm.hidden_size ${c.llm.hidden_size}`);
  // Indexes the ViT's hidden states as upstream does: L + 1 of them (embeddings, then each layer).
  if (c.select_layer > v.num_hidden_layers || c.select_layer < -(v.num_hidden_layers + 1)) {
    fail(`select_layer ${c.select_layer} is outside the ${v.num_hidden_layers + 1} ViT hidden states`);
  }
  const l = c.llm;
  if (l.num_attention_heads % l.num_key_value_heads !== 0)
    fail(`llm.num_attention_heads ${l.num_attention_heads} is not a multiple of llm.num_key_value_heads ${l.num_key_value_heads}`);
  if (l.head_dim * l.num_attention_heads !== l.hidden_size)
    fail(`llm.head_dim ${l.head_dim} * heads ${l.num_attention_heads} != llm.hidden_size ${l.hidden_size}`);
  if (l.head_dim % 2 !== 0) fail(`llm.head_dim ${l.head_dim} must be even for rotary embeddings`);
  if (c.min_dynamic_patch > c.max_dynamic_patch) fail(`min_dynamic_patch ${c.min_dynamic_patch} > max_dynamic_patch ${c.max_dynamic_patch}`);
  if (c.pvc !== null) {
    for (const key of ['adaln_layers', 'temporal_layers'] as const) {
      const bad = c.pvc[key].find((i) => i >= v.num_hidden_layers);
      if (bad !== undefined) fail(`pvc.${key} names layer ${bad}, but the ViT has ${v.num_hidden_layers} layers`);
    }
  }
}

/**
 * How many ViT layers run: select_layer indexes the L + 1 hidden states as upstream does (0 the
 * embeddings, i the output of layer i - 1, negative from the end), and the layers after it are never run.
 */
export function visionLayersRun(c: ModelConfig): number {
  return c.select_layer < 0 ? c.vision.num_hidden_layers + 1 + c.select_layer : c.select_layer;
}

/**
 * The positions a model is configured for: max_position_embeddings, times the rope_scaling factor when
 * there is one (vLLM's rule for a model's maximum length; InternLM2's dynamic NTK scaling stretches the
 * rotary base to that factor).
 */
export function contextLength(llm: LLMConfig): number {
  return llm.max_position_embeddings * (llm.rope_scaling?.factor ?? 1);
}

/** Reads and validates `<dir>/config.json` of a converted model. */
export function loadConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  const raw = readJsonFile(file, `${dir} is not a converted model: convert the HuggingFace checkpoint with pvc-convert first`);
  if ((raw as { format?: unknown } | null)?.format !== FORMAT_NAME) {
    throw new Error(`${file}: not a converted pvc-tfjs model (no "format": "${FORMAT_NAME}"); convert the HuggingFace checkpoint with pvc-convert first`);
  }
  return validateConfig(raw, file);
}

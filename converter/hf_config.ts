// HuggingFace InternVL2 / PVC config.json -> the normalized, validated config of a converted model.
// Every value the runtime depends on is read from the checkpoint's config (never from class
// defaults, which describe InternViT-6B); anything this port does not implement is an error naming
// the key and its value.
import { FORMAT_NAME, FORMAT_VERSION, INTERNLM2_CHAT_SYSTEM_MESSAGE, ModelConfig, validateConfig } from '../src/config';

type Json = Record<string, unknown>;

/** PyTorch's nn.LayerNorm default, which upstream's mlp1.0 uses. */
const MLP1_LAYER_NORM_EPS = 1e-5;
/** Width of the sinusoidal timestep features of PVC's time embedder (pvc.md; the tensors confirm it). */
export const PVC_TIME_FREQ_DIM = 256;

export interface PVCLayers {
  adaln_layers: number[];
  temporal_layers: number[];
}

function get(obj: Json, key: string, where: string, source: string): unknown {
  if (!(key in obj)) throw new Error(`${source}: missing ${where}${key}`);
  return obj[key];
}

function expectValue(value: unknown, allowed: unknown[], name: string, source: string, what: string): void {
  if (!allowed.some((a) => JSON.stringify(a) === JSON.stringify(value))) {
    throw new Error(`${source}: ${name} = ${JSON.stringify(value)} is not supported (${what}; supported: ${allowed.map((a) => JSON.stringify(a)).join(', ')})`);
  }
}

/**
 * Normalizes an HF config. `pvcLayers` (for model_type pvc_internvl) lists the ViT layers whose AdaLN
 * and temporal-attention tensors are present in the checkpoint.
 */
export function normalizeHFConfig(hf: Json, source: string, pvcLayers?: PVCLayers): ModelConfig {
  const modelType = hf.model_type;
  expectValue(modelType, ['internvl_chat', 'pvc_internvl'], 'model_type', source, 'InternVL2 and PVC-InternVL2 checkpoints');
  const vc = get(hf, 'vision_config', '', source) as Json;
  const lc = get(hf, 'llm_config', '', source) as Json;
  const v = (k: string) => get(vc, k, 'vision_config.', source);
  const l = (k: string) => get(lc, k, 'llm_config.', source);

  const architectures = l('architectures');
  expectValue(
    Array.isArray(architectures) ? architectures[0] : architectures,
    ['InternLM2ForCausalLM'],
    'llm_config.architectures[0]',
    source,
    'the LLM of InternVL2-8B and PVC-InternVL2-8B',
  );
  expectValue(hf.template, ['internlm2-chat'], 'template', source, 'the conversation template');
  expectValue(v('hidden_act'), ['gelu'], 'vision_config.hidden_act', source, 'exact erf GELU');
  expectValue(l('hidden_act'), ['silu'], 'llm_config.hidden_act', source, 'SwiGLU');
  expectValue(v('norm_type'), ['layer_norm', 'rms_norm'], 'vision_config.norm_type', source, 'InternViT norms');
  expectValue(hf.ps_version ?? 'v1', ['v1', 'v2'], 'ps_version', source, 'pixel shuffle');
  if ((lc.bias ?? true) !== false) expectValue(lc.bias ?? true, [false], 'llm_config.bias', source, 'InternLM2 without linear biases');
  if ((lc.tie_word_embeddings ?? false) !== false)
    expectValue(lc.tie_word_embeddings, [false], 'llm_config.tie_word_embeddings', source, 'an untied output head');
  const ropeScaling = (lc.rope_scaling ?? null) as { type?: string; factor?: number } | null;
  if (ropeScaling !== null) expectValue(ropeScaling.type, ['dynamic', 'linear'], 'llm_config.rope_scaling.type', source, 'rotary scaling');
  if ((hf.use_backbone_lora ?? 0) !== 0 || (hf.use_llm_lora ?? 0) !== 0) {
    throw new Error(`${source}: use_backbone_lora / use_llm_lora are set: merge the LoRA weights into the checkpoint before converting`);
  }

  const patch = v('patch_size') as number;
  const imageSize = (hf.force_image_size ?? v('image_size')) as number;
  const ratio = (hf.downsample_ratio ?? 0.5) as number;
  const scale = Math.round(1 / ratio);
  const vitHidden = v('hidden_size') as number;
  const heads = l('num_attention_heads') as number;
  const hidden = l('hidden_size') as number;

  let pvc: ModelConfig['pvc'] = null;
  if (modelType === 'pvc_internvl') {
    expectValue(hf.tile_repeat_way ?? null, [null], 'tile_repeat_way', source, 'PVC spec v0 implements the default tile-major order only');
    expectValue(hf.mlp_add_ops ?? null, [null], 'mlp_add_ops', source, 'PVC spec v0 implements the plain mlp1 projector only');
    pvc = {
      use_temporal: Boolean(get(hf, 'use_temporal', '', source)),
      image_repeat_time: get(hf, 'image_repeat_time', '', source) as number,
      video_repeat_time: get(hf, 'video_repeat_time', '', source) as number,
      adaln_layers: pvcLayers?.adaln_layers ?? [],
      temporal_layers: pvcLayers?.temporal_layers ?? [],
      time_embed_freq_dim: PVC_TIME_FREQ_DIM,
    };
  }

  const config: ModelConfig = {
    format: FORMAT_NAME,
    format_version: FORMAT_VERSION,
    model_type: modelType as ModelConfig['model_type'],
    template: 'internlm2-chat',
    system_message: typeof hf.system_message === 'string' ? hf.system_message : INTERNLM2_CHAT_SYSTEM_MESSAGE,
    image_size: imageSize,
    downsample_ratio: ratio,
    ps_version: (hf.ps_version ?? 'v1') as ModelConfig['ps_version'],
    select_layer: (hf.select_layer ?? -1) as number,
    num_image_token: Math.round(((imageSize / patch) * ratio) ** 2),
    dynamic_image_size: Boolean(hf.dynamic_image_size ?? false),
    use_thumbnail: Boolean(hf.use_thumbnail ?? false),
    min_dynamic_patch: (hf.min_dynamic_patch ?? 1) as number,
    max_dynamic_patch: (hf.max_dynamic_patch ?? 6) as number,
    vision: {
      hidden_size: vitHidden,
      intermediate_size: v('intermediate_size') as number,
      num_attention_heads: v('num_attention_heads') as number,
      num_hidden_layers: v('num_hidden_layers') as number,
      image_size: v('image_size') as number,
      patch_size: patch,
      num_channels: (vc.num_channels ?? 3) as number,
      norm_type: v('norm_type') as ModelConfig['vision']['norm_type'],
      layer_norm_eps: v('layer_norm_eps') as number,
      hidden_act: 'gelu',
      qkv_bias: v('qkv_bias') as boolean,
      qk_normalization: v('qk_normalization') as boolean,
    },
    projector: { input_size: vitHidden * scale * scale, hidden_size: hidden, layer_norm_eps: MLP1_LAYER_NORM_EPS },
    llm: {
      architecture: 'InternLM2ForCausalLM',
      vocab_size: l('vocab_size') as number,
      hidden_size: hidden,
      intermediate_size: l('intermediate_size') as number,
      num_hidden_layers: l('num_hidden_layers') as number,
      num_attention_heads: heads,
      num_key_value_heads: (lc.num_key_value_heads ?? heads) as number,
      head_dim: hidden / heads,
      hidden_act: 'silu',
      rms_norm_eps: l('rms_norm_eps') as number,
      rope_theta: (lc.rope_theta ?? 10000) as number,
      rope_scaling: ropeScaling === null ? null : { type: ropeScaling.type as 'dynamic' | 'linear', factor: ropeScaling.factor as number },
      max_position_embeddings: l('max_position_embeddings') as number,
      bos_token_id: (lc.bos_token_id ?? 1) as number,
      eos_token_id: (lc.eos_token_id ?? 2) as number,
      pad_token_id: (lc.pad_token_id ?? 2) as number,
    },
    pvc,
  };
  return validateConfig(config, source);
}

// The benchmark's model configurations (HF config.json form), from one real-size layer to a medium model.
import { syntheticConfig } from './synthetic-checkpoint';

type Json = Record<string, unknown>;

function config(vision: Json, llm: Json, imageSize: number): Json {
  const base = syntheticConfig(1) as { vision_config: Json; llm_config: Json } & Json;
  return {
    ...base,
    force_image_size: imageSize,
    vision_config: { ...base.vision_config, image_size: imageSize, use_flash_attn: false, ...vision },
    llm_config: { ...base.llm_config, attn_implementation: 'eager', ...llm },
  };
}

const TINY_LLM = { vocab_size: 1015, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 1, num_attention_heads: 8, num_key_value_heads: 2 };
const TINY_VIT = { hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 1 };

export const BENCH_CONFIGS: Record<string, { hf: Json; measures: ('vision' | 'llm' | 'beams')[]; note: string }> = {
  'vit-300m-layer': {
    hf: config({ num_hidden_layers: 1 }, TINY_LLM, 448),
    measures: ['vision'],
    note: 'one InternViT-300M layer (width 1024, 16 heads, MLP 4096) + mlp1, 448 px tile',
  },
  'internlm2-7b-layer': {
    hf: config(TINY_VIT, { num_hidden_layers: 1, vocab_size: 1015 }, 112),
    measures: ['llm'],
    note: 'one InternLM2-7B layer (width 4096, 32/8 heads, MLP 14336), small vocabulary',
  },
  medium: {
    hf: config(
      { hidden_size: 512, intermediate_size: 2048, num_attention_heads: 8, num_hidden_layers: 6 },
      { hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 8, num_attention_heads: 16, num_key_value_heads: 4, vocab_size: 92553 },
      448,
    ),
    measures: ['vision', 'llm', 'beams'],
    note: 'ViT 6 x 512 at 448 px; LLM 8 x 1024 (16/4 heads, MLP 4096), vocabulary 92553',
  },
};

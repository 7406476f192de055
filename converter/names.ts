// The one name table: every HuggingFace tensor of an InternVL2 / PVC checkpoint, the shape the
// config implies for it, and the project tensors it becomes. The runtime only knows the project's
// names; this file is the only place that knows upstream's.
//
// Project layout conventions (what the transforms produce):
//   linear weights [in, out] (h @ W is a plain 2-D matMul, fast on every backend);
//   the patch-embedding conv flattened to [channels * patch * patch, width], rows in (c, kh, kw) order;
//   InternLM2's packed wqkv split into q [D, H*hd], k [D, KV*hd], v [D, KV*hd];
//   embeddings without their leading singleton axes.
import { ModelConfig } from '../src/config';
import { PVCLayers } from './hf_config';

export type Transform =
  | 'copy' // same values, shape of `out`
  | 'linear' // [out, in] -> [in, out]
  | 'patch' // [C, ch, p, p] -> [ch*p*p, C]
  | 'wqkv'; // packed GQA [(H + 2KV) * hd, D] -> q, k, v, each [in, out]

export interface TensorRule {
  hf: string;
  hfShape: number[];
  transform: Transform;
  out: { name: string; shape: number[] }[];
}

/**
 * The rules for a config, in output order. For PVC, `config.pvc.adaln_layers / temporal_layers` say
 * which ViT layers carry the extra tensors (the converter reads them off the checkpoint first).
 */
export function tensorRules(config: ModelConfig): TensorRule[] {
  const rules: TensorRule[] = [];
  const copy = (hf: string, hfShape: number[], name: string, shape = hfShape) => rules.push({ hf, hfShape, transform: 'copy', out: [{ name, shape }] });
  const linear = (hf: string, name: string, inDim: number, outDim: number, bias: boolean) => {
    rules.push({ hf: `${hf}.weight`, hfShape: [outDim, inDim], transform: 'linear', out: [{ name: `${name}.weight`, shape: [inDim, outDim] }] });
    if (bias) copy(`${hf}.bias`, [outDim], `${name}.bias`);
  };
  const norm = (hf: string, name: string, width: number, withBias: boolean) => {
    copy(`${hf}.weight`, [width], `${name}.weight`);
    if (withBias) copy(`${hf}.bias`, [width], `${name}.bias`);
  };

  // InternViT
  const v = config.vision;
  const C = v.hidden_size;
  const grid = v.image_size / v.patch_size;
  const vp = 'vision_model.';
  copy(`${vp}embeddings.class_embedding`, [1, 1, C], 'vision.embeddings.cls', [C]);
  rules.push({
    hf: `${vp}embeddings.patch_embedding.weight`,
    hfShape: [C, v.num_channels, v.patch_size, v.patch_size],
    transform: 'patch',
    out: [{ name: 'vision.embeddings.patch.weight', shape: [v.num_channels * v.patch_size * v.patch_size, C] }],
  });
  copy(`${vp}embeddings.patch_embedding.bias`, [C], 'vision.embeddings.patch.bias');
  copy(`${vp}embeddings.position_embedding`, [1, grid * grid + 1, C], 'vision.embeddings.pos', [grid * grid + 1, C]);

  const pvc = config.pvc;
  if (pvc !== null && pvc.use_temporal) {
    const F = pvc.time_embed_freq_dim;
    linear(`${vp}time_embedder.mlp.0`, 'vision.time_embedder.fc1', F, C, true);
    linear(`${vp}time_embedder.mlp.2`, 'vision.time_embedder.fc2', C, C, true);
  }
  const layerNormBias = v.norm_type === 'layer_norm';
  for (let i = 0; i < v.num_hidden_layers; i++) {
    const hf = `${vp}encoder.layers.${i}.`;
    const ours = `vision.layers.${i}.`;
    norm(`${hf}norm1`, `${ours}norm1`, C, layerNormBias);
    linear(`${hf}attn.qkv`, `${ours}attn.qkv`, C, 3 * C, v.qkv_bias);
    if (v.qk_normalization) {
      // q_norm / k_norm are always RMSNorm over the full width (before the head split).
      norm(`${hf}attn.q_norm`, `${ours}attn.q_norm`, C, false);
      norm(`${hf}attn.k_norm`, `${ours}attn.k_norm`, C, false);
    }
    linear(`${hf}attn.proj`, `${ours}attn.proj`, C, C, true);
    copy(`${hf}ls1`, [C], `${ours}ls1`);
    norm(`${hf}norm2`, `${ours}norm2`, C, layerNormBias);
    linear(`${hf}mlp.fc1`, `${ours}mlp.fc1`, C, v.intermediate_size, true);
    linear(`${hf}mlp.fc2`, `${ours}mlp.fc2`, v.intermediate_size, C, true);
    copy(`${hf}ls2`, [C], `${ours}ls2`);
    if (pvc !== null && pvc.adaln_layers.includes(i)) {
      // adaLN_modulation = Sequential(SiLU, Linear(C, 4C)): (shift1, scale1, shift2, scale2).
      linear(`${hf}adaLN_modulation.1`, `${ours}adaln`, C, 4 * C, true);
    }
    if (pvc !== null && pvc.temporal_layers.includes(i)) {
      norm(`${hf}norm_t`, `${ours}temporal.norm`, C, true);
      linear(`${hf}temporal_attn.qkv`, `${ours}temporal.qkv`, C, 3 * C, true);
      linear(`${hf}temporal_attn.proj`, `${ours}temporal.proj`, C, C, true);
      copy(`${hf}ls_t`, [C], `${ours}temporal.ls`);
    }
  }

  // mlp1: LayerNorm, Linear, GELU, Linear
  const p = config.projector;
  norm('mlp1.0', 'projector.norm', p.input_size, true);
  linear('mlp1.1', 'projector.fc1', p.input_size, p.hidden_size, true);
  linear('mlp1.3', 'projector.fc2', p.hidden_size, p.hidden_size, true);

  // InternLM2
  const l = config.llm;
  const D = l.hidden_size;
  const hd = l.head_dim;
  const lp = 'language_model.model.';
  copy(`${lp}tok_embeddings.weight`, [l.vocab_size, D], 'llm.embed.weight');
  for (let i = 0; i < l.num_hidden_layers; i++) {
    const hf = `${lp}layers.${i}.`;
    const ours = `llm.layers.${i}.`;
    norm(`${hf}attention_norm`, `${ours}attn_norm`, D, false);
    rules.push({
      hf: `${hf}attention.wqkv.weight`,
      hfShape: [(l.num_attention_heads + 2 * l.num_key_value_heads) * hd, D],
      transform: 'wqkv',
      out: [
        { name: `${ours}attn.q.weight`, shape: [D, l.num_attention_heads * hd] },
        { name: `${ours}attn.k.weight`, shape: [D, l.num_key_value_heads * hd] },
        { name: `${ours}attn.v.weight`, shape: [D, l.num_key_value_heads * hd] },
      ],
    });
    linear(`${hf}attention.wo`, `${ours}attn.o`, l.num_attention_heads * hd, D, false);
    norm(`${hf}ffn_norm`, `${ours}mlp_norm`, D, false);
    linear(`${hf}feed_forward.w1`, `${ours}mlp.gate`, D, l.intermediate_size, false);
    linear(`${hf}feed_forward.w3`, `${ours}mlp.up`, D, l.intermediate_size, false);
    linear(`${hf}feed_forward.w2`, `${ours}mlp.down`, l.intermediate_size, D, false);
  }
  norm(`${lp}norm`, 'llm.norm', D, false);
  linear('language_model.output', 'llm.output', D, l.vocab_size, false);
  return rules;
}

const ADALN = /^vision_model\.encoder\.layers\.(\d+)\.adaLN_modulation\./;
const TEMPORAL = /^vision_model\.encoder\.layers\.(\d+)\.(temporal_attn\.|norm_t\.|ls_t$)/;

/** Which ViT layers carry PVC's AdaLN and temporal tensors, from the tensor names present. */
export function detectPVCLayers(names: Iterable<string>): PVCLayers {
  const adaln = new Set<number>();
  const temporal = new Set<number>();
  for (const n of names) {
    const a = ADALN.exec(n);
    if (a) adaln.add(Number(a[1]));
    const t = TEMPORAL.exec(n);
    if (t) temporal.add(Number(t[1]));
  }
  const sorted = (s: Set<number>) => [...s].sort((x, y) => x - y);
  return { adaln_layers: sorted(adaln), temporal_layers: sorted(temporal) };
}

// ---- transforms ----------------------------------------------------------------------------------

function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(src.length);
  // Blocked so that both sides stay in cache for large matrices.
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(r0 + B, rows);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(c0 + B, cols);
      for (let r = r0; r < r1; r++) {
        const base = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[base + c];
      }
    }
  }
  return out;
}

/** Applies a rule's transform to the source values (float32), giving one array per output. */
export function applyTransform(rule: TensorRule, src: Float32Array, config: ModelConfig): Float32Array[] {
  const [rows] = rule.hfShape;
  const cols = src.length / rows;
  switch (rule.transform) {
    case 'copy':
      return [src];
    case 'linear':
    case 'patch': // [C, ch, p, p] is [C, ch*p*p] row-major in (c, kh, kw) order: the same transpose
      return [transpose2d(src, rows, cols)];
    case 'wqkv': {
      // Rows form KV groups of (G query heads, 1 key head, 1 value head), hd rows each: kv head h
      // serves query heads h*G .. h*G+G-1, so taking the q blocks group by group keeps head order.
      const { num_attention_heads: H, num_key_value_heads: KV, head_dim: hd } = config.llm;
      const G = H / KV;
      const D = cols;
      const q = new Float32Array(H * hd * D);
      const k = new Float32Array(KV * hd * D);
      const v = new Float32Array(KV * hd * D);
      const block = hd * D;
      for (let h = 0; h < KV; h++) {
        const group = h * (G + 2) * block;
        q.set(src.subarray(group, group + G * block), h * G * block);
        k.set(src.subarray(group + G * block, group + (G + 1) * block), h * block);
        v.set(src.subarray(group + (G + 1) * block, group + (G + 2) * block), h * block);
      }
      return [transpose2d(q, H * hd, D), transpose2d(k, KV * hd, D), transpose2d(v, KV * hd, D)];
    }
  }
}

// Rotary position embedding (RoPE) of InternLM2: the cos/sin tables for given positions (with
// upstream's linear and dynamic NTK scaling) and their application to queries and keys.
import * as tf from '@tensorflow/tfjs';
import { LLMConfig } from '../config';

/** cos and sin for some positions, each [B, 1, T, head_dim] (see RotaryEmbedding.tables). */
export interface RopeTables {
  cos: tf.Tensor4D;
  sin: tf.Tensor4D;
}

/**
 * Rotary embedding tables, computed in float32 arithmetic as upstream does (float32 inv_freq, float32
 * t * inv_freq). With rope_scaling `dynamic` it is stateful exactly like upstream's
 * InternLM2DynamicNTKScalingRotaryEmbedding: once a sequence longer than max_position_embeddings is
 * seen, the base grows to theta * ((factor * len / max_pos) - (factor - 1))^(d / (d - 2)) and stays
 * there; keys already in a KV cache keep the rotation they were computed with.
 */
export class RotaryEmbedding {
  private invFreq: Float32Array;
  /** Upstream's max_seq_len_cached: the tables are rebuilt (with a new NTK base) only beyond it. */
  private cachedLength: number;

  constructor(readonly config: LLMConfig) {
    this.invFreq = RotaryEmbedding.inverseFrequencies(config.rope_theta, config.head_dim);
    this.cachedLength = config.max_position_embeddings;
  }

  /** Back to the state of a freshly loaded model (the base rope_theta, nothing seen past max_position_embeddings). */
  reset(): void {
    this.invFreq = RotaryEmbedding.inverseFrequencies(this.config.rope_theta, this.config.head_dim);
    this.cachedLength = this.config.max_position_embeddings;
  }

  static inverseFrequencies(base: number, dim: number): Float32Array {
    const f = Math.fround;
    const b = f(base);
    return Float32Array.from({ length: dim / 2 }, (_, i) => f(1 / f(Math.pow(b, f((2 * i) / dim)))));
  }

  /** Called with the total sequence length (cached + new) before each forward. */
  update(seqLen: number): void {
    if (seqLen <= this.cachedLength) return;
    this.cachedLength = seqLen;
    const { rope_scaling: scaling, max_position_embeddings: maxPos, head_dim: d, rope_theta: theta } = this.config;
    if (scaling?.type === 'dynamic' && seqLen > maxPos) {
      const base = theta * ((scaling.factor * seqLen) / maxPos - (scaling.factor - 1)) ** (d / (d - 2));
      this.invFreq = RotaryEmbedding.inverseFrequencies(base, d);
    }
  }

  /**
   * cos and sin for the given positions: each [B, 1, T, head_dim] (the frequencies repeated twice). The
   * first half of `sin` is negated: rotate_half(x) * sin = concat(x2, x1) * sin with that sign folded in.
   */
  tables(positions: number[][]): RopeTables {
    const f = Math.fround;
    const half = this.invFreq.length;
    const d = half * 2;
    const B = positions.length;
    const T = positions[0].length;
    const cos = new Float32Array(B * T * d);
    const sin = new Float32Array(B * T * d);
    const linear = this.config.rope_scaling?.type === 'linear' ? this.config.rope_scaling.factor : 1;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const pos = f(positions[b][t] / linear);
        const row = (b * T + t) * d;
        for (let i = 0; i < half; i++) {
          const angle = f(pos * this.invFreq[i]);
          cos[row + i] = cos[row + half + i] = Math.cos(angle);
          sin[row + half + i] = Math.sin(angle);
          sin[row + i] = -sin[row + half + i];
        }
      }
    }
    return { cos: tf.tensor4d(cos, [B, 1, T, d]), sin: tf.tensor4d(sin, [B, 1, T, d]) };
  }
}

/**
 * x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2]); the minus sign
 * lives in the tables' sin (exact: (-a) * b = a * (-b) in floating point), one op fewer per call.
 */
export function applyRotary(x: tf.Tensor4D, { cos, sin }: RopeTables): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  return tf.add(tf.mul(x, cos), tf.mul(tf.concat([x2, x1], 3), sin)) as tf.Tensor4D;
}

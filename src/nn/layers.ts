// The few building blocks shared by InternViT, PVC's temporal layers, the projector and InternLM2.
// Each holds its weights (tensors owned by the model's weight store) and has a plain `forward`.
// Callers run them inside tf.tidy; nothing here keeps intermediates.
import * as tf from '@tensorflow/tfjs';
import { tensorflowUsesOneDNN } from '../backend';
import { Weights } from '../io/weights';

/** Receives intermediate values by name (see `model.inspect`); it must keep (clone) what it wants beyond the call. */
export type Tap = (name: string, value: tf.Tensor) => void;

/**
 * y = x @ W + b. The converted weight is [in, out]: on wasm only a plain 2-D matMul is fast, and so is
 * libtensorflow's Eigen matMul (the tensorflow backend's default engine, see src/backend.ts). With
 * oneDNN (TF_ENABLE_ONEDNN_OPTS=1) x @ W^T against [out, in] is fast instead, so there the weight is held
 * transposed. Measured on 2 cores, [512,4096] x [4096,14336]: Eigen 260 ms as stored vs 731 ms
 * transposed; oneDNN 236 ms transposed vs 432 ms as stored.
 */
export class Linear {
  /** [in, out], or [out, in] when `transposed` (tensorflow backend with oneDNN). */
  readonly weight: tf.Tensor2D;
  readonly transposed: boolean;
  readonly bias: tf.Tensor1D | null;

  constructor(w: Weights, name: string, bias: boolean) {
    this.transposed = tf.getBackend() === 'tensorflow' && tensorflowUsesOneDNN();
    this.weight = this.transposed ? w.transposed(`${name}.weight`) : (w.get(`${name}.weight`, 2) as tf.Tensor2D);
    this.bias = bias ? (w.get(`${name}.bias`, 1) as tf.Tensor1D) : null;
  }

  get inFeatures(): number {
    return this.weight.shape[this.transposed ? 1 : 0];
  }

  get outFeatures(): number {
    return this.weight.shape[this.transposed ? 0 : 1];
  }

  forward<T extends tf.Tensor>(x: T): T {
    const lead = x.shape.slice(0, -1);
    if (tf.getBackend() === 'tensorflow') {
      // libtensorflow's BatchMatMulV2 takes [1, T, in] or [rows, in] against the 2-D weight as it is. Through
      // tf.fused.matMul the same product costs six more ops (reshapes, each with a shape tensor), as much
      // as the matVec itself for a small layer in a decode step.
      const a = x.rank === 2 || (x.rank === 3 && x.shape[0] === 1) ? x : x.reshape([-1, this.inFeatures]);
      let y = tf.engine().runKernel('BatchMatMul', { a, b: this.weight }, { transposeA: false, transposeB: this.transposed }) as tf.Tensor;
      if (this.bias) y = tf.add(y, this.bias);
      return (a === x ? y : y.reshape([...lead, this.outFeatures])) as T;
    }
    const x2d = x.reshape([-1, this.inFeatures]) as tf.Tensor2D;
    const y = tf.fused.matMul({ a: x2d, b: this.weight, bias: this.bias ?? undefined });
    return y.reshape([...lead, this.outFeatures]) as T;
  }
}

/** nn.LayerNorm over the last axis: biased variance, eps inside the square root, affine. */
export class LayerNorm {
  readonly weight: tf.Tensor1D;
  readonly bias: tf.Tensor1D;

  constructor(w: Weights, name: string, readonly eps: number) {
    this.weight = w.get(`${name}.weight`, 1) as tf.Tensor1D;
    this.bias = w.get(`${name}.bias`, 1) as tf.Tensor1D;
  }

  forward<T extends tf.Tensor>(x: T): T {
    const mean = tf.mean(x, -1, true);
    const centered = tf.sub(x, mean);
    const variance = tf.mean(tf.square(centered), -1, true);
    return tf.add(tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, this.eps))), this.weight), this.bias) as T;
  }
}

/** RMSNorm as InternViT and InternLM2 compute it: x * rsqrt(mean(x^2) + eps), then the weight (fp32 throughout here). */
export class RMSNorm {
  readonly weight: tf.Tensor1D;

  constructor(w: Weights, name: string, readonly eps: number) {
    this.weight = w.get(`${name}.weight`, 1) as tf.Tensor1D;
  }

  forward<T extends tf.Tensor>(x: T): T {
    const variance = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, this.eps))), this.weight) as T;
  }
}

export type Norm = LayerNorm | RMSNorm;

/** Exact (erf) GELU, as nn.GELU() and transformers' "gelu". */
export function gelu<T extends tf.Tensor>(x: T): T {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)) as T;
}

export function silu<T extends tf.Tensor>(x: T): T {
  return tf.mul(x, tf.sigmoid(x)) as T;
}

/**
 * Scaled dot-product attention over Q groups: for each i, softmax(q_i k_i^T * scale + mask) v_i with
 * q_i [R, d] (R = G * Tq query rows sharing the keys: G heads of a GQA group, or 1 head), k_i, v_i
 * [Tk, d]. `mask` [Tq, Tk] or [Q, 1, Tq, Tk]-broadcastable per group is added to the scores viewed as
 * [Q, G, Tq, Tk]. Returns the output [Q, R, d] and the probabilities [Q, R, Tk].
 *
 * Keys and values may come as consecutive blocks along Tk (a KV cache's main block and its tail): the
 * scores of the blocks are joined before the softmax and the output is the sum of each block's share.
 *
 * On wasm only a plain 2-D matMul without transposes is fast (batched or transposed ones run ~10x
 * slower), so there, when the score matrices are large, each group is two 2-D matMuls against an
 * explicitly transposed key block; elsewhere one batched matMul does all groups.
 */
export function attention(q: tf.Tensor3D, k: tf.Tensor3D | tf.Tensor3D[], v: tf.Tensor3D | tf.Tensor3D[], scale: number, queriesPerGroup = 1, mask?: tf.Tensor): { out: tf.Tensor3D; probs: tf.Tensor3D } {
  const keys = Array.isArray(k) ? k : [k];
  const values = Array.isArray(v) ? v : [v];
  const [Q, R, d] = q.shape;
  const Tk = keys.reduce((n, b) => n + b.shape[1], 0);
  const Tq = R / queriesPerGroup;
  const addMask = (scores: tf.Tensor, group?: number) => {
    if (mask === undefined) return scores;
    const m = group === undefined || mask.rank < 4 || mask.shape[0] === 1 ? mask : mask.slice([group, 0, 0, 0], [1, -1, -1, -1]);
    const shape = group === undefined ? [Q, queriesPerGroup, Tq, Tk] : [1, queriesPerGroup, Tq, Tk];
    return tf.add(scores.reshape(shape), m).reshape(group === undefined ? [Q, R, Tk] : [R, Tk]);
  };
  if (tf.getBackend() === 'wasm' && R * Tk >= 4096) {
    const kAll = keys.length === 1 ? keys[0] : tf.concat(keys, 1);
    const vAll = values.length === 1 ? values[0] : tf.concat(values, 1);
    const outs: tf.Tensor2D[] = [];
    const probs: tf.Tensor2D[] = [];
    for (let i = 0; i < Q; i++) {
      const qi = q.slice([i, 0, 0], [1, R, d]).reshape([R, d]) as tf.Tensor2D;
      const kt = kAll.slice([i, 0, 0], [1, Tk, d]).reshape([Tk, d]).transpose() as tf.Tensor2D;
      const vi = vAll.slice([i, 0, 0], [1, Tk, d]).reshape([Tk, d]) as tf.Tensor2D;
      const p = tf.softmax(addMask(tf.matMul(tf.mul(qi, scale), kt), i), -1) as tf.Tensor2D;
      probs.push(p);
      outs.push(tf.matMul(p, vi));
    }
    return { out: tf.stack(outs) as tf.Tensor3D, probs: tf.stack(probs) as tf.Tensor3D };
  }
  const scaled = tf.mul(q, scale) as tf.Tensor3D;
  const blockScores = keys.map((kb) => batchMatMul(scaled, kb, true));
  const probs = tf.softmax(addMask(blockScores.length === 1 ? blockScores[0] : tf.concat(blockScores, 2)), -1) as tf.Tensor3D;
  if (values.length === 1) return { out: batchMatMul(probs, values[0]), probs };
  const blockProbs = tf.split(probs, values.map((b) => b.shape[1]), 2) as tf.Tensor3D[];
  return { out: tf.addN(blockProbs.map((p, i) => batchMatMul(p, values[i]))), probs };
}

/** a @ b (or a @ b^T) for rank-3 operands as the one kernel it is; tf.matMul adds three reshape ops around it. */
function batchMatMul(a: tf.Tensor3D, b: tf.Tensor3D, transposeB = false): tf.Tensor3D {
  return tf.engine().runKernel('BatchMatMul', { a, b }, { transposeA: false, transposeB }) as tf.Tensor3D;
}

/** [B, T, H*hd] -> [B, H, T, hd] (for one position, T = 1, the same memory order: a reshape suffices) */
export function splitHeads(x: tf.Tensor3D, heads: number): tf.Tensor4D {
  const [B, T, width] = x.shape;
  if (T === 1) return tf.reshape(x, [B, heads, 1, width / heads]);
  return tf.transpose(tf.reshape(x, [B, T, heads, width / heads]), [0, 2, 1, 3]) as tf.Tensor4D;
}

/** [B, H, T, hd] -> [B, T, H*hd] */
export function mergeHeads(x: tf.Tensor4D): tf.Tensor3D {
  const [B, H, T, hd] = x.shape;
  if (T === 1) return tf.reshape(x, [B, 1, H * hd]);
  return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [B, T, H * hd]) as tf.Tensor3D;
}

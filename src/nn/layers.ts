// The few building blocks shared by InternViT, PVC's temporal layers, the projector and InternLM2.
// Each holds its weights (tensors owned by the model's weight store) and has a plain `forward`.
// Callers run them inside tf.tidy; nothing here keeps intermediates.
import * as tf from '@tensorflow/tfjs';
import { Weights } from '../io/weights';

/** Receives intermediate values by name (see `model.inspect`); it must keep (clone) what it wants beyond the call. */
export type Tap = (name: string, value: tf.Tensor) => void;

/** y = x @ W + b with W stored [in, out] (a plain 2-D matMul on every backend). */
export class Linear {
  readonly weight: tf.Tensor2D;
  readonly bias: tf.Tensor1D | null;

  constructor(w: Weights, name: string, bias: boolean) {
    this.weight = w.get(`${name}.weight`, 2) as tf.Tensor2D;
    this.bias = bias ? (w.get(`${name}.bias`, 1) as tf.Tensor1D) : null;
  }

  get inFeatures(): number {
    return this.weight.shape[0];
  }

  get outFeatures(): number {
    return this.weight.shape[1];
  }

  forward<T extends tf.Tensor>(x: T): T {
    const lead = x.shape.slice(0, -1);
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
 * Scaled dot-product attention over [B, H, Tq, hd] queries and [B, H, Tk, hd] keys/values:
 * softmax(q k^T * scale + mask) v. `mask` is added to the scores (0 or -Infinity), broadcast to
 * [B, H, Tq, Tk]. Returns the output and, on request, the attention probabilities.
 */
export function attention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  scale: number,
  mask?: tf.Tensor,
): { out: tf.Tensor4D; probs: tf.Tensor4D } {
  let scores = tf.matMul(tf.mul(q, scale), k, false, true) as tf.Tensor4D;
  if (mask !== undefined) scores = tf.add(scores, mask) as tf.Tensor4D;
  const probs = tf.softmax(scores, -1) as tf.Tensor4D;
  return { out: tf.matMul(probs, v) as tf.Tensor4D, probs };
}

/** [B, T, H*hd] -> [B, H, T, hd] */
export function splitHeads(x: tf.Tensor3D, heads: number): tf.Tensor4D {
  const [B, T, width] = x.shape;
  return tf.transpose(tf.reshape(x, [B, T, heads, width / heads]), [0, 2, 1, 3]) as tf.Tensor4D;
}

/** [B, H, T, hd] -> [B, T, H*hd] */
export function mergeHeads(x: tf.Tensor4D): tf.Tensor3D {
  const [B, H, T, hd] = x.shape;
  return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [B, T, H * hd]) as tf.Tensor3D;
}

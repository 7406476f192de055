// The machinery around InternLM2's layers (as mlx-lm's models/base.py is around its models): the
// positions and the additive causal/padding mask of new positions given the cached ones, and attention
// over the KV cache, grouped-query or in the beams' shared-prompt layout.
import * as tf from '@tensorflow/tfjs';
import { attention } from '../nn/attention';
import { batchMatMul, Kernels } from '../nn/layers';
import { KVBlock, KVCache } from './cache';

/** The additive mask value for positions a query may not see (PyTorch's finfo(float32).min, as upstream). */
export const MASKED = -3.4028234663852886e38;

/** Positions of the new tokens from the mask over all positions, as upstream: cumsum - 1, padding at 1. */
export function positionsFromMask(fullMask: number[][], past: number): number[][] {
  return fullMask.map((row) => {
    let count = 0;
    const pos = row.map((m) => (m ? count++ : 1));
    return pos.slice(past);
  });
}

/**
 * The additive mask of the new positions, [B * copies, 1, T, past + T], from `fullMask` (1 = token,
 * 0 = padding) over the past and new positions of each row; undefined where none is needed.
 * Query t (absolute past + t) sees key j when j <= past + t and j is not padding. A single new
 * position with no padding anywhere sees everything: no mask (saves ops on every decode step).
 * Attention runs per kv-head group ([B * KV] groups), so each batch row's mask is written once per
 * group here (a tf.tile per layer costs more than the attention on wasm); one row broadcasts as it is.
 * `groups`: kv heads (1 for beams: beamAttention adds one row per beam to [B*K, heads, T, Tk] scores).
 */
export function createAttentionMask(fullMask: number[][], past: number, groups: number): tf.Tensor4D | undefined {
  const B = fullMask.length;
  const Tk = fullMask[0].length;
  const T = Tk - past;
  if (T <= 1 && !fullMask.some((row) => row.includes(0))) return undefined;
  const copies = B === 1 ? 1 : groups;
  const maskData = new Float32Array(B * copies * T * Tk);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const row = maskData.subarray((b * copies * T + t) * Tk, (b * copies * T + t + 1) * Tk);
      for (let j = 0; j < Tk; j++) row[j] = j <= past + t && fullMask[b][j] ? 0 : MASKED;
      for (let c = 1; c < copies; c++) maskData.copyWithin(((b * copies + c) * T + t) * Tk, (b * copies * T + t) * Tk, (b * copies * T + t + 1) * Tk);
    }
  }
  return tf.tensor4d(maskData, [B * copies, 1, T, Tk]);
}

/**
 * Appends one layer's new keys and values [B, KV, T, hd] (keys rotated) to `cache` and attends with
 * the queries q [B, H, T, hd] (rotated) over every cached position. `mask` from createAttentionMask.
 * Returns the output [B, H, T, hd] and the probabilities [B, H, T, Tk], the latter as a function (a
 * tap reads them; the reshape is not paid on every step).
 */
export function cachedAttention(
  kernels: Kernels,
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  cache: KVCache,
  layer: number,
  mask: tf.Tensor4D | undefined,
): { out: tf.Tensor4D; probs: () => tf.Tensor4D } {
  const [B, H, T, hd] = q.shape;
  const KV = k.shape[1];
  if (cache.numBeams > 1) {
    const { prompt, beams } = cache.appendBeams(layer, k, v);
    const { out, probs } = beamAttention(q, prompt, beams, cache.numBeams, KV, mask);
    return { out, probs: () => probs };
  }
  const G = H / KV;
  const { keys, values } = cache.append(layer, k, v);
  const Tk = keys.reduce((n, b) => n + b.shape[2], 0);
  const groups = (blocks: tf.Tensor4D[]) => blocks.map((b) => b.reshape([B * KV, b.shape[2], hd]) as tf.Tensor3D);
  // Query heads grouped under their kv head: [B*KV, G*T, hd] against [B*KV, Tk, hd], no key repeat.
  // The mask comes per group already ([B * KV, 1, T, Tk], or [1, 1, T, Tk] for one row).
  const { out, probs } = attention(kernels, q.reshape([B * KV, G * T, hd]) as tf.Tensor3D, groups(keys), groups(values), 1 / Math.sqrt(hd), G, mask);
  return { out: out.reshape([B, H, T, hd]) as tf.Tensor4D, probs: () => probs.reshape([B, H, T, Tk]) as tf.Tensor4D };
}

/**
 * A decode step of independent sequences (continuous batching): row b of q [B, H, 1, hd] and of the new
 * keys/values [B, KV, 1, hd] goes to its own cache `caches[b]` (one row each, any length), with no mask
 * (a single new position sees all of its row's past). Returns the output [B, H, 1, hd].
 * With single-kernel products (tensorflow) a row's query heads, grouped under their kv heads
 * [1, KV, G, hd], multiply its cache's blocks [1, KV, T, hd] as they are (BatchMatMulV2 takes any rank):
 * no reshape per block and one scaling for all rows; each op is a call into libtensorflow, and a row
 * costs ~10 of them a layer instead of ~17 (the per-row part of a batched step).
 */
export function rowsAttention(kernels: Kernels, q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, caches: KVCache[], layer: number): tf.Tensor4D {
  const B = caches.length;
  if (B === 1) return cachedAttention(kernels, q, k, v, caches[0], layer, undefined).out;
  const [ks, vs] = [k, v].map((x) => tf.split(x, B, 0) as tf.Tensor4D[]);
  if (!kernels.singleKernelMatMul) {
    const qs = tf.split(q, B, 0) as tf.Tensor4D[];
    return tf.concat(caches.map((cache, b) => cachedAttention(kernels, qs[b], ks[b], vs[b], cache, layer, undefined).out)) as tf.Tensor4D;
  }
  const [, H, , hd] = q.shape;
  const KV = k.shape[1];
  const qs = tf.split(tf.mul(q, 1 / Math.sqrt(hd)).reshape([B, KV, H / KV, hd]), B, 0) as tf.Tensor4D[];
  const outs = caches.map((cache, b) => {
    const { keys, values } = cache.append(layer, ks[b], vs[b]);
    const scores = keys.map((block) => batchMatMul(qs[b], block, true));
    const probs = tf.softmax(scores.length === 1 ? scores[0] : tf.concat(scores, 3));
    if (values.length === 1) return batchMatMul(probs, values[0]);
    const parts = tf.split(
      probs,
      values.map((block) => block.shape[2]),
      3,
    ) as tf.Tensor4D[];
    return tf.addN(parts.map((p, i) => batchMatMul(p, values[i])));
  });
  return tf.concat(outs).reshape([B, H, 1, hd]) as tf.Tensor4D;
}

/**
 * Attention of beams over a prompt they share (see KVCache.beams): q [B*K, H, T, hd] (rotated); the
 * prompt's keys/values [B, KV, P, hd], the beams' own [B*K, KV, t, hd]. One softmax over both parts.
 * For the prompt part the K beams' queries of a batch row ride along as extra queries of its kv
 * heads ([B*KV, K*G*T, hd] against [B*KV, P, hd]: the prompt is read once per row, not per beam).
 * `mask` [B*K, 1, T, P + t] (optional) is additive.
 */
export function beamAttention(
  q: tf.Tensor4D,
  prompt: KVBlock | null,
  beams: KVBlock,
  K: number,
  KV: number,
  mask: tf.Tensor4D | undefined,
): { out: tf.Tensor4D; probs: tf.Tensor4D } {
  const [BK, H, T, hd] = q.shape;
  const B = BK / K;
  const G = H / KV;
  const t = beams.keys.shape[2];
  const P = prompt?.keys.shape[2] ?? 0;
  const scaled = tf.mul(q, 1 / Math.sqrt(hd)) as tf.Tensor4D;
  // [B*K*KV, G*T, .] rows: beam-major, the layout of the beams' own block.
  const qBeams = scaled.reshape([BK * KV, G * T, hd]) as tf.Tensor3D;
  const parts: tf.Tensor3D[] = [];
  if (prompt !== null) {
    const qPrompt = scaled
      .reshape([B, K, KV, G * T, hd])
      .transpose([0, 2, 1, 3, 4])
      .reshape([B * KV, K * G * T, hd]) as tf.Tensor3D;
    const s = tf.matMul(qPrompt, prompt.keys.reshape([B * KV, P, hd]) as tf.Tensor3D, false, true);
    parts.push(
      s
        .reshape([B, KV, K, G * T, P])
        .transpose([0, 2, 1, 3, 4])
        .reshape([BK * KV, G * T, P]) as tf.Tensor3D,
    );
  }
  const sBeams = tf.matMul(qBeams, beams.keys.reshape([BK * KV, t, hd]) as tf.Tensor3D, false, true);
  let scores: tf.Tensor = parts.length ? tf.concat([...parts, sBeams], 2) : sBeams;
  if (mask !== undefined) scores = tf.add(scores.reshape([BK, KV * G, T, P + t]), mask);
  const probs = tf.softmax(scores.reshape([BK * KV, G * T, P + t]), -1) as tf.Tensor3D;
  const [pPrompt, pBeams] = prompt !== null ? tf.split(probs, [P, t], 2) : [null, probs];
  let out = tf.matMul(pBeams as tf.Tensor3D, beams.values.reshape([BK * KV, t, hd]) as tf.Tensor3D);
  if (prompt !== null) {
    const pp = pPrompt!
      .reshape([B, K, KV, G * T, P])
      .transpose([0, 2, 1, 3, 4])
      .reshape([B * KV, K * G * T, P]) as tf.Tensor3D;
    const o = tf.matMul(pp, prompt.values.reshape([B * KV, P, hd]) as tf.Tensor3D);
    out = tf.add(
      out,
      o
        .reshape([B, KV, K, G * T, hd])
        .transpose([0, 2, 1, 3, 4])
        .reshape([BK * KV, G * T, hd]),
    );
  }
  return { out: out.reshape([BK, H, T, hd]) as tf.Tensor4D, probs: probs.reshape([BK, H, T, P + t]) as tf.Tensor4D };
}

// Scaled dot-product attention and the head split/merge around it, shared by InternViT, PVC's temporal
// attention and InternLM2.
import * as tf from '@tensorflow/tfjs';
import { batchMatMul, Kernels } from './layers';

/**
 * Scaled dot-product attention over Q groups: for each i, softmax(q_i k_i^T * scale + mask) v_i with
 * q_i [R, d] (R = G * Tq query rows sharing the keys: G heads of a GQA group, or 1 head), k_i, v_i
 * [Tk, d]. `mask` [Tq, Tk] or [Q, 1, Tq, Tk]-broadcastable per group is added to the scores viewed as
 * [Q, G, Tq, Tk]. Returns the output [Q, R, d] and the probabilities [Q, R, Tk].
 *
 * Keys and values may come as consecutive blocks along Tk (a cache's blocks, see `appendBlock`): the
 * scores of the blocks are joined before the softmax and the output is the sum of each block's share.
 *
 * With `kernels.attentionPer2DGroup` (wasm, where only a plain 2-D matMul without transposes is fast:
 * batched or transposed ones run ~10x slower) and large score matrices, each group is two 2-D matMuls
 * against an explicitly transposed key block; otherwise one batched matMul does all groups.
 */
export function attention(
  kernels: Kernels,
  q: tf.Tensor3D,
  k: tf.Tensor3D | tf.Tensor3D[],
  v: tf.Tensor3D | tf.Tensor3D[],
  scale: number,
  queriesPerGroup = 1,
  mask?: tf.Tensor,
): { out: tf.Tensor3D; probs: tf.Tensor3D } {
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
  if (kernels.attentionPer2DGroup && R * Tk >= 4096) {
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
  // At most two score-sized tensors are alive at once (a chunk of a long prompt: [heads, chunk, L]): the
  // blocks' scores until they are joined, the joined ones until masked, the masked ones until the
  // probabilities exist; then one block's slice of the probabilities at a time.
  const probs = tf.tidy(() => {
    const scaled = tf.mul(q, scale) as tf.Tensor3D;
    const parts = keys.map((kb) => batchMatMul(scaled, kb, true));
    const scores = parts.length === 1 ? parts[0] : tf.concat(parts, 2);
    if (parts.length > 1) tf.dispose(parts);
    const masked = tf.tidy(() => addMask(scores));
    if (masked !== scores) scores.dispose();
    return tf.softmax(masked, -1) as tf.Tensor3D;
  });
  if (values.length === 1) return { out: batchMatMul(probs, values[0]), probs };
  let start = 0;
  const products = values.map((vb) => {
    const n = vb.shape[1];
    const product = tf.tidy(() => batchMatMul(tf.slice(probs, [0, 0, start], [Q, R, n]), vb));
    start += n;
    return product;
  });
  return { out: tf.addN(products), probs };
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

/** The keys and values of consecutive positions: one block of a cache. */
export interface Block<T extends tf.Tensor = tf.Tensor> {
  keys: T;
  values: T;
}

/** The blocks joined along `axis` (positions) into one new kept block; the blocks given stay as they are. */
export function joinBlocks<T extends tf.Tensor>(blocks: Block<T>[], axis: number): Block<T> {
  if (blocks.length === 1) return shareBlock(blocks[0]);
  const cat = (parts: T[]) => tf.keep(tf.concat(parts, axis)) as T;
  return { keys: cat(blocks.map((b) => b.keys)), values: cat(blocks.map((b) => b.values)) };
}

/** A kept block sharing `block`'s data (tfjs clones share it: nothing is copied), for a cache's fork. */
export function shareBlock<T extends tf.Tensor>(block: Block<T>): Block<T> {
  return { keys: tf.keep(block.keys.clone()) as T, values: tf.keep(block.values.clone()) as T };
}

export function disposeBlocks(blocks: Block[]): void {
  for (const b of blocks) tf.dispose([b.keys, b.values]);
}

/**
 * Appends a kept block to a cache's blocks (in position order along `axis`), then merges them like a
 * binary counter, up to `maxLength` positions a block: while the last block is at least as long as
 * the one before and the two together fit, they are joined. One growing block would be copied whole
 * at every append (every frame of a live video, every prefill chunk); this way an append copies at
 * most `maxLength` positions, a position is copied about log2(maxLength / append) times in all, and
 * there are about length / maxLength + log2(maxLength / append) blocks. Attention reads the blocks as
 * they are (see `attention`).
 */
export function appendBlock<T extends tf.Tensor>(blocks: Block<T>[], block: Block<T>, axis: number, maxLength = Infinity): void {
  blocks.push(block);
  const length = (i: number) => blocks[i].keys.shape[axis] as number;
  for (let n = blocks.length; n > 1 && length(n - 1) >= length(n - 2) && length(n - 1) + length(n - 2) <= maxLength; n = blocks.length) {
    const pair = blocks.splice(-2);
    blocks.push(joinBlocks(pair, axis));
    disposeBlocks(pair);
  }
}

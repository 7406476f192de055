// The KV cache of InternLM2: per layer, the rotated keys and the values of the positions seen so far,
// and the attention mask over them; for beam search the prompt is shared by the beams of a row.
import * as tf from '@tensorflow/tfjs';
import { appendBlock, Block, disposeBlocks, joinBlocks, shareBlock } from '../nn/attention';

/** One layer's cached keys and values, [B, kv_heads, T, head_dim] each (keys rotated). */
export type KVBlock = Block<tf.Tensor4D>;

/**
 * Most positions a main block grows to by merging. An append copies at most this many: 16 MiB of keys
 * and values a layer for InternLM2-7B (8 KV heads x 128 x 4 bytes x 2 per position), 512 MiB over its
 * 32 layers. A decode step reads about T / MAX_BLOCK + log2 blocks (5 or 6 at 9k positions).
 */
const MAX_BLOCK = 2048;

/** Positions are axis 2 of a block. */
const join = (blocks: KVBlock[]) => joinBlocks(blocks, 2);

/**
 * Per-layer keys and values of the positions seen so far. tfjs cannot write into a tensor, so one
 * growing block would be copied whole at every decode step (InternLM2-7B layer on tensorflow, 2 cores,
 * 4096 positions: 3.3 ms of concat per step, 0.5 ms with the tail below, against ~43 ms of matVecs),
 * and at every prefill chunk or live frame (a live session at 9k positions of InternLM2-7B would copy
 * 2.3 GB per frame). So a layer keeps a few main blocks and a short tail. A single new position joins
 * the tail, which becomes a main block when it reaches `tailLimit` positions; several positions at
 * once (a prefill chunk, a frame) become a main block with the tail. Main blocks merge like a binary
 * counter (`appendBlock`) up to MAX_BLOCK positions: a position is copied a few times in all, not once
 * per chunk, and an append copies at most MAX_BLOCK positions. Attention runs over every block.
 */
export class KVCache {
  /** Per layer, main blocks in position order (merged by appendBlock: none longer than the one before). */
  private readonly main: KVBlock[][];
  private readonly tail: (KVBlock | null)[];
  /**
   * Beam search (after `shareWithBeams`): `main` holds the prompt of each batch row once, [B, ...], and
   * stays as it is; every later position goes to `beams`, [B * numBeams, ...] in beam-major order
   * (row b * numBeams + k is beam k of batch row b), which `reorder` gathers by beam index each step.
   * So the prompt (usually nearly all of the cache: a video is thousands of positions, an answer tens)
   * is neither copied per beam nor per step; a step copies only the generated positions, as upstream's
   * cache reorder copies everything.
   */
  private readonly beams: (KVBlock | null)[];
  /** Beams per batch row (1: no beam search). */
  numBeams = 1;
  /** Attention mask over the cached positions (1 = real token, 0 = padding), per batch row. */
  mask: number[][];

  constructor(
    layers: number,
    batch: number,
    readonly tailLimit = 256,
  ) {
    this.main = Array.from({ length: layers }, () => []);
    this.tail = new Array(layers).fill(null);
    this.beams = new Array(layers).fill(null);
    this.mask = Array.from({ length: batch }, () => []);
  }

  get length(): number {
    return this.mask[0]?.length ?? 0;
  }

  /** Appends this step's keys/values for a layer; returns the layer's blocks in position order. */
  append(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { keys: tf.Tensor4D[]; values: tf.Tensor4D[] } {
    if (this.numBeams > 1) throw new Error('KVCache.append: a cache shared by beams takes appendBeams');
    const main = this.main[layer];
    const tail = this.tail[layer];
    const parts = tail ? [tail, { keys: k, values: v }] : [{ keys: k, values: v }];
    const tailLength = tail ? tail.keys.shape[2] : 0;
    if (main.length === 0 || k.shape[2] > 1 || tailLength + 1 >= this.tailLimit) {
      appendBlock(main, join(parts), 2, MAX_BLOCK);
      this.tail[layer] = null;
    } else {
      this.tail[layer] = join(parts);
    }
    if (tail) disposeBlocks([tail]);
    const blocks = this.tail[layer] ? [...main, this.tail[layer]!] : main;
    return { keys: blocks.map((b) => b.keys), values: blocks.map((b) => b.values) };
  }

  /** Main blocks per layer (at most about log2 of the positions over the chunk size). */
  blockCount(layer = 0): number {
    return this.main[layer].length;
  }

  /**
   * Turns a prefilled cache of B rows into one for B * numBeams beams that share each row's prompt
   * (see `beams`). Only the mask grows; no key or value is copied.
   */
  shareWithBeams(numBeams: number): void {
    if (this.numBeams !== 1) throw new Error('KVCache.shareWithBeams: the cache is already shared by beams');
    if (!Number.isSafeInteger(numBeams) || numBeams < 1) throw new Error(`numBeams ${numBeams}: expected an integer >= 1`);
    // The prompt as one block per layer, once: the beams' attention reads it as one part.
    this.main.forEach((main, layer) => {
      const tail = this.tail[layer];
      const blocks = tail ? [...main, tail] : main;
      if (blocks.length > 1) {
        this.main[layer] = [join(blocks)];
        disposeBlocks(blocks);
      } else {
        this.main[layer] = [...blocks];
      }
      this.tail[layer] = null;
    });
    this.numBeams = numBeams;
    this.mask = this.mask.flatMap((row) => Array.from({ length: numBeams }, () => [...row]));
  }

  /** Beam search: beam i continues the beam `rows[i]` (indices into the B * numBeams beams). */
  reorder(rows: number[]): void {
    const BK = this.mask.length;
    if (rows.length !== BK || rows.some((r) => !Number.isInteger(r) || r < 0 || r >= BK)) {
      throw new Error(`KVCache.reorder: expected ${BK} beam indices in 0..${BK - 1}, got [${rows}]`);
    }
    this.mask = rows.map((r) => [...this.mask[r]]);
    if (rows.every((r, i) => r === i)) return;
    const index = tf.tensor1d(rows, 'int32');
    this.beams.forEach((block, layer) => {
      if (block === null) return;
      this.beams[layer] = { keys: tf.keep(tf.gather(block.keys, index)), values: tf.keep(tf.gather(block.values, index)) };
      tf.dispose([block.keys, block.values]);
    });
    index.dispose();
  }

  /**
   * Beam search: appends the beams' new keys/values [B * numBeams, kv_heads, T, head_dim]; returns the
   * shared prompt block [B, ...] and the beams' block.
   */
  appendBeams(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { prompt: KVBlock | null; beams: KVBlock } {
    const old = this.beams[layer];
    this.beams[layer] =
      old === null
        ? { keys: tf.keep(k.clone()), values: tf.keep(v.clone()) }
        : { keys: tf.keep(tf.concat([old.keys, k], 2)), values: tf.keep(tf.concat([old.values, v], 2)) };
    if (old) tf.dispose([old.keys, old.values]);
    return { prompt: this.main[layer][0] ?? null, beams: this.beams[layer]! };
  }

  /**
   * A cache of the same positions that shares their keys and values (tfjs clones share data): what is
   * appended to either afterwards leaves the other as it was. For a session that answers from a fork
   * of its prompt and keeps the prompt for later (chat/live.ts).
   */
  fork(): KVCache {
    if (this.numBeams > 1) throw new Error('KVCache.fork: a cache shared by beams cannot be forked');
    const copy = new KVCache(this.main.length, this.mask.length, this.tailLimit);
    this.main.forEach((blocks, l) => (copy.main[l] = blocks.map((b) => shareBlock(b))));
    this.tail.forEach((b, l) => (copy.tail[l] = b && shareBlock(b)));
    copy.mask = this.mask.map((row) => [...row]);
    return copy;
  }

  dispose(): void {
    disposeBlocks([...this.main.flat(), ...this.tail, ...this.beams].filter((b): b is KVBlock => b !== null));
    this.main.forEach((blocks) => (blocks.length = 0));
    this.tail.fill(null);
    this.beams.fill(null);
  }
}

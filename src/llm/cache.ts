// The KV cache of InternLM2: per layer, the rotated keys and the values of the positions seen so far,
// and the attention mask over them; for beam search the prompt is shared by the beams of a row.
import * as tf from '@tensorflow/tfjs';

/** One layer's cached keys and values, [B, kv_heads, T, head_dim] each (keys rotated). */
export interface KVBlock {
  keys: tf.Tensor4D;
  values: tf.Tensor4D;
}

/**
 * Per-layer keys and values of the positions seen so far. tfjs cannot write into a tensor, so one
 * growing block would be copied whole at every decode step (InternLM2-7B layer on tensorflow, 2 cores,
 * 4096 positions: 3.3 ms of concat per step, 0.5 ms with the tail below, against ~43 ms of matVecs).
 * So a layer keeps a main block and a short tail: a single new position joins the tail; the
 * tail is folded into the main block when it reaches `tailLimit` positions, and so is everything when
 * several positions arrive at once (a prefill). A step copies at most `tailLimit` positions plus, on
 * average, T / tailLimit. Attention runs over both blocks.
 */
export class KVCache {
  private readonly main: (KVBlock | null)[];
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
    this.main = new Array(layers).fill(null);
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
    const join = (parts: tf.Tensor4D[]) => tf.keep(parts.length === 1 ? parts[0].clone() : tf.concat(parts, 2)) as tf.Tensor4D;
    const old = [main, tail].filter((b): b is KVBlock => b !== null);
    const tailLength = tail ? tail.keys.shape[2] : 0;
    if (main === null || k.shape[2] > 1 || tailLength + 1 >= this.tailLimit) {
      this.main[layer] = { keys: join([...old.map((b) => b.keys), k]), values: join([...old.map((b) => b.values), v]) };
      this.tail[layer] = null;
    } else {
      this.tail[layer] = { keys: join(tail ? [tail.keys, k] : [k]), values: join(tail ? [tail.values, v] : [v]) };
      if (tail) tf.dispose([tail.keys, tail.values]);
    }
    if (this.main[layer] !== main) old.forEach((b) => tf.dispose([b.keys, b.values]));
    const blocks = [this.main[layer], this.tail[layer]].filter((b): b is KVBlock => b !== null);
    return { keys: blocks.map((b) => b.keys), values: blocks.map((b) => b.values) };
  }

  /**
   * Turns a prefilled cache of B rows into one for B * numBeams beams that share each row's prompt
   * (see `beams`). Only the mask grows; no key or value is copied.
   */
  shareWithBeams(numBeams: number): void {
    if (this.numBeams !== 1) throw new Error('KVCache.shareWithBeams: the cache is already shared by beams');
    if (!Number.isSafeInteger(numBeams) || numBeams < 1) throw new Error(`numBeams ${numBeams}: expected an integer >= 1`);
    this.main.forEach((main, layer) => {
      const tail = this.tail[layer];
      if (main === null || tail === null) return;
      this.main[layer] = {
        keys: tf.keep(tf.concat([main.keys, tail.keys], 2)) as tf.Tensor4D,
        values: tf.keep(tf.concat([main.values, tail.values], 2)) as tf.Tensor4D,
      };
      this.tail[layer] = null;
      tf.dispose([main.keys, main.values, tail.keys, tail.values]);
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
    return { prompt: this.main[layer], beams: this.beams[layer]! };
  }

  /**
   * A cache of the same positions that shares their keys and values (tfjs clones share data): what is
   * appended to either afterwards leaves the other as it was. For a session that answers from a fork
   * of its prompt and keeps the prompt for later (chat/live.ts).
   */
  fork(): KVCache {
    if (this.numBeams > 1) throw new Error('KVCache.fork: a cache shared by beams cannot be forked');
    const copy = new KVCache(this.main.length, this.mask.length, this.tailLimit);
    const share = (b: KVBlock | null): KVBlock | null => b && { keys: tf.keep(b.keys.clone()), values: tf.keep(b.values.clone()) };
    this.main.forEach((b, l) => (copy.main[l] = share(b)));
    this.tail.forEach((b, l) => (copy.tail[l] = share(b)));
    copy.mask = this.mask.map((row) => [...row]);
    return copy;
  }

  dispose(): void {
    for (const b of [...this.main, ...this.tail, ...this.beams]) if (b) tf.dispose([b.keys, b.values]);
    this.main.fill(null);
    this.tail.fill(null);
    this.beams.fill(null);
  }
}

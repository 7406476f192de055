// InternLM2 (the LLM of InternVL2-8B / PVC-InternVL2-8B), with its KV cache.
//
//   ids or input embeddings [B, T, D]
//   -> L x { h += wo(attn(rmsnorm(h)));  h += w2(silu(w1 x) * w3 x) with x = rmsnorm(h) }
//   -> rmsnorm -> output head -> logits [B, T, V]
//
// Attention is grouped-query: kv head h serves query heads h*G .. h*G+G-1 (G = heads / kv_heads).
// Queries and keys are rotated (RoPE, rotate_half convention) before the keys enter the cache.
import * as tf from '@tensorflow/tfjs';
import { LLMConfig } from '../config';
import { Weights } from '../io/weights';
import { attention, mergeHeads, splitHeads } from '../nn/attention';
import { Kernels, Linear, RMSNorm, silu, Tap } from '../nn/layers';
import { runSync, Steps } from '../event_loop';

/** The additive mask value for positions a query may not see (PyTorch's finfo(float32).min, as upstream). */
const MASKED = -3.4028234663852886e38;

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
  tables(positions: number[][]): { cos: tf.Tensor4D; sin: tf.Tensor4D } {
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
function applyRotary(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  return tf.add(tf.mul(x, cos), tf.mul(tf.concat([x2, x1], 3), sin)) as tf.Tensor4D;
}

/** One layer's cached keys and values, [B, kv_heads, T, head_dim] each (keys rotated). */
interface KVBlock {
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

  dispose(): void {
    for (const b of [...this.main, ...this.tail, ...this.beams]) if (b) tf.dispose([b.keys, b.values]);
    this.main.fill(null);
    this.tail.fill(null);
    this.beams.fill(null);
  }
}

/**
 * Attention of beams over a prompt they share (see KVCache.beams): q [B*K, H, T, hd] (rotated); the
 * prompt's keys/values [B, KV, P, hd], the beams' own [B*K, KV, t, hd]. One softmax over both parts.
 * For the prompt part the K beams' queries of a batch row ride along as extra queries of its kv
 * heads ([B*KV, K*G*T, hd] against [B*KV, P, hd]: the prompt is read once per row, not per beam).
 * `mask` [B*K, 1, T, P + t] (optional) is additive.
 */
function beamAttention(
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

class Attention {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;

  constructor(
    w: Weights,
    readonly prefix: string,
    readonly config: LLMConfig,
    private readonly kernels: Kernels,
  ) {
    this.q = new Linear(w, `${prefix}.q`, false, kernels);
    this.k = new Linear(w, `${prefix}.k`, false, kernels);
    this.v = new Linear(w, `${prefix}.v`, false, kernels);
    this.o = new Linear(w, `${prefix}.o`, false, kernels);
  }

  forward(x: tf.Tensor3D, rope: { cos: tf.Tensor4D; sin: tf.Tensor4D }, mask: tf.Tensor4D | undefined, cache: KVCache, layer: number, tap?: Tap): tf.Tensor3D {
    const { num_attention_heads: H, num_key_value_heads: KV, head_dim: hd } = this.config;
    const [B, T] = x.shape;
    const G = H / KV;
    const q = applyRotary(splitHeads(this.q.forward(x), H), rope.cos, rope.sin);
    const k = applyRotary(splitHeads(this.k.forward(x), KV), rope.cos, rope.sin);
    const v = splitHeads(this.v.forward(x), KV);
    if (cache.numBeams > 1) {
      const { prompt, beams } = cache.appendBeams(layer, k, v);
      const { out, probs } = beamAttention(q, prompt, beams, cache.numBeams, KV, mask);
      if (tap) tap(`${this.prefix}.probs`, probs);
      return this.o.forward(mergeHeads(out));
    }
    const { keys, values } = cache.append(layer, k, v);
    const Tk = keys.reduce((n, b) => n + b.shape[2], 0);
    const groups = (blocks: tf.Tensor4D[]) => blocks.map((b) => b.reshape([B * KV, b.shape[2], hd]) as tf.Tensor3D);
    // Query heads grouped under their kv head: [B*KV, G*T, hd] against [B*KV, Tk, hd], no key repeat.
    // The mask comes per group already ([B * KV, 1, T, Tk], or [1, 1, T, Tk] for one row: see forwardSteps).
    const { out, probs } = attention(this.kernels, q.reshape([B * KV, G * T, hd]) as tf.Tensor3D, groups(keys), groups(values), 1 / Math.sqrt(hd), G, mask);
    if (tap) tap(`${this.prefix}.probs`, probs.reshape([B, H, T, Tk]));
    return this.o.forward(mergeHeads(out.reshape([B, H, T, hd]) as tf.Tensor4D));
  }
}

class MLP {
  readonly gate: Linear;
  readonly up: Linear;
  readonly down: Linear;

  constructor(w: Weights, prefix: string, kernels: Kernels) {
    this.gate = new Linear(w, `${prefix}.gate`, false, kernels);
    this.up = new Linear(w, `${prefix}.up`, false, kernels);
    this.down = new Linear(w, `${prefix}.down`, false, kernels);
  }

  forward(x: tf.Tensor3D): tf.Tensor3D {
    return this.down.forward(tf.mul(silu(this.gate.forward(x)), this.up.forward(x)));
  }
}

class DecoderLayer {
  static readonly TAPS = ['attn.probs', 'attn.out', 'mlp.out', 'out'] as const;
  readonly attnNorm: RMSNorm;
  readonly attn: Attention;
  readonly mlpNorm: RMSNorm;
  readonly mlp: MLP;

  constructor(
    w: Weights,
    readonly prefix: string,
    readonly index: number,
    config: LLMConfig,
    kernels: Kernels,
  ) {
    this.attnNorm = new RMSNorm(w, `${prefix}.attn_norm`, config.rms_norm_eps);
    this.attn = new Attention(w, `${prefix}.attn`, config, kernels);
    this.mlpNorm = new RMSNorm(w, `${prefix}.mlp_norm`, config.rms_norm_eps);
    this.mlp = new MLP(w, `${prefix}.mlp`, kernels);
  }

  tapNames(): string[] {
    return DecoderLayer.TAPS.map((t) => `${this.prefix}.${t}`);
  }

  forward(h: tf.Tensor3D, rope: { cos: tf.Tensor4D; sin: tf.Tensor4D }, mask: tf.Tensor4D | undefined, cache: KVCache, tap?: Tap): tf.Tensor3D {
    const attnOut = this.attn.forward(this.attnNorm.forward(h), rope, mask, cache, this.index, tap);
    if (tap) tap(`${this.prefix}.attn.out`, attnOut);
    h = tf.add(h, attnOut);
    const mlpOut = this.mlp.forward(this.mlpNorm.forward(h));
    if (tap) tap(`${this.prefix}.mlp.out`, mlpOut);
    const out = tf.add(h, mlpOut) as tf.Tensor3D;
    if (tap) tap(`${this.prefix}.out`, out);
    return out;
  }
}

export interface ForwardOptions {
  /** 1 = token, 0 = padding, for the new positions of each row (default all 1). */
  attentionMask?: number[][];
  /** Positions of the new tokens; default: from the mask, as upstream (cumsum - 1, padding at 1). */
  positionIds?: number[][];
  /** Compute logits for the last position of each row only (generation). */
  lastOnly?: boolean;
  tap?: Tap;
}

export interface PrefillOptions {
  /** 1 = token, 0 = padding, per row (default all 1). */
  attentionMask?: number[][];
  /** Positions run through all layers at once (default: the whole prompt). */
  chunkSize?: number;
  tap?: Tap;
}

export class InternLM2 {
  readonly embed: tf.Tensor2D;
  readonly layers: DecoderLayer[];
  readonly norm: RMSNorm;
  readonly output: Linear;
  readonly rotary: RotaryEmbedding;

  constructor(
    w: Weights,
    readonly config: LLMConfig,
    kernels: Kernels,
  ) {
    this.embed = w.get('llm.embed.weight', 2) as tf.Tensor2D;
    this.layers = Array.from({ length: config.num_hidden_layers }, (_, i) => new DecoderLayer(w, `llm.layers.${i}`, i, config, kernels));
    this.norm = new RMSNorm(w, 'llm.norm', config.rms_norm_eps);
    this.output = new Linear(w, 'llm.output', false, kernels);
    this.rotary = new RotaryEmbedding(config);
  }

  tapNames(): string[] {
    return ['llm.embeds', ...this.layers.flatMap((l) => l.tapNames()), 'llm.norm', 'llm.logits'];
  }

  newCache(batch: number, tailLimit?: number): KVCache {
    return new KVCache(this.config.num_hidden_layers, batch, tailLimit);
  }

  /** Token embeddings for ids [B, T]: [B, T, D]. */
  embedTokens(ids: number[][]): tf.Tensor3D {
    const V = this.config.vocab_size;
    for (const row of ids) {
      const bad = row.find((id) => !Number.isInteger(id) || id < 0 || id >= V);
      if (bad !== undefined) throw new Error(`token id ${bad} is outside the vocabulary (0..${V - 1})`);
    }
    return tf.tidy(() => tf.gather(this.embed, tf.tensor2d(ids, [ids.length, ids[0].length], 'int32')) as unknown as tf.Tensor3D);
  }

  /**
   * Runs new positions through the decoder, appending to `cache`; returns logits [B, T, V] (or
   * [B, 1, V] with lastOnly). The caller owns the logits; everything else is freed.
   */
  forward(embeds: tf.Tensor3D, cache: KVCache, options: ForwardOptions = {}): tf.Tensor3D {
    return runSync(this.forwardSteps(embeds, cache, { ...options, logits: options.lastOnly ? 'last' : 'all' }))!;
  }

  /**
   * The prompt's positions in chunks of `chunkSize`, each through every layer (appending to `cache`)
   * before the next: attention then holds [heads, chunk, L] scores and the MLP [chunk, intermediate]
   * activations, never [heads, L, L]. Every position attends to the same keys as in one pass, so the
   * result is the same. Returns the logits of the last position [B, 1, V]; pauses after each layer.
   */
  *prefillSteps(embeds: tf.Tensor3D, cache: KVCache, options: PrefillOptions = {}): Steps<tf.Tensor3D> {
    const [B, T] = embeds.shape;
    const chunk = Math.max(1, Math.min(options.chunkSize ?? T, T));
    // Dynamic NTK scaling reads the whole length once, as a single pass over the prompt would.
    this.rotary.update(cache.length + T);
    for (let start = 0; ; start += chunk) {
      const n = Math.min(chunk, T - start);
      const last = start + n >= T;
      const part = n === T ? embeds : (tf.slice(embeds, [0, start, 0], [B, n, -1]) as tf.Tensor3D);
      try {
        const attentionMask = options.attentionMask?.map((row) => row.slice(start, start + n));
        const logits = yield* this.forwardSteps(part, cache, { attentionMask, tap: options.tap, logits: last ? 'last' : 'none' });
        if (last) return logits!;
      } finally {
        if (part !== embeds) part.dispose();
      }
    }
  }

  /**
   * `forward` as steps: pauses after each layer. `logits`: for every position, the last of each row,
   * or none (null; a prefill chunk whose logits nobody reads).
   */
  *forwardSteps(
    embeds: tf.Tensor3D,
    cache: KVCache,
    options: Omit<ForwardOptions, 'lastOnly'> & { logits: 'all' | 'last' | 'none' },
  ): Steps<tf.Tensor3D | null> {
    const [B, T] = embeds.shape;
    if (embeds.shape[2] !== this.config.hidden_size) throw new Error(`input embeddings have width ${embeds.shape[2]}, expected ${this.config.hidden_size}`);
    if (cache.mask.length !== B) throw new Error(`KV cache holds ${cache.mask.length} rows, the input ${B}`);
    const newMask = options.attentionMask ?? Array.from({ length: B }, () => new Array(T).fill(1));
    if (newMask.length !== B || newMask.some((r) => r.length !== T)) throw new Error(`attentionMask must be [${B}, ${T}]`);
    const past = cache.length;
    const fullMask = cache.mask.map((row, b) => [...row, ...newMask[b]]);
    const positions =
      options.positionIds ??
      fullMask.map((row) => {
        let count = 0;
        const pos = row.map((m) => (m ? count++ : 1));
        return pos.slice(past);
      });
    this.rotary.update(past + T);
    const tap = options.tap;
    const rope = this.rotary.tables(positions);
    // Query t (absolute past + t) sees key j when j <= past + t and j is not padding. A single new
    // position with no padding anywhere sees everything: no mask (saves ops on every decode step).
    // Attention runs per kv-head group ([B * KV] groups), so each batch row's mask is written once per
    // group here (a tf.tile per layer costs more than the attention on wasm); one row broadcasts as it is.
    let mask: tf.Tensor4D | undefined;
    if (T > 1 || fullMask.some((row) => row.includes(0))) {
      const Tk = past + T;
      // (Beams take one row per beam: beamAttention adds it to [B*K, heads, T, Tk] scores.)
      const copies = B === 1 || cache.numBeams > 1 ? 1 : this.config.num_key_value_heads;
      const maskData = new Float32Array(B * copies * T * Tk);
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++) {
          const row = maskData.subarray((b * copies * T + t) * Tk, (b * copies * T + t + 1) * Tk);
          for (let j = 0; j < Tk; j++) row[j] = j <= past + t && fullMask[b][j] ? 0 : MASKED;
          for (let c = 1; c < copies; c++) maskData.copyWithin(((b * copies + c) * T + t) * Tk, (b * copies * T + t) * Tk, (b * copies * T + t + 1) * Tk);
        }
      }
      mask = tf.tensor4d(maskData, [B * copies, 1, T, Tk]);
    }
    let h = embeds;
    try {
      if (tap) tap('llm.embeds', h);
      for (const layer of this.layers) {
        // A scope per layer: its intermediates are freed before the next layer runs.
        const prev = h;
        h = tf.tidy(() => layer.forward(prev, rope, mask, cache, tap));
        if (prev !== embeds) prev.dispose();
        yield;
      }
      cache.mask = fullMask;
      if (options.logits === 'none') return null;
      return tf.tidy(() => {
        let x = options.logits === 'last' ? h.slice([0, T - 1, 0], [B, 1, -1]) : h;
        x = this.norm.forward(x);
        if (tap) tap('llm.norm', x);
        const out = this.output.forward(x);
        if (tap) tap('llm.logits', out);
        return out;
      });
    } finally {
      if (h !== embeds) h.dispose();
      tf.dispose([rope.cos, rope.sin, ...(mask ? [mask] : [])]);
    }
  }
}

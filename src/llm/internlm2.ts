// InternLM2, the LLM of InternVL2-8B / PVC-InternVL2-8B:
//
//   ids or input embeddings [B, T, D]
//   -> L x { h += wo(attn(rmsnorm(h)));  h += w2(silu(w1 x) * w3 x) with x = rmsnorm(h) }
//   -> rmsnorm -> output head -> logits [B, T, V]
//
// Attention is grouped-query: kv head h serves query heads h*G .. h*G+G-1 (G = heads / kv_heads).
// Queries and keys are rotated (RoPE, rotate_half convention: rope.ts) before the keys enter the KV
// cache (cache.ts); the masks and the attention over the cache are in base.ts.
import * as tf from '@tensorflow/tfjs';
import { LLMConfig } from '../config';
import { runSync, Steps } from '../event_loop';
import { HeldMatrix, Weights } from '../io/weights';
import { mergeHeads, splitHeads } from '../nn/attention';
import { Kernels, Linear, RMSNorm, silu, Tap } from '../nn/layers';
import { cachedAttention, createAttentionMask, positionsFromMask, rowsAttention } from './base';
import { KVCache } from './cache';
import { applyRotary, RopeTables, RotaryEmbedding } from './rope';

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

  /** `cache`: the batch's cache, or one cache per row (a decode step of independent sequences, see decodeRowsSteps). */
  forward(x: tf.Tensor3D, rope: RopeTables, mask: tf.Tensor4D | undefined, cache: KVCache | KVCache[], layer: number, tap?: Tap): tf.Tensor3D {
    const { num_attention_heads: H, num_key_value_heads: KV } = this.config;
    const q = applyRotary(splitHeads(this.q.forward(x), H), rope);
    const k = applyRotary(splitHeads(this.k.forward(x), KV), rope);
    const v = splitHeads(this.v.forward(x), KV);
    if (Array.isArray(cache)) return this.o.forward(mergeHeads(rowsAttention(this.kernels, q, k, v, cache, layer)));
    const { out, probs } = cachedAttention(this.kernels, q, k, v, cache, layer, mask);
    if (tap) tap(`${this.prefix}.probs`, probs());
    return this.o.forward(mergeHeads(out));
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

  /** Call inside tf.tidy. Each residual branch runs in a scope of its own, so its temporaries are freed before the next one runs. */
  forward(h: tf.Tensor3D, rope: RopeTables, mask: tf.Tensor4D | undefined, cache: KVCache | KVCache[], tap?: Tap): tf.Tensor3D {
    const x = h;
    const attnOut = tf.tidy(() => this.attn.forward(this.attnNorm.forward(x), rope, mask, cache, this.index, tap));
    if (tap) tap(`${this.prefix}.attn.out`, attnOut);
    h = tf.add(h, attnOut);
    const xa = h;
    const mlpOut = tf.tidy(() => this.mlp.forward(this.mlpNorm.forward(xa)));
    if (tap) tap(`${this.prefix}.mlp.out`, mlpOut);
    const out = tf.add(h, mlpOut) as tf.Tensor3D;
    if (tap) tap(`${this.prefix}.out`, out);
    return out;
  }
}

/**
 * A prefill chunk holds at most about this many bytes of one attention score tensor (two such are alive
 * at once, see `attention`): InternLM2-7B takes a 4683-position prompt in chunks of 112 positions, not
 * 512. Measured on 2 of its layers, peak RSS above the loaded model: 394 MB (chunks of 512: 1002 MB;
 * before attention freed its scores early, 2267 MB), the prefill ~10% slower.
 */
const PREFILL_SCORE_BYTES = 64 * 2 ** 20;

export interface ForwardOptions {
  /** 1 = token, 0 = padding, for the new positions of each row (default all 1). */
  attentionMask?: number[][];
  /** Compute logits for the last position of each row only (generation). */
  lastOnly?: boolean;
  tap?: Tap;
  /** The rotary state this sequence reads and grows (default: the model's own, see RotaryEmbedding). */
  rotary?: RotaryEmbedding;
}

export interface PrefillOptions {
  /** 1 = token, 0 = padding, per row (default all 1). */
  attentionMask?: number[][];
  /** Positions run through all layers at once (default: the whole prompt). */
  chunkSize?: number;
  tap?: Tap;
  /** As ForwardOptions.rotary. */
  rotary?: RotaryEmbedding;
}

/** One sequence of a decode step over independent sequences: its own cache (one row) and rotary state. */
export interface DecodeRow {
  cache: KVCache;
  rotary: RotaryEmbedding;
}

export class InternLM2 {
  /** [vocab, D], float32 or held as bfloat16 (src/io/weights.ts). */
  readonly embed: tf.Tensor2D | HeldMatrix;
  readonly layers: DecoderLayer[];
  readonly norm: RMSNorm;
  readonly output: Linear;
  readonly rotary: RotaryEmbedding;

  constructor(
    w: Weights,
    readonly config: LLMConfig,
    kernels: Kernels,
  ) {
    this.embed = w.matrix('llm.embed.weight');
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
    return tf.tidy(() => {
      const rows = tf.tensor2d(ids, [ids.length, ids[0].length], 'int32');
      return (this.embed instanceof HeldMatrix ? this.embed.gatherRows(rows) : tf.gather(this.embed, rows)) as tf.Tensor3D;
    });
  }

  /**
   * Runs new positions through the decoder, appending to `cache`; returns logits [B, T, V] (or
   * [B, 1, V] with lastOnly). The caller owns the logits; everything else is freed.
   */
  forward(embeds: tf.Tensor3D, cache: KVCache, options: ForwardOptions = {}): tf.Tensor3D {
    return runSync(this.forwardSteps(embeds, cache, { ...options, logits: options.lastOnly ? 'last' : 'all' }))!;
  }

  /**
   * The prompt's positions in chunks of `chunkSize` (fewer for a long prompt, see PREFILL_SCORE_BYTES), each through every layer (appending to `cache`)
   * before the next: attention then holds [heads, chunk, L] scores and the MLP [chunk, intermediate]
   * activations, never [heads, L, L]. Every position attends to the same keys as in one pass, so the
   * result is the same. Returns the logits of the last position [B, 1, V]; pauses after each layer.
   */
  *prefillSteps(embeds: tf.Tensor3D, cache: KVCache, options: PrefillOptions = {}): Steps<tf.Tensor3D> {
    const [B, T] = embeds.shape;
    // Without taps (which record the pass whole), a long prompt goes in shorter chunks: the attention
    // scores of a chunk [B, heads, chunk, positions] stay under PREFILL_SCORE_BYTES.
    const bound = options.tap ? T : Math.max(64, Math.floor(PREFILL_SCORE_BYTES / (4 * B * this.config.num_attention_heads * (cache.length + T))));
    const chunk = Math.max(1, Math.min(options.chunkSize ?? T, T, bound));
    // Dynamic NTK scaling reads the whole length once, as a single pass over the prompt would.
    (options.rotary ?? this.rotary).update(cache.length + T);
    for (let start = 0; ; start += chunk) {
      const n = Math.min(chunk, T - start);
      const last = start + n >= T;
      const part = n === T ? embeds : (tf.slice(embeds, [0, start, 0], [B, n, -1]) as tf.Tensor3D);
      try {
        const attentionMask = options.attentionMask?.map((row) => row.slice(start, start + n));
        const logits = yield* this.forwardSteps(part, cache, { attentionMask, tap: options.tap, rotary: options.rotary, logits: last ? 'last' : 'none' });
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
    const positions = positionsFromMask(fullMask, past);
    const rotary = options.rotary ?? this.rotary;
    rotary.update(past + T);
    const rope = rotary.tables(positions);
    const mask = createAttentionMask(fullMask, past, cache.numBeams > 1 ? 1 : this.config.num_key_value_heads);
    const logits = yield* this.layerSteps(embeds, rope, mask, cache, options.tap, options.logits);
    cache.mask = fullMask;
    return logits;
  }

  /**
   * One decode step of independent sequences (continuous batching): token b continues rows[b], which
   * has its own cache of one row (any length) and its own rotary state. The products run once for all
   * rows ([B, 1, D] against each weight: a decode step reads the weights once, not B times); attention
   * runs per row over its cache. Returns the logits [B, 1, V]; pauses after each layer.
   */
  *decodeRowsSteps(tokens: number[], rows: DecodeRow[]): Steps<tf.Tensor3D> {
    if (tokens.length !== rows.length) throw new Error(`decodeRowsSteps: ${tokens.length} tokens for ${rows.length} rows`);
    const caches = rows.map((r) => r.cache);
    if (caches.some((c) => c.mask.length !== 1 || c.numBeams !== 1)) throw new Error('decodeRowsSteps: each row needs a cache of one row (no beams)');
    const embeds = this.embedTokens(tokens.map((t) => [t]));
    try {
      const tables = rows.map(({ cache, rotary }) => {
        rotary.update(cache.length + 1);
        return rotary.tables(positionsFromMask([[...cache.mask[0], 1]], cache.length));
      });
      const rope = { cos: tf.concat(tables.map((t) => t.cos)) as tf.Tensor4D, sin: tf.concat(tables.map((t) => t.sin)) as tf.Tensor4D };
      tf.dispose(tables.flatMap((t) => [t.cos, t.sin]));
      const logits = yield* this.layerSteps(embeds, rope, undefined, caches, undefined, 'last');
      for (const cache of caches) cache.mask = [[...cache.mask[0], 1]];
      return logits!;
    } finally {
      embeds.dispose();
    }
  }

  /** The layers over `embeds` (pausing after each), then the logits asked for; frees `rope` and `mask`. */
  private *layerSteps(
    embeds: tf.Tensor3D,
    rope: RopeTables,
    mask: tf.Tensor4D | undefined,
    cache: KVCache | KVCache[],
    tap: Tap | undefined,
    logits: 'all' | 'last' | 'none',
  ): Steps<tf.Tensor3D | null> {
    const [B, T] = embeds.shape;
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
      if (logits === 'none') return null;
      return tf.tidy(() => {
        let x = logits === 'last' ? h.slice([0, T - 1, 0], [B, 1, -1]) : h;
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

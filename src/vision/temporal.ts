// PVC's additions to InternViT (progressive visual token compression, arXiv 2412.09613): the time
// embedding that drives AdaLN, and temporal attention (T-MHA) with its cache of past frames.
//
// PVC's released modeling code could not be read, so everything here follows the project's "PVC spec
// v0" (pvc.md), i.e. the paper; every guess lives here, in intern_vit.ts's AdaLN lines and in the
// converter's name table.
//
//   Frame t of a sequence: e_t = fc2(SiLU(fc1(s(t)))), s(t) = [cos(t f), sin(t f)], f_i = 10000^(-i/128)
//   AdaLN (in each ViT layer that has it): (shift1, scale1, shift2, scale2) = Linear(SiLU(e_t)), applied
//   to norm1's and norm2's outputs as x * (1 + scale) + shift.
//   Temporal attention (in the last layers), after the spatial attention: x += ls_t * TMHA(norm_t(x)),
//   TMHA = causal attention over the frames of a sequence at each of the N token positions (CLS included).
//
// "Temporal" means this attention across frames and nothing else. Causality makes streaming possible:
// a `FrameCache` keeps each temporal layer's keys and values of the frames seen so far.
import * as tf from '@tensorflow/tfjs';
import { Weights } from '../io/weights';
import { appendBlock, attention, Block, disposeBlocks, shareBlock } from '../nn/attention';
import { Kernels, LayerNorm, Linear, silu, Tap } from '../nn/layers';

/** Sinusoidal timestep features [n, dim], DiT order (cos first), in float32 arithmetic. */
export function timestepFeatures(times: number[], dim: number): Float32Array {
  const f = Math.fround;
  const half = dim / 2;
  const out = new Float32Array(times.length * dim);
  const logMax = f(-Math.log(10000));
  const freqs = Float32Array.from({ length: half }, (_, i) => f(Math.exp(f(f(logMax * i) / half))));
  times.forEach((t, n) => {
    for (let i = 0; i < half; i++) {
      const arg = f(t * freqs[i]);
      out[n * dim + i] = Math.cos(arg);
      out[n * dim + half + i] = Math.sin(arg);
    }
  });
  return out;
}

/** e_t for frame indices t: fc2(SiLU(fc1(timestepFeatures(t)))). */
export class TimeEmbedder {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(
    w: Weights,
    prefix: string,
    readonly freqDim: number,
    kernels: Kernels,
  ) {
    this.fc1 = new Linear(w, `${prefix}.fc1`, true, kernels);
    this.fc2 = new Linear(w, `${prefix}.fc2`, true, kernels);
  }

  /** Frame indices [n] -> [n, C]. */
  forward(times: number[]): tf.Tensor2D {
    const features = tf.tensor2d(timestepFeatures(times, this.freqDim), [times.length, this.freqDim]);
    return this.fc2.forward(silu(this.fc1.forward(features)));
  }
}

/**
 * Keys and values of the frames seen so far, per temporal layer, and their count: blocks of
 * consecutive frames ([S, N, H, t, hd] each, frames along axis 3) merged as `appendBlock` does (up to
 * MAX_BLOCK frames), so a frame added to a long video copies at most MAX_BLOCK frames' keys, not all.
 */
export class FrameCache {
  /** Most frames a block grows to by merging: a frame added copies at most this many frames' keys and values. */
  static readonly MAX_BLOCK = 16;
  readonly blocks = new Map<number, Block[]>();
  /** Frames per sequence already encoded (the next frame's time index). */
  frames = 0;

  /** A layer's blocks (empty before its first frame). */
  layer(layer: number): Block[] {
    if (!this.blocks.has(layer)) this.blocks.set(layer, []);
    return this.blocks.get(layer)!;
  }

  /** A cache of the same frames sharing their keys and values (see KVCache.fork). */
  fork(): FrameCache {
    const copy = new FrameCache();
    this.blocks.forEach((blocks, layer) =>
      copy.blocks.set(
        layer,
        blocks.map((b) => shareBlock(b)),
      ),
    );
    copy.frames = this.frames;
    return copy;
  }

  dispose(): void {
    this.blocks.forEach((blocks) => disposeBlocks(blocks));
    this.blocks.clear();
  }
}

/** ls_t * TMHA(norm_t(x)): causal attention across the frames of each sequence, per token position. */
export class TemporalAttention {
  static readonly TAPS = ['probs', 'out'] as const;
  readonly norm: LayerNorm;
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly ls: tf.Tensor1D;

  constructor(
    w: Weights,
    readonly prefix: string,
    readonly layer: number,
    eps: number,
    readonly heads: number,
    private readonly kernels: Kernels,
  ) {
    this.norm = new LayerNorm(w, `${prefix}.norm`, eps);
    this.qkv = new Linear(w, `${prefix}.qkv`, true, kernels);
    this.proj = new Linear(w, `${prefix}.proj`, true, kernels);
    this.ls = w.get(`${prefix}.ls`, 1) as tf.Tensor1D;
  }

  tapNames(): string[] {
    return TemporalAttention.TAPS.map((t) => `${this.prefix}.${t}`);
  }

  /**
   * x: [S*T, N, C], S sequences of T new frames (sequence-major). Each new frame attends causally to
   * the cached frames of its sequence and to the new frames up to itself; the new keys and values join
   * the cache (whose frame count the caller advances).
   */
  forward(x: tf.Tensor3D, S: number, cache: FrameCache, tap?: Tap): tf.Tensor3D {
    const [ST, N, C] = x.shape;
    const T = ST / S;
    const H = this.heads;
    const hd = C / H;
    const qkv = this.qkv.forward(this.norm.forward(x)).reshape([S, T, N, 3, H, hd]);
    // -> [3, S, N, H, T, hd]
    const [q, k, v] = tf.unstack(qkv.transpose([3, 0, 2, 4, 1, 5]));
    const past = cache.frames;
    const blocks = cache.layer(this.layer);
    appendBlock(blocks, shareBlock({ keys: k, values: v }), 3, FrameCache.MAX_BLOCK);
    const Tk = past + T;
    const mask = new Float32Array(T * Tk);
    for (let i = 0; i < T; i++) for (let j = 0; j < Tk; j++) mask[i * Tk + j] = j <= past + i ? 0 : -Infinity;
    const groups = (t: tf.Tensor) => t.reshape([-1, t.shape[3] as number, hd]) as tf.Tensor3D;
    const keys = blocks.map((b) => groups(b.keys));
    const values = blocks.map((b) => groups(b.values));
    const { out, probs } = attention(this.kernels, groups(q), keys, values, hd ** -0.5, 1, tf.tensor2d(mask, [T, Tk]));
    if (tap) tap(`${this.prefix}.probs`, probs.reshape([S, N, H, T, Tk]));
    const merged = out.reshape([S, N, H, T, hd]).transpose([0, 3, 1, 2, 4]).reshape([ST, N, C]) as tf.Tensor3D;
    const result = tf.mul(this.proj.forward(merged), this.ls) as tf.Tensor3D;
    if (tap) tap(`${this.prefix}.out`, result);
    return result;
  }
}

// PVC: progressive visual token compression (arXiv 2412.09613) on top of InternViT.
//
// PVC's released modeling code could not be read, so everything in this file follows the project's
// "PVC spec v0" (pvc.md), i.e. the paper; every guess lives here and in the converter's name table.
//
//   Every visual input is a video: an image tile is a "static video" of image_repeat_time identical
//   frames; a clip is one sequence of its frames (each video_repeat_time times in a row).
//   Frame t of a sequence: e_t = fc2(SiLU(fc1(s(t)))), s(t) = [cos(t f), sin(t f)], f_i = 10000^(-i/128)
//   Each ViT layer with AdaLN: (shift1, scale1, shift2, scale2) = Linear(SiLU(e_t)), applied to norm1's
//   and norm2's outputs as x * (1 + scale) + shift. Each temporal layer adds, after the spatial
//   attention: x += ls_t * TMHA(norm_t(x)), TMHA = causal attention over the frames of the sequence at
//   each of the N token positions (CLS included). Then drop CLS, pixel shuffle, mlp1: with
//   downsample_ratio 1/4, 64 tokens per frame. Token order to the LLM: tile-major, frames in order.
//
// Causality makes streaming possible: `TemporalEncoder` encodes frames one at a time (or in chunks)
// with a key/value cache per temporal layer, and gives the same tokens as encoding the clip at once.
import * as tf from '@tensorflow/tfjs';
import { ModelConfig, PVCConfig } from '../config';
import { Weights } from '../io/weights';
import { LayerNorm, Linear, silu, Tap } from '../nn/layers';
import { Projector } from './projector';
import { BlockExtras, InternVisionModel } from './intern_vit';

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

/** Keys and values of the frames seen so far, per temporal layer: [S, N, H, t, hd]. */
export class TemporalCache {
  readonly keys = new Map<number, tf.Tensor>();
  readonly values = new Map<number, tf.Tensor>();
  /** Frames per sequence already encoded (the next frame's time index). */
  frames = 0;

  dispose(): void {
    [...this.keys.values(), ...this.values.values()].forEach((t) => t.dispose());
    this.keys.clear();
    this.values.clear();
  }
}

class TemporalAttention {
  readonly norm: LayerNorm;
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly ls: tf.Tensor1D;

  constructor(w: Weights, prefix: string, eps: number, readonly heads: number) {
    this.norm = new LayerNorm(w, `${prefix}.norm`, eps);
    this.qkv = new Linear(w, `${prefix}.qkv`, true);
    this.proj = new Linear(w, `${prefix}.proj`, true);
    this.ls = w.get(`${prefix}.ls`, 1) as tf.Tensor1D;
  }

  /**
   * x: [S*T, N, C], S sequences of T new frames (sequence-major). Each new frame attends causally to
   * the cached frames of its sequence and to the new frames up to itself. Returns ls_t * TMHA(norm_t(x)).
   */
  forward(x: tf.Tensor3D, S: number, cache: TemporalCache, layer: number, tap?: Tap, name?: string): tf.Tensor3D {
    const [ST, N, C] = x.shape;
    const T = ST / S;
    const H = this.heads;
    const hd = C / H;
    const qkv = this.qkv.forward(this.norm.forward(x)).reshape([S, T, N, 3, H, hd]);
    // -> [3, S, N, H, T, hd]
    const [q, k, v] = tf.unstack(qkv.transpose([3, 0, 2, 4, 1, 5]));
    const past = cache.frames;
    const prevK = cache.keys.get(layer);
    const prevV = cache.values.get(layer);
    const keys = prevK ? tf.concat([prevK, k], 3) : k;
    const values = prevV ? tf.concat([prevV, v], 3) : v;
    cache.keys.set(layer, tf.keep(keys.clone()));
    cache.values.set(layer, tf.keep(values.clone()));
    prevK?.dispose();
    prevV?.dispose();
    const Tk = past + T;
    const mask = new Float32Array(T * Tk);
    for (let i = 0; i < T; i++) for (let j = 0; j < Tk; j++) mask[i * Tk + j] = j <= past + i ? 0 : -Infinity;
    const scores = tf.add(tf.matMul(tf.mul(q, hd ** -0.5).reshape([-1, T, hd]), keys.reshape([-1, Tk, hd]), false, true), tf.tensor2d(mask, [T, Tk]));
    const probs = tf.softmax(scores, -1);
    if (tap) tap(`${name}.probs`, probs.reshape([S, N, H, T, Tk]));
    const out = tf.matMul(probs, values.reshape([-1, Tk, hd])).reshape([S, N, H, T, hd]).transpose([0, 3, 1, 2, 4]).reshape([ST, N, C]);
    const result = tf.mul(this.proj.forward(out as tf.Tensor3D), this.ls) as tf.Tensor3D;
    if (tap) tap(`${name}.out`, result);
    return result;
  }
}

/** The PVC additions to an InternViT: time embedder, per-layer AdaLN, temporal attention. */
export class TemporalVision {
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly adaln = new Map<number, Linear>();
  readonly temporal = new Map<number, TemporalAttention>();
  private readonly freqDim: number;

  constructor(w: Weights, config: ModelConfig, readonly vit: InternVisionModel) {
    const pvc = config.pvc as PVCConfig;
    this.fc1 = new Linear(w, 'vision.time_embedder.fc1', true);
    this.fc2 = new Linear(w, 'vision.time_embedder.fc2', true);
    for (const i of pvc.adaln_layers) this.adaln.set(i, new Linear(w, `vision.layers.${i}.adaln`, true));
    for (const i of pvc.temporal_layers) {
      this.temporal.set(i, new TemporalAttention(w, `vision.layers.${i}.temporal`, config.vision.layer_norm_eps, config.vision.num_attention_heads));
    }
    this.freqDim = pvc.time_embed_freq_dim;
  }

  /** e_t for frame times [n] -> [n, C]. */
  timeEmbedding(times: number[]): tf.Tensor2D {
    return tf.tidy(() => this.fc2.forward(silu(this.fc1.forward(tf.tensor2d(timestepFeatures(times, this.freqDim), [times.length, this.freqDim])))));
  }

  /**
   * Frames [S*T, 3, H, W] (S sequences of T new frames, sequence-major, continuing `cache`) -> the
   * selected ViT hidden state [S*T, N, C]. Advances the cache by T frames. Call inside tf.tidy.
   */
  forward(frames: tf.Tensor4D, S: number, cache: TemporalCache, tap?: Tap): tf.Tensor3D {
    const T = frames.shape[0] / S;
    if (!Number.isInteger(T)) throw new Error(`${frames.shape[0]} frames do not split into ${S} sequences`);
    const times = Array.from({ length: S * T }, (_, k) => cache.frames + (k % T));
    const e = silu(this.timeEmbedding(times));
    const extras = (i: number): BlockExtras => {
      const ada = this.adaln.get(i);
      const tmha = this.temporal.get(i);
      return {
        modulation: ada ? (tf.split(ada.forward(e).reshape([S * T, 1, -1]), 4, -1) as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]) : undefined,
        temporal: tmha ? (x, t) => tf.add(x, tmha.forward(x, S, cache, i, t, `vision.layers.${i}.temporal`)) as tf.Tensor3D : undefined,
      };
    };
    const out = this.vit.forward(frames, { tap, extras });
    cache.frames += T;
    return out;
  }
}

// ---- sequences -------------------------------------------------------------------------------------

export interface Sample {
  /** 1 single image, 2 multi-image, 3 video. */
  dataFlag: 1 | 2 | 3 | undefined;
  /** First tile of the sample in pixelValues, and its tiles per image (or per frame). */
  start: number;
  numPatchesList: number[];
}

/** Frames repeated in a row: [n, ...] -> [n * times, ...]. */
function repeatInterleave(x: tf.Tensor4D, times: number): tf.Tensor4D {
  if (times === 1) return x;
  const [n, ...rest] = x.shape;
  return tf.tile(x.reshape([n, 1, ...rest]), [1, times, 1, 1, 1]).reshape([n * times, ...rest]) as tf.Tensor4D;
}

/** Repeat count of each frame: image_repeat_time for images (dataFlag 1, 2 or none), video_repeat_time for video. */
export function repeatsFor(pvc: PVCConfig, dataFlag: number | undefined): number {
  return dataFlag === 3 ? pvc.video_repeat_time : pvc.image_repeat_time;
}

/**
 * Visual tokens of PVC samples, in the order of their IMG_CONTEXT slots: [tokens, D]. An image tile
 * is a sequence of image_repeat_time frames; a video (one tile per frame) is one sequence of its frames,
 * each repeated video_repeat_time times; output tile-major. Call inside tf.tidy.
 */
export function pvcVisualTokens(temporal: TemporalVision, projector: Projector, pixelValues: tf.Tensor4D, samples: Sample[], tap?: Tap): tf.Tensor2D {
  const pvc = projector.config.pvc as PVCConfig;
  const parts: tf.Tensor2D[] = [];
  for (const sample of samples) {
    const tiles = sample.numPatchesList.reduce((a, b) => a + b, 0);
    const pixels = pixelValues.slice([sample.start, 0, 0, 0], [tiles, -1, -1, -1]) as tf.Tensor4D;
    const isVideo = sample.dataFlag === 3;
    const multi = sample.numPatchesList.find((n) => n !== 1);
    if (isVideo && multi !== undefined) throw new Error(`PVC spec v0 takes one tile per video frame (numPatchesList entry ${multi}); load the video with maxNum 1`);
    const frames = repeatInterleave(pixels, repeatsFor(pvc, sample.dataFlag));
    // A video is one sequence of its frames; each image tile is a sequence of its own.
    const sequences = isVideo ? 1 : tiles;
    const cache = new TemporalCache();
    try {
      const hidden = temporal.forward(frames, sequences, cache, tap);
      const tokens = projector.forward(hidden);
      if (tap) tap('projector.out', tokens);
      parts.push(tokens.reshape([-1, tokens.shape[2]]) as tf.Tensor2D);
    } finally {
      cache.dispose();
    }
  }
  return tf.concat(parts) as tf.Tensor2D;
}

/**
 * Streaming encoder for one clip: `encode(frames)` takes the next frames [n, 3, S, S] (one tile each)
 * and returns their visual tokens [n * video_repeat_time, tokensPerFrame, D]; work per new frame is
 * constant (its own spatial pass plus attention to the cached keys/values). `dispose()` frees the cache.
 */
export class TemporalEncoder {
  private readonly cache = new TemporalCache();

  constructor(private readonly temporal: TemporalVision, private readonly projector: Projector) {}

  get framesSeen(): number {
    return this.cache.frames;
  }

  encode(frames: tf.Tensor4D): tf.Tensor3D {
    const pvc = this.projector.config.pvc as PVCConfig;
    return tf.tidy(() => this.projector.forward(this.temporal.forward(repeatInterleave(frames, pvc.video_repeat_time), 1, this.cache)));
  }

  dispose(): void {
    this.cache.dispose();
  }
}

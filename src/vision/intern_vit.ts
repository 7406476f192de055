// InternViT (InternViT-300M-448px, and InternViT-6B's rms_norm + qk-normalization variant).
//
//   pixels [N, 3, S, S] -> patch embedding (conv p x p stride p == one matmul) -> prepend CLS
//   -> + position embedding (bicubic-resized when the grid differs from the checkpoint's)
//   -> pre-norm blocks: x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x))
//   -> the hidden state select_layer picks (no final norm). [N, G*G + 1, C]
//
// A PVC checkpoint adds, per layer, AdaLN on both norms and (in the last layers) temporal attention
// after the spatial attention; the frames then come as S sequences of T frames (see ./temporal.ts).
// Without those tensors this is plain InternViT and every frame is a sequence of its own.
import * as tf from '@tensorflow/tfjs';
import { ModelConfig, VisionConfig, visionLayersRun } from '../config';
import { Weights } from '../io/weights';
import { attention, disposeBlocks, mergeHeads, splitHeads } from '../nn/attention';
import { gelu, Kernels, LayerNorm, Linear, Norm, RMSNorm, silu, Tap } from '../nn/layers';
import { FrameCache, TemporalAttention, TimeEmbedder } from './temporal';
import { runSync, Steps } from '../event_loop';

function makeNorm(w: Weights, name: string, cfg: VisionConfig): Norm {
  return cfg.norm_type === 'layer_norm' ? new LayerNorm(w, name, cfg.layer_norm_eps) : new RMSNorm(w, name, cfg.layer_norm_eps);
}

class Attention {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly qNorm: RMSNorm | null;
  readonly kNorm: RMSNorm | null;
  readonly heads: number;
  readonly scale: number;

  constructor(
    w: Weights,
    readonly prefix: string,
    cfg: VisionConfig,
    private readonly kernels: Kernels,
  ) {
    this.qkv = new Linear(w, `${prefix}.qkv`, cfg.qkv_bias, kernels);
    this.proj = new Linear(w, `${prefix}.proj`, true, kernels);
    // q/k normalization (InternViT-6B) is RMSNorm over the full width, before the head split.
    this.qNorm = cfg.qk_normalization ? new RMSNorm(w, `${prefix}.q_norm`, cfg.layer_norm_eps) : null;
    this.kNorm = cfg.qk_normalization ? new RMSNorm(w, `${prefix}.k_norm`, cfg.layer_norm_eps) : null;
    this.heads = cfg.num_attention_heads;
    this.scale = (cfg.hidden_size / cfg.num_attention_heads) ** -0.5;
  }

  forward(x: tf.Tensor3D, tap?: Tap): tf.Tensor3D {
    const [qRaw, kRaw, v] = tf.split(this.qkv.forward(x), 3, -1) as tf.Tensor3D[];
    // q/k normalization (InternViT-6B): RMSNorm over the full width, before the head split.
    const q = this.qNorm ? this.qNorm.forward(qRaw) : qRaw;
    const k = this.kNorm ? this.kNorm.forward(kRaw) : kRaw;
    const [B, T] = x.shape;
    const H = this.heads;
    const heads = (t: tf.Tensor3D) => splitHeads(t, H).reshape([B * H, T, -1]) as tf.Tensor3D;
    const { out, probs } = attention(this.kernels, heads(q), heads(k), heads(v), this.scale);
    if (tap) tap(`${this.prefix}.probs`, probs.reshape([B, H, T, T]));
    return this.proj.forward(mergeHeads(out.reshape([B, H, T, -1]) as tf.Tensor4D));
  }
}

class MLP {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(w: Weights, prefix: string, kernels: Kernels) {
    this.fc1 = new Linear(w, `${prefix}.fc1`, true, kernels);
    this.fc2 = new Linear(w, `${prefix}.fc2`, true, kernels);
  }

  forward(x: tf.Tensor3D): tf.Tensor3D {
    return this.fc2.forward(gelu(this.fc1.forward(x)));
  }
}

/** How a layer's frames are grouped for PVC: S sequences of T frames each (sequence-major), their time embedding and cache. */
export interface FrameSequences {
  count: number;
  /** SiLU(e_t) of every frame: [S*T, C]. */
  time: tf.Tensor2D;
  cache: FrameCache;
}

export class EncoderLayer {
  static readonly TAPS = ['attn.probs', 'attn.out', 'mlp.out', 'out'] as const;
  readonly norm1: Norm;
  readonly norm2: Norm;
  readonly attn: Attention;
  readonly mlp: MLP;
  readonly ls1: tf.Tensor1D;
  readonly ls2: tf.Tensor1D;
  /** PVC: (shift1, scale1, shift2, scale2) from the frame's time embedding, or null. */
  readonly adaln: Linear | null;
  /** PVC: temporal attention after the spatial attention, or null. */
  readonly temporal: TemporalAttention | null;

  constructor(
    w: Weights,
    readonly prefix: string,
    readonly index: number,
    cfg: VisionConfig,
    kernels: Kernels,
  ) {
    this.norm1 = makeNorm(w, `${prefix}.norm1`, cfg);
    this.norm2 = makeNorm(w, `${prefix}.norm2`, cfg);
    this.attn = new Attention(w, `${prefix}.attn`, cfg, kernels);
    this.mlp = new MLP(w, `${prefix}.mlp`, kernels);
    this.ls1 = w.get(`${prefix}.ls1`, 1) as tf.Tensor1D;
    this.ls2 = w.get(`${prefix}.ls2`, 1) as tf.Tensor1D;
    this.adaln = w.has(`${prefix}.adaln.weight`) ? new Linear(w, `${prefix}.adaln`, true, kernels) : null;
    this.temporal = w.has(`${prefix}.temporal.qkv.weight`)
      ? new TemporalAttention(w, `${prefix}.temporal`, index, cfg.layer_norm_eps, cfg.num_attention_heads, kernels)
      : null;
  }

  tapNames(): string[] {
    const [probs, attnOut, mlpOut, out] = EncoderLayer.TAPS.map((t) => `${this.prefix}.${t}`);
    return [probs, attnOut, ...(this.temporal?.tapNames() ?? []), mlpOut, out];
  }

  /** Call inside tf.tidy. Each residual branch runs in a scope of its own, so its temporaries are freed before the next one runs. */
  forward(x: tf.Tensor3D, sequences?: FrameSequences, tap?: Tap): tf.Tensor3D {
    const mod = this.adaln && sequences ? (tf.split(this.adaln.forward(sequences.time).reshape([x.shape[0], 1, -1]), 4, -1) as tf.Tensor3D[]) : null;
    const attnOut = tf.tidy(() => {
      let h = this.norm1.forward(x);
      if (mod) h = tf.add(tf.mul(h, tf.add(mod[1], 1)), mod[0]) as tf.Tensor3D;
      return this.attn.forward(h, tap);
    });
    if (tap) tap(`${this.prefix}.attn.out`, attnOut);
    x = tf.add(x, tf.mul(attnOut, this.ls1));
    const xa = x;
    if (this.temporal && sequences)
      x = tf.add(
        x,
        tf.tidy(() => this.temporal!.forward(xa, sequences.count, sequences.cache, tap)),
      );
    const xt = x;
    const mlpOut = tf.tidy(() => {
      let h = this.norm2.forward(xt);
      if (mod) h = tf.add(tf.mul(h, tf.add(mod[3], 1)), mod[2]) as tf.Tensor3D;
      return this.mlp.forward(h);
    });
    if (tap) tap(`${this.prefix}.mlp.out`, mlpOut);
    const out = tf.add(x, tf.mul(mlpOut, this.ls2)) as tf.Tensor3D;
    if (tap) tap(`${this.prefix}.out`, out);
    return out;
  }
}

/**
 * PyTorch's F.interpolate(mode='bicubic', align_corners=False) of a [g0, g0, C] grid to [H, W, C]
 * (cubic convolution with A = -0.75, edge samples clamped), separable in two passes.
 */
export function bicubicResizeGrid(grid: Float32Array, g0: number, C: number, H: number, W: number): Float32Array {
  const A = -0.75;
  const near = (t: number) => ((A + 2) * t - (A + 3)) * t * t + 1; // |t| <= 1
  const far = (t: number) => ((A * t - 5 * A) * t + 8 * A) * t - 4 * A; // 1 < |t| < 2
  const taps = (outSize: number) => {
    const scale = g0 / outSize;
    return Array.from({ length: outSize }, (_, o) => {
      const src = scale * (o + 0.5) - 0.5;
      const i0 = Math.floor(src);
      const t = src - i0;
      const weights = [far(t + 1), near(t), near(1 - t), far(2 - t)];
      const index = [i0 - 1, i0, i0 + 1, i0 + 2].map((i) => Math.min(Math.max(i, 0), g0 - 1));
      return { index, weights };
    });
  };
  const rows = taps(H);
  const cols = taps(W);
  // Pass 1 over rows: [g0, g0, C] -> [H, g0, C]
  const mid = new Float32Array(H * g0 * C);
  rows.forEach(({ index, weights }, y) => {
    for (let k = 0; k < 4; k++) {
      const src = index[k] * g0 * C;
      const wk = weights[k];
      for (let j = 0; j < g0 * C; j++) mid[y * g0 * C + j] += wk * grid[src + j];
    }
  });
  // Pass 2 over columns: [H, g0, C] -> [H, W, C]
  const out = new Float32Array(H * W * C);
  for (let y = 0; y < H; y++) {
    cols.forEach(({ index, weights }, x) => {
      const dst = (y * W + x) * C;
      for (let k = 0; k < 4; k++) {
        const src = (y * g0 + index[k]) * C;
        const wk = weights[k];
        for (let c = 0; c < C; c++) out[dst + c] += wk * mid[src + c];
      }
    });
  }
  return out;
}

export class InternVisionModel {
  readonly config: VisionConfig;
  readonly patchWeight: tf.Tensor2D;
  readonly patchBias: tf.Tensor1D;
  readonly cls: tf.Tensor1D;
  readonly pos: tf.Tensor2D;
  /** The layers that run: those up to the hidden state select_layer picks. */
  readonly layers: EncoderLayer[];
  /** PVC's time embedder, or null (plain InternViT). */
  readonly timeEmbedder: TimeEmbedder | null;
  /** Position embeddings resized to other grids, computed once per size. */
  private readonly posByGrid = new Map<number, tf.Tensor2D>();
  /**
   * The position table's values, read once at load: the resize runs on the CPU, and on webgpu a tensor
   * the GPU holds cannot be read synchronously in Node (src/webgpu.ts). [G0*G0 + 1, C], 4 MB at 448 px.
   */
  private readonly posValues: Float32Array;

  constructor(w: Weights, model: ModelConfig, kernels: Kernels) {
    const cfg = model.vision;
    this.config = cfg;
    this.patchWeight = w.get('vision.embeddings.patch.weight', 2) as tf.Tensor2D;
    this.patchBias = w.get('vision.embeddings.patch.bias', 1) as tf.Tensor1D;
    this.cls = w.get('vision.embeddings.cls', 1) as tf.Tensor1D;
    this.pos = w.get('vision.embeddings.pos', 2) as tf.Tensor2D;
    this.posValues = this.pos.dataSync() as Float32Array;
    this.layers = Array.from({ length: visionLayersRun(model) }, (_, i) => new EncoderLayer(w, `vision.layers.${i}`, i, cfg, kernels));
    const pvc = model.pvc?.use_temporal ? model.pvc : null;
    this.timeEmbedder = pvc ? new TimeEmbedder(w, 'vision.time_embedder', pvc.time_embed_freq_dim, kernels) : null;
  }

  tapNames(): string[] {
    return ['vision.embeddings', ...this.layers.flatMap((l) => l.tapNames())];
  }

  /** The position embedding for a G x G patch grid: [G*G + 1, C] (CLS row first). */
  positionEmbedding(G: number): tf.Tensor2D {
    const g0 = this.config.image_size / this.config.patch_size;
    if (G === g0) return this.pos;
    let resized = this.posByGrid.get(G);
    if (resized === undefined) {
      const C = this.config.hidden_size;
      const all = this.posValues;
      const grid = bicubicResizeGrid(all.subarray(C), g0, C, G, G);
      const table = new Float32Array((G * G + 1) * C);
      table.set(all.subarray(0, C));
      table.set(grid, C);
      resized = tf.keep(tf.tensor2d(table, [G * G + 1, C]));
      this.posByGrid.set(G, resized);
    }
    return resized;
  }

  /** Patch + CLS + position embeddings: [N, 3, S, S] -> [N, G*G + 1, C]. */
  embed(pixelValues: tf.Tensor4D): tf.Tensor3D {
    const [N, channels, S, S2] = pixelValues.shape;
    const p = this.config.patch_size;
    if (channels !== this.config.num_channels || S !== S2 || S % p !== 0) {
      throw new Error(`pixelValues has shape [${pixelValues.shape}]; expected [N, ${this.config.num_channels}, S, S] with S a multiple of ${p}`);
    }
    const G = S / p;
    // Non-overlapping p x p patches, row-major over the grid, each flattened in (c, kh, kw) order.
    const patches = pixelValues
      .reshape([N, channels, G, p, G, p])
      .transpose([0, 2, 4, 1, 3, 5])
      .reshape([N * G * G, channels * p * p]) as tf.Tensor2D;
    const embedded = tf.fused.matMul({ a: patches, b: this.patchWeight, bias: this.patchBias }).reshape([N, G * G, -1]);
    const C = this.config.hidden_size;
    const cls = tf.broadcastTo(this.cls.reshape([1, 1, C]), [N, 1, C]);
    return tf.add(tf.concat([cls, embedded], 1), this.positionEmbedding(G)) as tf.Tensor3D;
  }

  /**
   * Frames [S*T, 3, H, W] -> the selected hidden state [S*T, G*G + 1, C]. A PVC model takes the frames
   * as S sequences of T new frames (sequence-major) continuing `cache`, and advances the cache by T;
   * plain InternViT ignores both. The caller owns the result.
   */
  forward(frames: tf.Tensor4D, options: { sequences?: number; cache?: FrameCache; tap?: Tap } = {}): tf.Tensor3D {
    return runSync(this.forwardSteps(frames, options));
  }

  /** `forward` as steps: pauses after each layer. */
  *forwardSteps(frames: tf.Tensor4D, options: { sequences?: number; cache?: FrameCache; tap?: Tap } = {}): Steps<tf.Tensor3D> {
    const { sequences = frames.shape[0], cache, tap } = options;
    const [out] = yield* this.passesSteps([{ frames: frames.clone(), sequences }], { cache, tap });
    return out;
  }

  /**
   * Passes of frames [S*T, 3, H, W] (S sequences of T frames each), each continuing the previous pass's
   * sequences in `cache` -> each pass's selected hidden state, exactly as `forward` on the passes in
   * order gives, but run layer by layer: every pass through layer l, then through layer l + 1. What is
   * held between layers is the passes' hidden states; with `release`, a temporal layer's keys and values
   * are freed once every pass has been through it, so a long video holds one layer's cache, not each
   * temporal layer's (the cache cannot be continued after such a call). Each pass's frames are
   * disposed once embedded. Pauses after each pass through a layer. The caller owns the results.
   */
  *passesSteps(passes: { frames: tf.Tensor4D; sequences: number }[], options: { cache?: FrameCache; tap?: Tap; release?: boolean } = {}): Steps<tf.Tensor3D[]> {
    const { tap } = options;
    // Plain InternViT: every frame is a sequence of its own, no cache.
    const cache = this.timeEmbedder ? options.cache : undefined;
    if (this.timeEmbedder && cache === undefined) throw new Error('a PVC vision encoder needs a FrameCache for its temporal layers');
    const seqs: FrameSequences[] = [];
    const starts: number[] = [];
    const xs: tf.Tensor3D[] = [];
    try {
      let frame = cache?.frames ?? 0;
      for (const pass of passes) {
        starts.push(frame);
        const S = pass.sequences;
        const T = pass.frames.shape[0] / S;
        if (!Number.isInteger(T)) throw new Error(`${pass.frames.shape[0]} frames do not split into ${S} sequences`);
        if (this.timeEmbedder) {
          const times = Array.from({ length: S * T }, (_, k) => frame + (k % T));
          const embedder = this.timeEmbedder;
          seqs.push({ count: S, time: tf.tidy(() => silu(embedder.forward(times))), cache: cache! });
        }
        frame += T;
      }
      for (const pass of passes) {
        xs.push(tf.tidy(() => this.embed(pass.frames)));
        pass.frames.dispose();
        if (tap) tap('vision.embeddings', xs[xs.length - 1]);
      }
      yield;
      for (const layer of this.layers) {
        for (let p = 0; p < passes.length; p++) {
          // A scope per layer and pass: its intermediates are freed before the next one runs.
          if (cache) cache.frames = starts[p];
          const prev = xs[p];
          xs[p] = tf.tidy(() => layer.forward(prev, seqs[p], tap));
          prev.dispose();
          yield;
        }
        if (options.release && cache?.blocks.has(layer.index)) {
          disposeBlocks(cache.blocks.get(layer.index)!);
          cache.blocks.delete(layer.index);
        }
      }
      if (cache) cache.frames = frame;
      return xs.splice(0);
    } finally {
      for (const pass of passes) if (!pass.frames.isDisposed) pass.frames.dispose();
      tf.dispose(xs);
      tf.dispose(seqs.map((s) => s.time));
    }
  }

  dispose(): void {
    this.posByGrid.forEach((t) => t.dispose());
    this.posByGrid.clear();
  }
}

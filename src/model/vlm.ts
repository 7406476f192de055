// The vision-language model: InternViT (with PVC's temporal layers when the checkpoint has them), the
// projector and InternLM2, and the one path from pixels to the visual tokens the LLM reads.
//
//   pixelValues [tiles, 3, S, S] + samples
//   -> per sample: frames (PVC: each image tile repeated image_repeat_time times, a video's frames
//      video_repeat_time times) as sequences (PVC: each image tile its own, a video one)
//   -> vision -> projector -> visual tokens [tokens, D], tile-major, frames in order
//   -> inputSteps: the prompt rows embedded, their IMG_CONTEXT rows replaced by them, in order -> the LLM
import * as tf from '@tensorflow/tfjs';
import { BackendName } from '../backend';
import { ModelConfig } from '../config';
import { InputError } from '../errors';
import { WeightPrecision, Weights } from '../io/weights';
import { InternLM2 } from '../llm/internlm2';
import { Kernels, Tap } from '../nn/layers';
import { runSync, Steps } from '../event_loop';
import { InternVisionModel } from '../vision/intern_vit';
import { Projector } from '../vision/projector';
import { FrameCache } from '../vision/temporal';
import { DataFlag, repeatsFor, Sample } from './samples';

/**
 * How much runs at once, which bounds memory on long inputs (results do not depend on it): the vision
 * encoder takes at most `framesPerPass` frames per pass (a video's frames in order, carrying the temporal
 * cache), the LLM prefills `prefillChunk` prompt positions per pass.
 */
export interface RunLimits {
  framesPerPass: number;
  prefillChunk: number;
  /**
   * Refuse a prompt whose tokens plus maxNewTokens exceed this many positions. Unset by default: as
   * upstream's chat(), the model runs past max_position_embeddings (InternLM2's dynamic NTK rope
   * scaling is made for that; without scaling the rotary tables keep extending), memory is the limit.
   */
  maxContext?: number;
}

/** At most 8 frames per pass; 512 prompt positions of InternLM2-7B hold ~0.5 GB of scores at 8k context. */
export const DEFAULT_RUN_LIMITS: RunLimits = { framesPerPass: 8, prefillChunk: 512 };

/** A vision pass holds at most this many bytes of one attention score tensor (scores, probabilities and softmax temporaries are several). */
const VISION_SCORE_BYTES = 160 * 2 ** 20;

/**
 * Frames per vision pass by default: 8, or fewer where 8 frames' attention scores would pass
 * VISION_SCORE_BYTES (InternViT-300M at 448 px: 16 heads x 1025^2 x 4 bytes = 67 MB a frame, so 2; a
 * 64-frame video at 8 per pass was OOM-killed on a 24 GiB machine with the 8B weights in bf16, and 2
 * frames a pass peak ~240 MiB lower than 3 at the same speed).
 */
export function defaultFramesPerPass(config: ModelConfig): number {
  const v = config.vision;
  const tokens = (v.image_size / v.patch_size) ** 2 + 1;
  const perFrame = v.num_attention_heads * tokens * tokens * 4;
  return Math.max(1, Math.min(DEFAULT_RUN_LIMITS.framesPerPass, Math.floor(VISION_SCORE_BYTES / perFrame)));
}

export interface LoadOptions {
  backend?: BackendName;
  /**
   * How the 2-D weights are held: 'float32' (default; every backend), 'bfloat16' (half the memory) or
   * 'int8' (a quarter, per-column scales; error ~1e-2): the tensorflow and webgpu backends. See src/io/weights.ts.
   */
  weights?: WeightPrecision;
  /**
   * With weights 'bfloat16': 'exact' (default) widens each weight to float32 just before its product,
   * the numbers of a float32 model of the same values; 'fast' multiplies in bf16 (activations rounded
   * as in PyTorch's bf16 run; fast with oneDNN, TF_ENABLE_ONEDNN_OPTS=1).
   */
  matmul?: 'exact' | 'fast';
  /** Progress of reading the weights (bytes). */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** See RunLimits; defaults DEFAULT_RUN_LIMITS, with framesPerPass from defaultFramesPerPass. */
  limits?: Partial<RunLimits>;
}

/** The token ids a prompt's rows are read with (from the model's tokenizer). */
export interface PromptTokenIds {
  imgContext: number;
  pad: number;
}

/** What the LLM reads: embeddings [B, T, D] of left-padded rows, and their mask (1 token, 0 padding). */
export interface LLMInput {
  embeds: tf.Tensor3D;
  attentionMask: number[][];
}

/** Frames repeated in a row: [n, ...] -> [n * times, ...]. */
function repeatFrames(x: tf.Tensor4D, times: number): tf.Tensor4D {
  if (times === 1) return x;
  const [n, ...rest] = x.shape;
  return tf.tile(x.reshape([n, 1, ...rest]), [1, times, 1, 1, 1]).reshape([n * times, ...rest]) as tf.Tensor4D;
}

/** One pass of frames through the vision encoder: frames [start, start + count) as `sequences` sequences. */
interface VisionPass {
  start: number;
  count: number;
  sequences: number;
  /** The pass begins sequences of its own (a fresh frame cache), or continues the previous pass's one. */
  newCache: boolean;
}

/**
 * The passes for `sequences` sequences of `F` frames with at most `perPass` frames a pass: several whole
 * sequences when they fit, else each sequence in chunks of frames carrying its frame cache.
 */
function visionPasses(sequences: number, F: number, perPass: number): VisionPass[] {
  const passes: VisionPass[] = [];
  if (F <= perPass) {
    const k = Math.floor(perPass / F);
    for (let s = 0; s < sequences; s += k) {
      const n = Math.min(k, sequences - s);
      passes.push({ start: s * F, count: n * F, sequences: n, newCache: true });
    }
  } else {
    for (let s = 0; s < sequences; s++) {
      for (let f = 0; f < F; f += perPass) passes.push({ start: s * F + f, count: Math.min(perPass, F - f), sequences: 1, newCache: f === 0 });
    }
  }
  return passes;
}

/** Where the visual tokens go: the positions of the IMG_CONTEXT tokens in `ids`. */
export function imageTokenPositions(ids: readonly number[], imgContextId: number): number[] {
  return ids.flatMap((id, i) => (id === imgContextId ? [i] : []));
}

/**
 * Embeddings `text` [B, T, D] of the prompt rows `ids` with the IMG_CONTEXT rows replaced by the rows of
 * `visual` [n, D], in order (upstream's `input_embeds[selected] = vit_embeds`). Pure: a new tensor,
 * the inputs are left to the caller.
 */
export function mergeEmbeddings(text: tf.Tensor3D, ids: number[][], imgContextId: number, visual: tf.Tensor2D | null): tf.Tensor3D {
  const flat = ids.flat();
  const slots = imageTokenPositions(flat, imgContextId);
  const available = visual?.shape[0] ?? 0;
  if (slots.length !== available)
    throw new InputError('inputIds', `the prompt has ${slots.length} IMG_CONTEXT tokens (id ${imgContextId}) but the images give ${available} visual tokens`);
  if (visual === null) return text.clone();
  return tf.tidy(() => {
    const [B, T, D] = text.shape;
    // Row r of the flattened batch takes visual row k if it is the k-th IMG_CONTEXT, else its text row.
    const index = Array.from(flat.keys());
    slots.forEach((position, k) => (index[position] = B * T + k));
    const table = tf.concat([text.reshape([B * T, D]), visual]);
    return tf.gather(table, tf.tensor1d(index, 'int32')).reshape([B, T, D]) as tf.Tensor3D;
  });
}

export class VisionLanguageModel {
  readonly vision: InternVisionModel;
  readonly projector: Projector;
  readonly llm: InternLM2;
  /** Per-pass sizes (memory bounds); may be changed between calls. */
  limits: RunLimits;

  constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly weights: Weights,
    readonly kernels: Kernels,
  ) {
    this.limits = { ...DEFAULT_RUN_LIMITS, framesPerPass: defaultFramesPerPass(config) };
    this.vision = new InternVisionModel(weights, config, kernels);
    this.projector = new Projector(weights, config, kernels);
    this.llm = new InternLM2(weights, config.llm, kernels);
  }

  /** Visual tokens per tile (per frame for PVC). */
  get numImageToken(): number {
    return this.config.num_image_token;
  }

  /** IMG_CONTEXT tokens per tile for a sample of this kind: num_image_token, times PVC's repeat count. */
  tokensPerTile(dataFlag?: DataFlag): number {
    return this.numImageToken * (this.config.pvc ? repeatsFor(this.config.pvc, dataFlag) : 1);
  }

  /** Every tap name the model emits, in the order they fire (see src/inspect/taps.ts). */
  tapNames(): string[] {
    return [...this.vision.tapNames(), ...this.projector.tapNames(), ...this.llm.tapNames()];
  }

  checkPixelValues(pixelValues: tf.Tensor): void {
    const S = this.config.image_size;
    const [, c, h, w] = pixelValues.shape;
    if (pixelValues.rank !== 4 || c !== 3 || h !== S || w !== S) {
      throw new InputError('pixelValues', `pixelValues has shape [${pixelValues.shape}]; expected [tiles, 3, ${S}, ${S}]`);
    }
  }

  /**
   * Frames [S*T, 3, H, W], S sequences of T frames continuing `cache` -> visual tokens [S*T, tokens per
   * frame, D]: the vision encoder (PVC: with its temporal layers), then the projector. Call inside tf.tidy.
   */
  encodeFrames(frames: tf.Tensor4D, sequences: number, cache: FrameCache, tap?: Tap): tf.Tensor3D {
    return this.projector.forward(runSync(this.vision.forwardSteps(frames, { sequences, cache, tap })), tap);
  }

  /**
   * The visual tokens of a request, in the order of the prompt's IMG_CONTEXT slots: [tokens, D]. A PVC
   * image tile is a sequence of image_repeat_time frames; a video (one tile per frame) is one sequence
   * of its frames, each repeated video_repeat_time times. InternVL2: each tile's tokens.
   */
  visualTokens(pixelValues: tf.Tensor4D, samples: Sample[], tap?: Tap): tf.Tensor2D {
    return runSync(this.visualTokenSteps(pixelValues, samples, tap));
  }

  /**
   * `visualTokens` as steps, pausing after each pass through a vision layer. At most
   * `limits.framesPerPass` frames go through the vision encoder at once: whole sequences together when
   * they fit, else one sequence in chunks of frames carrying its frame cache (causal, so the tokens are
   * those of a single pass), the chunks layer by layer.
   */
  *visualTokenSteps(pixelValues: tf.Tensor4D, samples: Sample[], tap?: Tap): Steps<tf.Tensor2D> {
    this.checkPixelValues(pixelValues);
    const pvc = this.config.pvc;
    const parts: tf.Tensor2D[] = [];
    try {
      for (const sample of samples) {
        const tiles = sample.tilesPerImage.reduce((a, b) => a + b, 0);
        const isVideo = sample.dataFlag === 3;
        if (pvc?.use_temporal && isVideo) {
          const multi = sample.tilesPerImage.find((n) => n !== 1);
          if (multi !== undefined)
            throw new InputError('numPatchesList', `PVC spec v0 takes one tile per video frame (numPatchesList entry ${multi}); load the video with maxNum 1`);
        }
        const repeats = pvc ? repeatsFor(pvc, sample.dataFlag) : 1;
        // Frame f of the sample is tile floor(f / repeats); sequences of F frames: a video is one (its
        // tiles in order, each repeated), an image tile is one.
        const F = (isVideo ? tiles : 1) * repeats;
        // With a tap, one pass per sample: taps then have their whole shapes (temporal attention over all frames).
        const perPass = tap ? Infinity : this.limits.framesPerPass;
        const passes = visionPasses((tiles * repeats) / F, F, perPass);
        // The passes that share a frame cache (a PVC video's chunks) run together, layer by layer: a long
        // video then holds one temporal layer's keys and values at a time (see passesSteps). Without
        // temporal layers each pass runs alone.
        for (let first = 0; first < passes.length;) {
          let end = first + 1;
          while (pvc?.use_temporal && end < passes.length && !passes[end].newCache) end++;
          const run = passes.slice(first, end).map((pass) => ({
            sequences: pass.sequences,
            frames: tf.tidy(() => {
              const tileIndex = Array.from({ length: pass.count }, (_, i) => sample.firstTile + Math.floor((pass.start + i) / repeats));
              return tf.gather(pixelValues, tf.tensor1d(tileIndex, 'int32')) as tf.Tensor4D;
            }),
          }));
          first = end;
          const cache = new FrameCache();
          let hidden: tf.Tensor3D[] = [];
          try {
            hidden = yield* this.vision.passesSteps(run, { cache, tap, release: true });
            for (const h of hidden) {
              parts.push(
                tf.tidy(() => {
                  const tokens = this.projector.forward(h, tap);
                  h.dispose();
                  return tokens.reshape([-1, tokens.shape[2]]) as tf.Tensor2D;
                }),
              );
            }
          } finally {
            tf.dispose(hidden);
            cache.dispose();
          }
        }
      }
      return tf.concat(parts) as tf.Tensor2D;
    } finally {
      tf.dispose(parts);
    }
  }

  /**
   * The LLM's input for prompt rows (token ids, one row per question) and the pixel values of their
   * samples: the rows left-padded with `ids.pad` to one length, embedded, and their IMG_CONTEXT rows
   * (`ids.imgContext`) replaced by the visual tokens in order (`visualTokens` when given: no vision
   * pass). Steps: it pauses after each vision layer. The caller disposes `embeds`.
   */
  *inputSteps(
    rows: number[][],
    pixelValues: tf.Tensor4D | null,
    samples: Sample[],
    ids: PromptTokenIds,
    tap?: Tap,
    visualTokens?: tf.Tensor2D,
  ): Steps<LLMInput> {
    const T = Math.max(...rows.map((r) => r.length));
    const padded = rows.map((r) => [...new Array<number>(T - r.length).fill(ids.pad), ...r]);
    const attentionMask = rows.map((r) => [...new Array<number>(T - r.length).fill(0), ...r.map(() => 1)]);
    // Visual tokens given (the caller's, kept by it) are used as they are: a clone, freed below.
    const visual = visualTokens ? visualTokens.clone() : pixelValues === null ? null : yield* this.visualTokenSteps(pixelValues, samples, tap);
    try {
      yield;
      const text = this.llm.embedTokens(padded);
      try {
        return { embeds: mergeEmbeddings(text, padded, ids.imgContext, visual), attentionMask };
      } finally {
        text.dispose();
      }
    } finally {
      visual?.dispose();
    }
  }

  /**
   * Upstream's extract_feature: each tile as a single image -> [tiles, tokensPerTile(1), D] (for PVC the
   * tile's image_repeat_time frames, through the temporal layers as in chat). Caller owns the result.
   */
  extractFeature(pixelValues: tf.Tensor4D, tap?: Tap): tf.Tensor3D {
    const N = pixelValues.shape[0];
    const samples = Array.from({ length: N }, (_, i): Sample => ({ dataFlag: 1, firstTile: i, tilesPerImage: [1] }));
    return tf.tidy(() => this.visualTokens(pixelValues, samples, tap).reshape([N, this.tokensPerTile(1), -1]));
  }

  /** PVC: a streaming encoder for one video (frames in, visual tokens out, constant work per frame). */
  videoEncoder(): VideoEncoder {
    if (!this.config.pvc?.use_temporal)
      throw new Error(`${this.dir}: videoEncoder needs a PVC model with temporal layers (model_type ${this.config.model_type})`);
    return new VideoEncoder(this);
  }

  dispose(): void {
    this.vision.dispose();
    this.weights.dispose();
  }
}

/**
 * Streaming encoder for one video: `encode(frames)` takes the next frames [n, 3, S, S] (one tile each)
 * and returns their visual tokens [n * video_repeat_time, tokensPerFrame, D], the same as encoding the
 * whole video at once; work per new frame is constant (its spatial pass plus attention to the cached
 * frames). `dispose()` frees the cache.
 */
export class VideoEncoder {
  private cache = new FrameCache();

  constructor(private readonly model: VisionLanguageModel) {}

  get framesSeen(): number {
    return this.cache.frames;
  }

  encode(frames: tf.Tensor4D): tf.Tensor3D {
    return runSync(this.encodeSteps(frames));
  }

  /** An encoder that has seen the same frames, sharing their cache (see FrameCache.fork): each goes on alone. */
  fork(): VideoEncoder {
    const copy = new VideoEncoder(this.model);
    copy.cache.dispose();
    copy.cache = this.cache.fork();
    return copy;
  }

  /**
   * `encode` as steps, pausing after each vision layer. Stopped before its end (an abort), some
   * temporal layers have cached the frames and others not: go on from a `fork()` taken before instead
   * (as LiveVideo does).
   */
  *encodeSteps(frames: tf.Tensor4D): Steps<tf.Tensor3D> {
    this.model.checkPixelValues(frames);
    const repeats = this.model.config.pvc!.video_repeat_time;
    const repeated = tf.tidy(() => repeatFrames(frames, repeats));
    try {
      const hidden = yield* this.model.vision.forwardSteps(repeated, { sequences: 1, cache: this.cache });
      const tokens = tf.tidy(() => this.model.projector.forward(hidden));
      hidden.dispose();
      return tokens;
    } finally {
      if (repeated !== frames) repeated.dispose();
    }
  }

  dispose(): void {
    this.cache.dispose();
  }
}

// Live video (PVC): frames arrive one at a time, questions come at any time. PVC encodes a video
// causally (temporal attention looks only at earlier frames) and the prompt reads the frames in order
// before the question ("Frame1: <image>\nFrame2: <image>\n...question"), so the session keeps the
// vision encoder's frame cache and the LLM's KV cache of the prompt up to the last frame: a frame costs
// its own tokens, a question its own and its answer's, from a fork of the cache (the frames' cache is
// untouched and more frames can follow).
//
// Exactness: after frames 1..t, ask(q) reads the prompt chat() builds for those t frames with data flag
// 3, and the same ids (the prompt for t frames extends the one for t - 1 at every frame's </img>; a
// check says so each time). It holds while the prompt stays within max_position_embeddings: beyond it,
// InternLM2's dynamic NTK scaling would rescale every earlier position, which a kept cache cannot, so a
// frame that would pass it is refused (as is one past maxFrames).
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../errors';
import { runYielding, throwIfAborted } from '../event_loop';
import { GenerationConfig, generateSteps } from '../generation/generate';
import { KVCache } from '../llm/cache';
import { mergeEmbeddings, VideoEncoder, VisionLanguageModel } from '../model/vlm';
import { loadImage } from '../preprocess/image';
import { decodeAnswer, PVCTokenizer } from '../tokenizer';
import { promptTokenIds } from './chat';
import { preparePrompt, withImagePlaceholders } from './prompt';
import { IMG_END_TOKEN, SEPARATOR } from './template';

export interface LiveVideoOptions {
  /** Most frames the session takes (an InputError beyond). Default: as many as the context allows. */
  maxFrames?: number;
  /** Replaces the template's system message. */
  systemMessage?: string;
  /** As PromptOptions.plainText: the question tokenized as plain text. */
  plainText?: boolean;
}

export interface LiveAskOptions {
  signal?: AbortSignal;
  onToken?: (id: number) => void;
}

/** A frame: its pixel values [1, 3, S, S] (the caller keeps them), or an image file or its bytes (one tile, as load_video's frames). */
export type LiveFrame = tf.Tensor4D | string | Buffer;

export class LiveVideo {
  private encoder: VideoEncoder;
  private kv: KVCache;
  /** The prompt ids in `kv`: up to the last frame's </img>. */
  private ids: number[] = [];
  private count = 0;
  private busy = false;
  private disposed = false;
  private readonly imgEnd: number;
  readonly maxFrames: number;

  constructor(
    private readonly model: VisionLanguageModel,
    private readonly tokenizer: PVCTokenizer,
    private readonly options: LiveVideoOptions = {},
  ) {
    const maxFrames = options.maxFrames ?? Infinity;
    if (!(maxFrames === Infinity || (Number.isInteger(maxFrames) && maxFrames >= 1)))
      throw new InputError('maxFrames', `${maxFrames}: expected an integer >= 1`);
    this.maxFrames = maxFrames;
    const imgEnd = tokenizer.tokenToId(IMG_END_TOKEN);
    if (imgEnd === undefined) throw new Error(`the tokenizer has no ${IMG_END_TOKEN} token`);
    this.imgEnd = imgEnd;
    this.encoder = model.videoEncoder();
    this.kv = model.llm.newCache(1);
  }

  /** Frames added so far. */
  get frames(): number {
    return this.count;
  }

  /** Positions the session holds in the LLM's cache. */
  get positions(): number {
    return this.ids.length;
  }

  /**
   * Encodes the next frame and extends the caches by its tokens. Aborted (or failing) part way, the
   * session is as it was: the frame is not added.
   */
  async addFrame(frame: LiveFrame, options: { signal?: AbortSignal } = {}): Promise<void> {
    this.enter('addFrame');
    try {
      if (this.count >= this.maxFrames) throw new InputError('frame', `the session holds its maxFrames ${this.maxFrames} frames`);
      const S = this.model.config.image_size;
      const loaded = frame instanceof tf.Tensor ? null : await loadImage(frame, { inputSize: S, maxNum: 1 });
      const pixels = loaded?.pixelValues ?? (frame as tf.Tensor4D);
      try {
        if (pixels.shape.length !== 4 || pixels.shape[0] !== 1)
          throw new InputError('frame', `expected the pixel values of one frame [1, 3, ${S}, ${S}], got [${pixels.shape}]`);
        const prefix = this.prefixIds(this.count + 1);
        const maxPositions = this.model.config.llm.max_position_embeddings;
        if (prefix.length > maxPositions) {
          throw new InputError(
            'frame',
            `frame ${this.count + 1} would take the prompt to ${prefix.length} positions, past max_position_embeddings ${maxPositions} (live video is exact only within it)`,
          );
        }
        const newIds = prefix.slice(this.ids.length);
        // On forks of both caches, swapped in only once the frame is through: an abort leaves the session as it was.
        const encoder = this.encoder.fork();
        const kv = this.kv.fork();
        try {
          const visual = await runYielding(encoder.encodeSteps(pixels), options.signal);
          const embeds = tf.tidy(() => {
            const text = this.model.llm.embedTokens([newIds]);
            return mergeEmbeddings(text, [newIds], promptTokenIds(this.tokenizer).imgContext, visual.reshape([-1, visual.shape[2]]) as tf.Tensor2D);
          });
          visual.dispose();
          try {
            this.model.llm.rotary.reset(); // within max_position_embeddings: unscaled, as chat()'s pass over the whole prompt
            const logits = await runYielding(this.model.llm.prefillSteps(embeds, kv, { chunkSize: this.model.limits.prefillChunk }), options.signal);
            logits.dispose();
          } finally {
            embeds.dispose();
          }
        } catch (e) {
          encoder.dispose();
          kv.dispose();
          throw e;
        }
        this.encoder.dispose();
        this.kv.dispose();
        this.encoder = encoder;
        this.kv = kv;
        this.ids = prefix;
        this.count++;
      } finally {
        loaded?.pixelValues.dispose();
      }
    } finally {
      this.busy = false;
    }
  }

  /**
   * Answers `question` about the frames so far, from a fork of the session's cache (freed after): the
   * answer chat() gives on those frames (data flag 3). Greedy or sampling; beam search is refused.
   */
  async ask(
    question: string,
    generation: GenerationConfig,
    options: LiveAskOptions = {},
  ): Promise<{ answer: string; inputIds: number[]; outputIds: number[] }> {
    this.enter('ask');
    try {
      if (this.count === 0) throw new InputError('question', 'no frame yet: add one before asking');
      if (generation.numBeams > 1) throw new InputError('numBeams', 'a live session answers greedily or by sampling (numBeams 1)');
      const inputIds = this.promptIds(this.count, question);
      this.checkExtends(inputIds, `the prompt with the question`);
      const tail = inputIds.slice(this.ids.length);
      const kv = this.kv.fork();
      const embeds = this.model.llm.embedTokens([tail]);
      const outputIds: number[] = [];
      try {
        throwIfAborted(options.signal);
        this.model.llm.rotary.reset();
        const decode = (ids: readonly number[]) => this.tokenizer.decode(ids, { skipSpecialTokens: true });
        const input = { embeds, seenIds: [[this.tokenizer.bosTokenId]] };
        for await (const step of generateSteps(this.model.llm, input, generation, {
          signal: options.signal,
          cache: kv,
          prefillChunk: this.model.limits.prefillChunk,
          decode,
        })) {
          outputIds.push(step.tokens[0]);
          options.onToken?.(step.tokens[0]);
        }
      } finally {
        embeds.dispose();
        kv.dispose();
      }
      return { answer: decodeAnswer(this.tokenizer, outputIds, SEPARATOR, generation.stop), inputIds, outputIds };
    } finally {
      this.busy = false;
    }
  }

  /** Frees the caches. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.encoder.dispose();
    this.kv.dispose();
  }

  /** One call at a time: each extends or forks the caches the last one left. */
  private enter(what: string): void {
    if (this.disposed) throw new Error(`LiveVideo.${what}: the session was disposed`);
    if (this.busy) throw new Error(`LiveVideo.${what}: another addFrame or ask of this session is running (await it first)`);
    this.busy = true;
  }

  /** The ids chat() feeds the model for `frames` frames and `question`. */
  private promptIds(frames: number, question: string): number[] {
    const S = this.model.config.image_size;
    return preparePrompt(this.model, this.tokenizer, { shape: [frames, 3, S, S] }, withImagePlaceholders(question, frames, 'video'), {
      numPatchesList: new Array<number>(frames).fill(1),
      dataFlag: 3,
      systemMessage: this.options.systemMessage,
      plainText: this.options.plainText,
    }).inputIds;
  }

  /** The prompt's ids for `frames` frames up to the last frame's </img>, checked to extend the session's. */
  private prefixIds(frames: number): number[] {
    const ids = this.promptIds(frames, '');
    const prefix = ids.slice(0, ids.lastIndexOf(this.imgEnd) + 1);
    this.checkExtends(prefix, `the prompt of ${frames} frames`);
    return prefix;
  }

  private checkExtends(ids: number[], what: string): void {
    if (ids.length < this.ids.length || this.ids.some((id, i) => ids[i] !== id)) {
      throw new Error(`${what} does not extend the session's ${this.ids.length} ids (the tokenizer joined text across a frame's end)`);
    }
  }
}

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
import { AbortError, runYielding, throwIfAborted } from '../event_loop';
import { GenerationConfig, generateSteps } from '../generation/generate';
import { KVCache } from '../llm/cache';
import { mergeEmbeddings, VideoEncoder, VisionLanguageModel } from '../model/vlm';
import { loadImage } from '../preprocess/image';
import { RGBImage } from '../preprocess/resample';
import { tileImage } from '../preprocess/tiles';
import { decodeAnswer, PVCTokenizer, StreamDecoder } from '../tokenizer';
import { promptTokenIds } from './chat';
import { preparePrompt, withImagePlaceholders } from './prompt';
import { IMAGE_PLACEHOLDER, IMG_END_TOKEN, SEPARATOR } from './template';

export interface LiveVideoOptions {
  /** Most frames the session takes (an InputError beyond). Default: as many as the context allows. */
  maxFrames?: number;
  /** Most positions the frames' prompt may take (default, and at most, max_position_embeddings). */
  maxPositions?: number;
  /** Replaces the template's system message. */
  systemMessage?: string;
  /** As PromptOptions.plainText: the question tokenized as plain text. */
  plainText?: boolean;
}

export interface LiveAskOptions {
  signal?: AbortSignal;
  onToken?: (id: number) => void;
}

/**
 * A frame: its pixel values [1, 3, S, S] (the caller keeps them); or a decoded RGB frame (a
 * FrameStream's), an image file or its bytes, each made one tile as load_video makes its frames.
 */
export type LiveFrame = tf.Tensor4D | RGBImage | string | Buffer;

export class LiveVideo {
  private encoder: VideoEncoder;
  private kv: KVCache;
  /** The prompt ids in `kv`: up to the last frame's </img>. */
  private ids: number[] = [];
  private count = 0;
  /** Settles when the last call queued has finished: calls run one after another, in order. */
  private last: Promise<void> = Promise.resolve();
  /** Calls queued or running. */
  private calls = 0;
  private disposed = false;
  private readonly imgEnd: number;
  readonly maxFrames: number;
  readonly maxPositions: number;

  constructor(
    private readonly model: VisionLanguageModel,
    private readonly tokenizer: PVCTokenizer,
    private readonly options: LiveVideoOptions = {},
  ) {
    const maxFrames = options.maxFrames ?? Infinity;
    if (!(maxFrames === Infinity || (Number.isInteger(maxFrames) && maxFrames >= 1)))
      throw new InputError('maxFrames', `${maxFrames}: expected an integer >= 1`);
    this.maxFrames = maxFrames;
    const limit = model.config.llm.max_position_embeddings;
    const maxPositions = options.maxPositions ?? limit;
    if (!(Number.isInteger(maxPositions) && maxPositions >= 1 && maxPositions <= limit))
      throw new InputError('maxPositions', `${maxPositions}: expected an integer from 1 to max_position_embeddings ${limit}`);
    this.maxPositions = maxPositions;
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
   * Encodes the next frame and extends the caches by its tokens (after the calls already queued).
   * Aborted (or failing) part way, the session is as it was: the frame is not added.
   */
  async addFrame(frame: LiveFrame, options: { signal?: AbortSignal } = {}): Promise<void> {
    const release = await this.enter('addFrame', options.signal);
    try {
      if (this.count >= this.maxFrames) throw new InputError('frame', `the session holds its maxFrames ${this.maxFrames} frames`);
      const loaded = frame instanceof tf.Tensor ? null : await this.framePixels(frame);
      const pixels = loaded ?? (frame as tf.Tensor4D);
      const S = this.model.config.image_size;
      try {
        if (pixels.shape.length !== 4 || pixels.shape[0] !== 1)
          throw new InputError('frame', `expected the pixel values of one frame [1, 3, ${S}, ${S}], got [${pixels.shape}]`);
        const prefix = this.prefixIds(this.count + 1);
        const limit = this.model.config.llm.max_position_embeddings;
        if (prefix.length > Math.min(this.maxPositions, limit)) {
          throw new InputError(
            'frame',
            prefix.length > limit
              ? `frame ${this.count + 1} would take the prompt to ${prefix.length} positions, past max_position_embeddings ${limit} (live video is exact only within it)`
              : `frame ${this.count + 1} would take the prompt to ${prefix.length} positions, past the session's maxPositions ${this.maxPositions}`,
          );
        }
        const newIds = prefix.slice(this.ids.length);
        // On forks of both caches, swapped in only once the frame is through: an abort leaves the session as it was.
        const encoder = this.encoder.fork();
        const kv = this.kv.fork();
        try {
          const visual = await runYielding(encoder.encodeSteps(pixels), options.signal);
          let embeds: tf.Tensor3D;
          try {
            embeds = tf.tidy(() => {
              const text = this.model.llm.embedTokens([newIds]);
              return mergeEmbeddings(text, [newIds], promptTokenIds(this.tokenizer).imgContext, visual.reshape([-1, visual.shape[2]]) as tf.Tensor2D);
            });
          } finally {
            visual.dispose();
          }
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
        loaded?.dispose();
      }
    } finally {
      release();
    }
  }

  /**
   * Answers `question` about the frames so far (after the calls already queued), from a fork of the
   * session's cache (freed after): the answer chat() gives on those frames (data flag 3). Greedy or
   * sampling; beam search is refused.
   */
  async ask(
    question: string,
    generation: GenerationConfig,
    options: LiveAskOptions = {},
  ): Promise<{ answer: string; inputIds: number[]; outputIds: number[] }> {
    const outputIds: number[] = [];
    let inputIds: number[] = [];
    for await (const id of this.answerIds(question, generation, options, (ids) => (inputIds = ids))) outputIds.push(id);
    return { answer: decodeAnswer(this.tokenizer, outputIds, SEPARATOR, generation.stop), inputIds, outputIds };
  }

  /** As ask(), the answer as text pieces while it is generated (as PVCModel.stream). */
  async *stream(question: string, generation: GenerationConfig, options: LiveAskOptions = {}): AsyncGenerator<string> {
    const decoder = new StreamDecoder(this.tokenizer, SEPARATOR, generation.stop);
    for await (const id of this.answerIds(question, generation, options)) {
      const piece = decoder.push(id);
      if (piece) yield piece;
    }
    const rest = decoder.finish();
    if (rest) yield rest;
  }

  private async *answerIds(
    question: string,
    generation: GenerationConfig,
    options: LiveAskOptions,
    onPrompt?: (inputIds: number[]) => void,
  ): AsyncGenerator<number> {
    const release = await this.enter('ask', options.signal);
    try {
      if (this.count === 0) throw new InputError('question', 'no frame yet: add one before asking');
      if (generation.numBeams > 1) throw new InputError('numBeams', 'a live session answers greedily or by sampling (numBeams 1)');
      const inputIds = this.promptIds(this.count, question);
      this.checkExtends(inputIds, `the prompt with the question`);
      onPrompt?.(inputIds);
      const tail = inputIds.slice(this.ids.length);
      const kv = this.kv.fork();
      let embeds: tf.Tensor3D | undefined;
      try {
        embeds = this.model.llm.embedTokens([tail]);
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
          options.onToken?.(step.tokens[0]);
          yield step.tokens[0];
        }
      } finally {
        embeds?.dispose();
        kv.dispose();
      }
    } finally {
      release();
    }
  }

  /** The prompt's ids ask(question) would read after the frames so far (the frames' own included). */
  prompt(question: string): number[] {
    return this.promptIds(this.count, question);
  }

  /** Frees the caches (once the call running, if any, has finished; the calls waiting are refused). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const free = () => {
      this.encoder.dispose();
      this.kv.dispose();
    };
    if (this.calls === 0) free();
    else void this.last.then(free);
  }

  /**
   * Waits for the calls queued before (each extends or forks the caches the last one left); resolves
   * to the function that lets the next one run. Aborted while waiting, the call leaves the queue.
   */
  private async enter(what: string, signal?: AbortSignal): Promise<() => void> {
    const closed = () => new Error(`LiveVideo.${what}: the session was disposed`);
    if (this.disposed) throw closed();
    const before = this.last;
    let done!: () => void;
    this.last = new Promise<void>((resolve) => (done = resolve));
    this.calls++;
    const release = () => {
      this.calls--;
      done();
    };
    try {
      throwIfAborted(signal);
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(new AbortError(signal!.reason));
        signal?.addEventListener('abort', onAbort, { once: true });
        void before.then(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        });
      });
      if (this.disposed) throw closed();
    } catch (e) {
      void before.then(release); // this call's turn passes on when it comes
      throw e;
    }
    return release;
  }

  /** A frame as one tile [1, 3, S, S] (dynamic_preprocess with max_num 1, as load_video). */
  private async framePixels(frame: RGBImage | string | Buffer): Promise<tf.Tensor4D> {
    const S = this.model.config.image_size;
    if (typeof frame === 'string' || Buffer.isBuffer(frame)) return (await loadImage(frame, { inputSize: S, maxNum: 1 })).pixelValues;
    const { pixels } = await tileImage(frame, { minNum: 1, maxNum: 1, imageSize: S, useThumbnail: true });
    return tf.tensor4d(pixels, [1, 3, S, S]);
  }

  /** The ids chat() feeds the model for `frames` frames and `question`. */
  private promptIds(frames: number, question: string): number[] {
    if (question.includes(IMAGE_PLACEHOLDER)) throw new InputError('question', `the session places its frames: a question cannot hold ${IMAGE_PLACEHOLDER}`);
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

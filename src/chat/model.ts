// PVCModel: a converted InternVL2 / PVC-InternVL2 model with upstream's chat(), batch_chat() and a
// streaming variant.
//
//   question (+ history) -> internlm2-chat prompt -> <image> -> <img><IMG_CONTEXT> x n</img>
//   -> ids -> embeddings, IMG_CONTEXT rows replaced by the visual tokens in order
//   -> InternLM2 generation (eos <|im_end|>) -> answer
import * as tf from '@tensorflow/tfjs';
import { BackendName, initBackend } from '../backend';
import { loadConfig, ModelConfig } from '../config';
import { GenerationConfig, GenerationRequest, generateSteps, resolveGenerationConfig } from '../generation/generate';
import { Weights } from '../io/weights';
import { InternLM2 } from '../llm/internlm2';
import { Tap } from '../nn/layers';
import { decodeAnswer, PVCTokenizer, StreamDecoder } from '../tokenizer';
import { InternVisionModel } from '../vision/intern_vit';
import { Projector } from '../vision/projector';
import { pvcVisualTokens, repeatsFor, Sample, TemporalEncoder, TemporalVision } from '../vision/temporal';
import { expandTaps, TapRecorder, tapNames } from './inspect';
import { buildPrompt, expandImagePlaceholders, History, IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, SEPARATOR } from './template';

/** Generation options: camelCase or upstream's snake_case keys (max_new_tokens, do_sample, ...). */
export type GenerationOptions = GenerationRequest;

export interface ChatOptions {
  /** Earlier (question, answer) turns. */
  history?: History | null;
  returnHistory?: boolean;
  /** Tiles per image, in order of the <image> placeholders. Default: one image with every tile. */
  numPatchesList?: number[];
  /** PVC's per-sample kind: 1 single image, 2 multi-image, 3 video (one per sample with splitSizes). */
  dataFlag?: DataFlag | DataFlag[];
  /** Tiles per sample (upstream's split_sizes); default: all tiles are one sample. */
  splitSizes?: number[];
  signal?: AbortSignal;
  /** Called with each generated token id (timing, inspection). */
  onToken?: (id: number) => void;
}

export interface LoadOptions {
  backend?: BackendName;
  /** Progress of reading the weights (bytes). */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

export interface InspectRequest {
  /** Default: the tokenizer of the model's directory. */
  tokenizer?: PVCTokenizer;
  pixelValues?: tf.Tensor4D | null;
  /** A chat question (templated as chat() does), or the prompt ids themselves. */
  question?: string;
  inputIds?: number[];
  history?: History | null;
  numPatchesList?: number[];
  dataFlag?: DataFlag | DataFlag[];
  splitSizes?: number[];
  /** Tap names or globs: `vision.layers.*.out`, `llm.layers.{0..3}.attn.probs`, ... (see src/chat/inspect.ts). */
  taps: string[];
  /** Generate too, recording the taps of every generation step. */
  generate?: GenerationOptions;
  /** Return plain arrays ({shape, data}) instead of tensors. */
  asArrays?: boolean;
}

export interface TapArray {
  shape: number[];
  data: Float32Array;
}

export interface Inspection<T = tf.Tensor> {
  /** The prompt pass, by tap name. */
  taps: Record<string, T>;
  /** steps[k]: the generation pass that read generated token k. */
  steps: Record<string, T>[];
  prompt: string | null;
  inputIds: number[];
  outputIds: number[];
  /** Positions of the IMG_CONTEXT tokens in inputIds (where the visual tokens sit). */
  imageTokenPositions: number[];
  /** Frees the returned tensors. */
  dispose(): void;
}

export interface PreparedPrompt {
  prompt: string;
  /** The question as stored in history (with the automatic "<image>\n"). */
  question: string;
  inputIds: number[];
}

export type DataFlag = 1 | 2 | 3;

function checkDataFlag(dataFlag: unknown): void {
  for (const flag of Array.isArray(dataFlag) ? dataFlag : [dataFlag]) {
    if (flag !== undefined && flag !== 1 && flag !== 2 && flag !== 3) {
      throw new Error(`dataFlag ${JSON.stringify(flag)}: expected 1 (single image), 2 (multi-image) or 3 (video)`);
    }
  }
}

/**
 * The samples of a request: splitSizes (tiles per sample) partitions numPatchesList's entries; each
 * sample has its own dataFlag.
 */
function samplesOf(numPatchesList: number[], dataFlag: DataFlag | DataFlag[] | undefined, splitSizes?: number[]): Sample[] {
  const total = numPatchesList.reduce((a, b) => a + b, 0);
  const sizes = splitSizes ?? (total > 0 ? [total] : []);
  const flags = Array.isArray(dataFlag) ? dataFlag : sizes.map(() => dataFlag);
  if (flags.length !== sizes.length) throw new Error(`dataFlag has ${flags.length} entries but there are ${sizes.length} samples (splitSizes [${sizes}])`);
  const samples: Sample[] = [];
  let entry = 0;
  let start = 0;
  sizes.forEach((size, s) => {
    const list: number[] = [];
    let tiles = 0;
    while (tiles < size && entry < numPatchesList.length) tiles += (list.push(numPatchesList[entry]), numPatchesList[entry++]);
    if (tiles !== size) throw new Error(`splitSizes [${sizes}] does not follow numPatchesList [${numPatchesList}] (sample ${s} would take ${tiles} tiles, not ${size})`);
    samples.push({ dataFlag: flags[s], start, numPatchesList: list });
    start += size;
  });
  if (entry !== numPatchesList.length) throw new Error(`splitSizes [${sizes}] covers ${start} of the ${total} tiles`);
  return samples;
}

export class PVCModel {
  readonly vision: InternVisionModel;
  readonly projector: Projector;
  readonly llm: InternLM2;
  /** PVC's temporal layers (model_type pvc_internvl with use_temporal), else null. */
  readonly temporal: TemporalVision | null;

  private constructor(readonly dir: string, readonly config: ModelConfig, readonly weights: Weights) {
    this.vision = new InternVisionModel(weights, config);
    this.projector = new Projector(weights, config);
    this.llm = new InternLM2(weights, config.llm);
    this.temporal = config.pvc?.use_temporal ? new TemporalVision(weights, config, this.vision) : null;
  }

  /** Loads a model converted by pvc-convert. */
  static async load(dir: string, options: LoadOptions = {}): Promise<PVCModel> {
    await initBackend({ backend: options.backend });
    const config = loadConfig(dir);
    const weights = Weights.load(dir, { onProgress: options.onProgress });
    try {
      return new PVCModel(dir, config, weights);
    } catch (e) {
      weights.dispose();
      throw e;
    }
  }

  /** Visual tokens per tile (per frame for PVC). */
  get numImageToken(): number {
    return this.config.num_image_token;
  }

  /** IMG_CONTEXT tokens per tile for a sample of this kind: num_image_token, times PVC's repeat count. */
  tokensPerTile(dataFlag?: DataFlag): number {
    return this.numImageToken * (this.config.pvc ? repeatsFor(this.config.pvc, dataFlag) : 1);
  }

  /**
   * The visual tokens of a request, in the order of the prompt's IMG_CONTEXT slots: [tokens, D].
   * InternVL2: each tile's tokens. PVC: each tile (or each clip) as a temporal sequence (see temporal.ts).
   */
  visualTokens(pixelValues: tf.Tensor4D, samples: Sample[], tap?: Tap): tf.Tensor2D {
    this.checkPixelValues(pixelValues);
    return tf.tidy(() => {
      if (this.temporal !== null) return pvcVisualTokens(this.temporal, this.projector, pixelValues, samples, tap);
      const features = this.extractFeature(pixelValues, tap);
      return features.reshape([-1, features.shape[2]]) as tf.Tensor2D;
    });
  }

  /** PVC: a streaming encoder for one clip (frames in, visual tokens out, constant work per frame). */
  videoEncoder(): TemporalEncoder {
    if (this.temporal === null) throw new Error(`${this.dir}: videoEncoder needs a PVC model with temporal layers (model_type ${this.config.model_type})`);
    return new TemporalEncoder(this.temporal, this.projector);
  }

  /** Upstream's extract_feature: pixel values [N, 3, S, S] -> visual tokens [N, T, D]. Caller owns the result. */
  extractFeature(pixelValues: tf.Tensor4D, tap?: Tap): tf.Tensor3D {
    this.checkPixelValues(pixelValues);
    return tf.tidy(() => {
      const features = this.projector.forward(this.vision.forward(pixelValues, { tap }));
      if (tap) tap('projector.out', features);
      return features;
    });
  }

  private checkPixelValues(pixelValues: tf.Tensor): void {
    const S = this.config.image_size;
    const [, c, h, w] = pixelValues.shape;
    if (pixelValues.rank !== 4 || c !== 3 || h !== S || w !== S) {
      throw new Error(`pixelValues has shape [${pixelValues.shape}]; expected [tiles, 3, ${S}, ${S}]`);
    }
  }

  /**
   * The prompt and ids chat() would feed the model, following upstream: "<image>\n" is prepended when
   * there is no history, pixels are given and the question has no <image>; each numPatchesList entry
   * expands the next <image>.
   */
  preparePrompt(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, options: ChatOptions = {}): PreparedPrompt & { numPatchesList: number[]; samples: Sample[] } {
    checkDataFlag(options.dataFlag);
    if (pixelValues !== null) this.checkPixelValues(pixelValues);
    const history = options.history ?? null;
    if (history === null && pixelValues !== null && !question.includes(IMAGE_PLACEHOLDER)) question = `${IMAGE_PLACEHOLDER}\n${question}`;
    const numPatchesList = options.numPatchesList ?? (pixelValues !== null ? [pixelValues.shape[0]] : []);
    const tiles = pixelValues?.shape[0] ?? 0;
    const total = numPatchesList.reduce((a, b) => a + b, 0);
    if (total !== tiles) throw new Error(`numPatchesList [${numPatchesList}] sums to ${total}, but pixelValues has ${tiles} tiles`);
    const samples = samplesOf(numPatchesList, options.dataFlag, options.splitSizes);
    const flags = samples.flatMap((s) => s.numPatchesList.map(() => s.dataFlag));
    const template = buildPrompt(this.config.system_message, history ?? [], question);
    const prompt = expandImagePlaceholders(template, numPatchesList, numPatchesList.map((_, k) => this.tokensPerTile(flags[k])));
    return { prompt, question, inputIds: tokenizer.encode(prompt), numPatchesList, samples };
  }

  /** Embeddings of `ids` rows with the IMG_CONTEXT rows replaced by `visual` rows, in order. */
  private mergeEmbeddings(ids: number[][], imgContextId: number, visual: tf.Tensor2D | null): tf.Tensor3D {
    const slots = ids.flat().filter((id) => id === imgContextId).length;
    const available = visual?.shape[0] ?? 0;
    if (slots !== available) throw new Error(`the prompt has ${slots} ${IMG_CONTEXT_TOKEN} tokens but the images give ${available} visual tokens`);
    const text = this.llm.embedTokens(ids);
    if (visual === null) return text;
    return tf.tidy(() => {
      const [B, T, D] = text.shape;
      // Row r of the flattened batch takes visual row k if it is the k-th IMG_CONTEXT, else its text row.
      const index: number[] = [];
      let k = 0;
      for (const id of ids.flat()) index.push(id === imgContextId ? B * T + k++ : index.length);
      const table = tf.concat([text.reshape([B * T, D]), visual]);
      text.dispose();
      return tf.gather(table, tf.tensor1d(index, 'int32')).reshape([B, T, D]) as tf.Tensor3D;
    });
  }

  private generationConfig(tokenizer: PVCTokenizer, options: GenerationOptions): GenerationConfig {
    const eos = tokenizer.tokenToId(SEPARATOR);
    if (eos === undefined) throw new Error(`the tokenizer has no ${SEPARATOR} token`);
    const config = resolveGenerationConfig(options, { eosTokenId: [eos], padTokenId: tokenizer.padTokenId });
    // chat() always stops at <|im_end|> (upstream overwrites eos_token_id).
    return { ...config, eosTokenId: [eos] };
  }

  /** Runs generation for prepared rows and yields each step's tokens; frees everything it makes. */
  private async *steps(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, samples: Sample[], rows: number[][], genOptions: GenerationOptions, signal?: AbortSignal, tap?: Tap) {
    const config = this.generationConfig(tokenizer, genOptions);
    const imgContextId = tokenizer.tokenToId(IMG_CONTEXT_TOKEN);
    if (imgContextId === undefined) throw new Error(`the tokenizer has no ${IMG_CONTEXT_TOKEN} token`);
    const T = Math.max(...rows.map((r) => r.length));
    const padded = rows.map((r) => [...new Array(T - r.length).fill(tokenizer.padTokenId), ...r]);
    const attentionMask = rows.map((r) => [...new Array(T - r.length).fill(0), ...r.map(() => 1)]);
    const visual = pixelValues === null ? null : this.visualTokens(pixelValues, samples, tap);
    let embeds: tf.Tensor3D;
    try {
      embeds = this.mergeEmbeddings(padded, imgContextId, visual);
    } finally {
      visual?.dispose();
    }
    try {
      // As upstream's generate() from embeddings, the ids the logits processors see start at <s>.
      const decode = (ids: readonly number[]) => tokenizer.decode(ids, { skipSpecialTokens: true });
      yield* generateSteps(this.llm, { embeds, attentionMask, seenIds: rows.map(() => [tokenizer.bosTokenId]) }, config, { signal, tap, decode });
    } finally {
      embeds.dispose();
    }
  }

  /**
   * The prompt chat() builds and the token ids it generates (eos included), without decoding them.
   * Beam search (numBeams > 1): outputIds is the best sequence; `sequences` holds all
   * numReturnSequences of them (padded as upstream's generate() pads) and `sequenceScores` their scores.
   */
  async chatIds(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): Promise<PreparedPrompt & { outputIds: number[]; sequences?: number[][]; sequenceScores?: number[] }> {
    const prepared = this.preparePrompt(tokenizer, pixelValues, question, options);
    const sequences: number[][] = [[]];
    let sequenceScores: number[] | undefined;
    for await (const step of this.steps(tokenizer, pixelValues, prepared.samples, [prepared.inputIds], generation, options.signal)) {
      step.tokens.forEach((t, r) => (sequences[r] ??= []).push(t));
      sequenceScores = step.sequenceScores;
      options.onToken?.(step.tokens[0]);
    }
    const beams = sequenceScores ? { sequences, sequenceScores } : {};
    return { prompt: prepared.prompt, question: prepared.question, inputIds: prepared.inputIds, outputIds: sequences[0], ...beams };
  }

  /** Upstream's chat(): the answer (and the history with this turn appended, with returnHistory). */
  async chat(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions, options: ChatOptions & { returnHistory: true }): Promise<{ response: string; history: History }>;
  async chat(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): Promise<string>;
  async chat(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): Promise<string | { response: string; history: History }> {
    const prepared = await this.chatIds(tokenizer, pixelValues, question, generation, options);
    const response = decodeAnswer(tokenizer, prepared.outputIds, SEPARATOR, this.generationConfig(tokenizer, generation).stop);
    if (!options.returnHistory) return response;
    return { response, history: [...(options.history ?? []), [prepared.question, response]] };
  }

  /**
   * chat() as a stream of text pieces whose concatenation is chat()'s answer. With beam search the
   * pieces come only once the search is over (no beam is final before).
   */
  async *stream(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): AsyncGenerator<string> {
    const prepared = this.preparePrompt(tokenizer, pixelValues, question, options);
    const decoder = new StreamDecoder(tokenizer, SEPARATOR, this.generationConfig(tokenizer, generation).stop);
    for await (const step of this.steps(tokenizer, pixelValues, prepared.samples, [prepared.inputIds], generation, options.signal)) {
      options.onToken?.(step.tokens[0]);
      const piece = decoder.push(step.tokens[0]);
      if (piece) yield piece;
    }
    const rest = decoder.finish();
    if (rest) yield rest;
  }

  /** Upstream's batch_chat(): several questions at once (left-padded), no history. */
  async batchChat(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, questions: string[], generation: GenerationOptions = {}, options: { numPatchesList?: number[]; dataFlag?: DataFlag | DataFlag[]; signal?: AbortSignal } = {}): Promise<string[]> {
    checkDataFlag(options.dataFlag);
    const numPatchesList = options.numPatchesList ?? (pixelValues !== null ? [pixelValues.shape[0]] : questions.map(() => 0));
    if (numPatchesList.length !== questions.length) {
      throw new Error(`batchChat: ${questions.length} questions but numPatchesList has ${numPatchesList.length} entries`);
    }
    if (pixelValues !== null) this.checkPixelValues(pixelValues);
    const tiles = pixelValues?.shape[0] ?? 0;
    if (numPatchesList.reduce((a, b) => a + b, 0) !== tiles) throw new Error(`numPatchesList [${numPatchesList}] does not sum to the ${tiles} tiles of pixelValues`);
    // One sample per question.
    const samples = pixelValues === null ? [] : samplesOf(numPatchesList, options.dataFlag, numPatchesList);
    const rows = questions.map((q, i) => {
      if (pixelValues !== null && !q.includes(IMAGE_PLACEHOLDER)) q = `${IMAGE_PLACEHOLDER}\n${q}`;
      const images = pixelValues === null ? [] : [numPatchesList[i]];
      const prompt = expandImagePlaceholders(buildPrompt(this.config.system_message, [], q), images, images.map(() => this.tokensPerTile(samples[i].dataFlag)));
      return tokenizer.encode(prompt);
    });
    // Beam search with numReturnSequences n gives n answers per question, as upstream's batch_chat.
    const out: number[][] = [];
    for await (const step of this.steps(tokenizer, pixelValues, samples, rows, generation, options.signal)) step.tokens.forEach((t, b) => (out[b] ??= []).push(t));
    const stop = this.generationConfig(tokenizer, generation).stop;
    return Array.from({ length: Math.max(rows.length, out.length) }, (_, r) => decodeAnswer(tokenizer, out[r] ?? [], SEPARATOR, stop));
  }

  private ownTokenizer: PVCTokenizer | null = null;

  /** The tokenizer converted with the model (loaded on first use). */
  tokenizer(): PVCTokenizer {
    this.ownTokenizer ??= PVCTokenizer.load(this.dir);
    return this.ownTokenizer;
  }

  /**
   * Runs a prompt (and optionally generation) recording the selected taps. The returned tensors are
   * the caller's: `dispose()` them (or ask for arrays). Without taps the model runs exactly as in chat().
   */
  async inspect(request: InspectRequest & { asArrays: true }): Promise<Inspection<TapArray>>;
  async inspect(request: InspectRequest): Promise<Inspection<tf.Tensor>>;
  async inspect(request: InspectRequest): Promise<Inspection<tf.Tensor> | Inspection<TapArray>> {
    const tokenizer = request.tokenizer ?? this.tokenizer();
    const pixelValues = request.pixelValues ?? null;
    const recorder = new TapRecorder(expandTaps(request.taps, tapNames(this.config)));
    let prompt: string | null = null;
    let inputIds: number[];
    let samples: Sample[];
    if (request.question !== undefined) {
      const prepared = this.preparePrompt(tokenizer, pixelValues, request.question, request);
      ({ prompt, inputIds, samples } = prepared);
    } else if (request.inputIds !== undefined) {
      inputIds = request.inputIds;
      samples = pixelValues === null ? [] : samplesOf(request.numPatchesList ?? [pixelValues.shape[0]], request.dataFlag, request.splitSizes);
    } else {
      throw new Error('inspect: give a question or inputIds');
    }
    const outputIds: number[] = [];
    const dropAll = () => {
      recorder.prompt.forEach((list) => tf.dispose(list));
      recorder.steps.forEach((m) => tf.dispose([...m.values()]));
    };
    try {
      for await (const step of this.steps(tokenizer, pixelValues, samples, [inputIds], request.generate ?? { maxNewTokens: 0 }, undefined, recorder.tap)) {
        outputIds.push(step.tokens[0]);
        recorder.step = step.step; // the next pass reads this token
      }
    } catch (e) {
      dropAll();
      throw e;
    }
    const imgContext = tokenizer.tokenToId(IMG_CONTEXT_TOKEN);
    const base = {
      prompt,
      inputIds,
      outputIds,
      imageTokenPositions: inputIds.flatMap((id, i) => (id === imgContext ? [i] : [])),
    };
    const taps = recorder.promptValues();
    const steps = recorder.steps.map((m) => Object.fromEntries(m));
    if (!request.asArrays) {
      return { ...base, taps, steps, dispose: () => tf.dispose([...Object.values(taps), ...steps.flatMap((s) => Object.values(s))]) };
    }
    const toArray = (t: tf.Tensor): TapArray => {
      const out = { shape: t.shape, data: t.dataSync() as Float32Array };
      t.dispose();
      return out;
    };
    const mapValues = (r: Record<string, tf.Tensor>) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, toArray(v)]));
    return { ...base, taps: mapValues(taps), steps: steps.map(mapValues), dispose: () => {} };
  }

  dispose(): void {
    this.vision.dispose();
    this.weights.dispose();
  }
}

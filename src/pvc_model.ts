// PVCModel, the model as applications use it: a VisionLanguageModel (src/model/) with upstream's
// chat(), batch_chat(), a streaming chat (src/chat/) and layer inspection (src/inspect/). Each method
// is the function of that folder applied to this model and its own tokenizer (or options.tokenizer).
import type * as tf from '@tensorflow/tfjs';
import { BackendInfo, BackendName, cpuHasBf16Instructions, initBackend } from './backend';
import {
  answerOf,
  chatGenerationConfig,
  batchChat,
  BatchChatOptions,
  ChatIds,
  ChatOptions,
  ChatTurn,
  GenerationOptions,
  prepareChat,
  RunOptions,
  runTurn,
  streamTurn,
} from './chat/chat';
import { LiveVideo, LiveVideoOptions } from './chat/live';
import { PromptOptions } from './chat/prompt';
import { History } from './chat/template';
import { loadConfig, ModelConfig } from './config';
import { ContinuousBatcher } from './generation/batch';
import { GenerationConfig } from './generation/config';
import { Inspection, inspect, InspectRequest, TapArray } from './inspect/inspect';
import { renderInspectionHTML, ReportInputs, ReportOptions } from './inspect/report';
import { readManifest, WEIGHT_PRECISIONS, WeightPrecision, Weights } from './io/weights';
import { kernelsFor } from './model/kernels';
import { LoadOptions, VisionLanguageModel } from './model/vlm';
import { PVCTokenizer } from './tokenizer';

/** What PVCModel and WorkerModel (a PVCModel in a worker thread) both offer. */
export interface ChatModel {
  readonly dir: string;
  readonly config: ModelConfig;
  chat(
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions,
    options: ChatOptions & { returnHistory: true },
  ): Promise<{ response: string; history: History }>;
  chat(pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): Promise<string>;
  chatIds(pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): Promise<ChatIds>;
  stream(pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): AsyncGenerator<string>;
  batchChat(pixelValues: tf.Tensor4D | null, questions: string[], generation?: GenerationOptions, options?: BatchChatOptions): Promise<string[]>;
  dispose(): void | Promise<void>;
}

export class PVCModel extends VisionLanguageModel implements ChatModel {
  private ownTokenizer: PVCTokenizer | null = null;

  /** Loads a model converted by pvc-convert, with the kernels of the backend in use. */
  static async load(dir: string, options: LoadOptions = {}): Promise<PVCModel> {
    const precision = options.weights ?? 'float32';
    const matmul = options.matmul ?? 'exact';
    if (!WEIGHT_PRECISIONS.includes(precision)) throw new Error(`weights '${precision}': expected one of ${WEIGHT_PRECISIONS.join(', ')}`);
    if (matmul !== 'exact' && matmul !== 'fast') throw new Error(`matmul '${matmul}': expected exact or fast`);
    if (matmul === 'fast' && precision !== 'bfloat16')
      throw new Error(`matmul 'fast' multiplies bfloat16 weights: it needs weights 'bfloat16' (weights are '${precision}')`);
    const backend = await initBackend({ backend: options.backend });
    const config = loadConfig(dir);
    checkFits(dir, backend.name, precision, matmul);
    if (matmul === 'fast') warnIfNoBf16Kernel(backend);
    const kernels = kernelsFor(backend.name, matmul);
    // Held weights that Linear wants as [out, in] are transposed as they load (one copy, never two).
    const transpose = kernels.linearLayout === 'out-in' ? readByLinear : undefined;
    const weights = Weights.load(dir, { precision, transpose, onProgress: options.onProgress });
    try {
      const model = new PVCModel(dir, config, weights, kernels);
      Object.assign(model.limits, options.limits);
      return model;
    } catch (e) {
      weights.dispose();
      throw e;
    }
  }

  /** The tokenizer converted with the model (loaded on first use). */
  get tokenizer(): PVCTokenizer {
    this.ownTokenizer ??= PVCTokenizer.load(this.dir);
    return this.ownTokenizer;
  }

  /** chat()'s generation config for these options (transformers' defaults under them, eos <|im_end|>); an InputError names a bad one. */
  generationConfig(generation: GenerationOptions = {}, tokenizer: PVCTokenizer = this.tokenizer): GenerationConfig {
    return chatGenerationConfig(tokenizer, generation);
  }

  /**
   * The turn chat() would run, validated and tokenized, nothing computed: its prompt, ids, samples and
   * generation config (`options.generation`, from generationConfig(); default greedy, 20 tokens). Run it
   * with `answer` or `streamAnswer`.
   */
  prepareChat(
    pixelValues: tf.Tensor4D | null,
    question: string,
    options: PromptOptions & { generation?: GenerationConfig; tokenizer?: PVCTokenizer; visualTokens?: tf.Tensor2D } = {},
  ): ChatTurn {
    const tokenizer = options.tokenizer ?? this.tokenizer;
    return prepareChat(this, tokenizer, pixelValues, question, options.generation ?? this.generationConfig({}, tokenizer), options);
  }

  /**
   * A live video session (PVC): frames added one at a time, questions answered about the frames so far
   * at the cost of the question and its answer (see chat/live.ts). The caller disposes it.
   */
  liveVideo(options: LiveVideoOptions & { tokenizer?: PVCTokenizer } = {}): LiveVideo {
    return new LiveVideo(this, options.tokenizer ?? this.tokenizer, options);
  }

  /**
   * A continuous batch for this model: turns run with `{ batcher }` in their options decode together
   * (see RunOptions.batcher), prompts prefilled in chunks of limits.prefillChunk.
   */
  createBatcher(): ContinuousBatcher {
    return new ContinuousBatcher(this.llm, { prefillChunk: this.limits.prefillChunk });
  }

  /** A prepared turn's answer (and its ids). */
  async answer(turn: ChatTurn, options: RunOptions & { tokenizer?: PVCTokenizer } = {}): Promise<ChatIds & { answer: string }> {
    const tokenizer = options.tokenizer ?? this.tokenizer;
    const ids = await runTurn(this, tokenizer, turn, options);
    return { ...ids, answer: answerOf(tokenizer, turn, ids.outputIds) };
  }

  /** A prepared turn's answer as text pieces. */
  streamAnswer(turn: ChatTurn, options: RunOptions & { tokenizer?: PVCTokenizer } = {}): AsyncGenerator<string> {
    return streamTurn(this, options.tokenizer ?? this.tokenizer, turn, options);
  }

  /** chat()'s turn and the tokenizer it reads with. */
  private turn(pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions, options: ChatOptions): [ChatTurn, PVCTokenizer] {
    const tokenizer = options.tokenizer ?? this.tokenizer;
    return [prepareChat(this, tokenizer, pixelValues, question, chatGenerationConfig(tokenizer, generation), options), tokenizer];
  }

  /** The prompt chat() builds and the token ids it generates (eos included), without decoding them. */
  chatIds(pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): Promise<ChatIds> {
    const [turn, tokenizer] = this.turn(pixelValues, question, generation, options);
    return runTurn(this, tokenizer, turn, options);
  }

  /** Upstream's chat(): the answer (and the history with this turn appended, with returnHistory). */
  chat(
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions,
    options: ChatOptions & { returnHistory: true },
  ): Promise<{ response: string; history: History }>;
  chat(pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): Promise<string>;
  async chat(
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions = {},
    options: ChatOptions = {},
  ): Promise<string | { response: string; history: History }> {
    const [turn, tokenizer] = this.turn(pixelValues, question, generation, options);
    const response = answerOf(tokenizer, turn, (await runTurn(this, tokenizer, turn, options)).outputIds);
    if (!options.returnHistory) return response;
    return { response, history: [...(options.history ?? []), [turn.question, response]] };
  }

  /** chat() as a stream of text pieces whose concatenation is chat()'s answer. */
  stream(pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): AsyncGenerator<string> {
    const [turn, tokenizer] = this.turn(pixelValues, question, generation, options);
    return streamTurn(this, tokenizer, turn, options);
  }

  /** Upstream's batch_chat(): several questions at once (left-padded), no history. */
  batchChat(pixelValues: tf.Tensor4D | null, questions: string[], generation: GenerationOptions = {}, options: BatchChatOptions = {}): Promise<string[]> {
    return batchChat(this, options.tokenizer ?? this.tokenizer, pixelValues, questions, generation, options);
  }

  /**
   * Runs a prompt (and optionally generation) recording the selected taps (see src/inspect/inspect.ts).
   * `toHTML(inputs)` on the result renders it as one self-contained HTML report (src/inspect/report.ts).
   */
  inspect(request: InspectRequest & { asArrays: true }): Promise<Inspection<TapArray> & InspectionReport>;
  inspect(request: InspectRequest): Promise<Inspection<tf.Tensor> & InspectionReport>;
  async inspect(request: InspectRequest): Promise<(Inspection<tf.Tensor> | Inspection<TapArray>) & InspectionReport> {
    const tokenizer = request.tokenizer ?? this.tokenizer;
    const result = await inspect(this, tokenizer, request);
    return Object.assign(result, {
      toHTML: (inputs?: ReportInputs, options?: ReportOptions) => renderInspectionHTML(this, tokenizer, result, inputs, options),
    });
  }
}

/** The 2-D weights read by a Linear layer: all but the token embedding (rows looked up) and the patch embedding (a plain matMul). */
function readByLinear(name: string): boolean {
  return name !== 'llm.embed.weight' && name !== 'vision.embeddings.patch.weight';
}

/** wasm's heap is 4 GiB and XNNPACK keeps a packed copy of each weight: past this, a model cannot load there. */
const WASM_WEIGHT_BYTES = 1.8 * 2 ** 30;

/** Refuses, before reading any weight, a model or mode the backend cannot hold, naming what would work. */
function checkFits(dir: string, backend: BackendName, precision: WeightPrecision, matmul: 'exact' | 'fast'): void {
  if (precision !== 'float32' && backend !== 'tensorflow' && backend !== 'webgpu') {
    throw new Error(
      `weights '${precision}' need the tensorflow backend (@tensorflow/tfjs-node or tfjs-node-gpu) or webgpu, ` +
        `not ${backend}; on ${backend} load with weights 'float32'`,
    );
  }
  if (matmul === 'fast' && backend !== 'tensorflow')
    throw new Error(`matmul 'fast' runs libtensorflow's bf16 kernels: it needs the tensorflow backend, not ${backend}`);
  if (backend !== 'wasm') return;
  const bytes = Object.values(readManifest(dir).tensors).reduce((a, t) => a + t.shape.reduce((x, d) => x * d, 1) * 4, 0);
  if (bytes > WASM_WEIGHT_BYTES) {
    throw new Error(
      `${dir}: ${(bytes / 2 ** 30).toFixed(1)} GiB of float32 weights cannot load on wasm (a 4 GiB heap that also holds XNNPACK's packed copy of each weight); ` +
        `use the tensorflow backend, with weights 'bfloat16' (${(bytes / 2 ** 31).toFixed(1)} GiB) or 'int8' where memory is short`,
    );
  }
}

/**
 * matmul 'fast' on a CPU without AVX512-BF16 or AMX-BF16 loads and runs, but slower than 'exact': oneDNN has
 * no bf16 product there and falls back (measured on an AVX2 machine: the decode product at exact's speed,
 * the full-size prefill 2.8x slower). Said once per load, as a Node warning (process.on('warning')).
 */
function warnIfNoBf16Kernel(backend: BackendInfo): void {
  if (backend.name !== 'tensorflow' || !backend.device?.startsWith('CPU') || cpuHasBf16Instructions() !== false) return;
  process.emitWarning(
    "matmul 'fast' on a CPU without AVX512-BF16 or AMX-BF16 (/proc/cpuinfo): libtensorflow has no fast bf16 product here " +
      "and runs slower than matmul 'exact', which also gives float32's numbers; load with matmul 'exact' (README, \"Weights in memory\")",
    { type: 'PVCPerformanceWarning', code: 'PVC_FAST_WITHOUT_BF16' },
  );
}

export interface InspectionReport {
  /** The inspection as one self-contained HTML page (call before dispose()); see src/inspect/report.ts. */
  toHTML(inputs?: ReportInputs, options?: ReportOptions): Promise<string>;
}

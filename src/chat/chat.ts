// Upstream's chat() (a turn: prepareChat, then runTurn or streamTurn) and batch_chat() over a
// VisionLanguageModel:
//
//   question (+ history) -> prompt (./prompt.ts) -> ids, generation options resolved: a ChatTurn
//   -> model.inputSteps (embeddings with the visual tokens merged) -> InternLM2 generation (eos
//   <|im_end|>) -> answer
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../errors';
import { runYielding, throwIfAborted } from '../event_loop';
import { GenerationConfig, GenerationRequest, resolveGenerationConfig } from '../generation/config';
import { ContinuousBatcher } from '../generation/batch';
import { generateSteps, GenerationStep } from '../generation/generate';
import { Tap } from '../nn/layers';
import { DataFlag, Sample } from '../model/samples';
import { PromptTokenIds, VisionLanguageModel } from '../model/vlm';
import { decodeAnswer, PVCTokenizer, StreamDecoder } from '../tokenizer';
import { preparePrompt, PreparedPrompt, prepareBatchPrompts, PromptOptions } from './prompt';
import { IMG_CONTEXT_TOKEN, SEPARATOR } from './template';

/** Generation options: camelCase or upstream's snake_case keys (max_new_tokens, do_sample, num_beams, stop, ...). */
export type GenerationOptions = GenerationRequest;

/** How a turn runs (not what it asks). */
export interface RunOptions {
  signal?: AbortSignal;
  /** Called with each generated token id (timing, inspection). */
  onToken?: (id: number) => void;
  /**
   * Start the turn from the rotary embedding's initial state, as on a freshly loaded model: a dynamic
   * NTK base grown by an earlier call past max_position_embeddings is reset (see RotaryEmbedding), so
   * the answer does not depend on earlier calls. Default false: the state carries over, as upstream's.
   * `pvc serve` sets it for every request.
   */
  resetRotary?: boolean;
  /**
   * Decode in this batch, together with the other turns given to it (continuous batching, see
   * generation/batch.ts): the same tokens as alone, from the rotary embedding's initial state (as with
   * resetRotary). Greedy and sampling; a beam search runs on its own.
   */
  batcher?: ContinuousBatcher;
}

export interface ChatOptions extends PromptOptions, RunOptions {
  returnHistory?: boolean;
  /** Default: the model's own tokenizer. */
  tokenizer?: PVCTokenizer;
}

export interface BatchChatOptions {
  numPatchesList?: number[];
  dataFlag?: DataFlag | DataFlag[];
  signal?: AbortSignal;
  tokenizer?: PVCTokenizer;
}

/** The generation config of a chat: the caller's options over transformers' defaults, eos always <|im_end|> (upstream overwrites eos_token_id). */
export function chatGenerationConfig(tokenizer: PVCTokenizer, options: GenerationOptions): GenerationConfig {
  const eos = tokenizer.tokenToId(SEPARATOR);
  if (eos === undefined) throw new Error(`the tokenizer has no ${SEPARATOR} token`);
  return { ...resolveGenerationConfig(options, { eosTokenId: [eos], padTokenId: tokenizer.padTokenId }), eosTokenId: [eos] };
}

/** The ids the model reads a prompt with, from the tokenizer. */
export function promptTokenIds(tokenizer: PVCTokenizer): PromptTokenIds {
  const imgContext = tokenizer.tokenToId(IMG_CONTEXT_TOKEN);
  if (imgContext === undefined) throw new Error(`the tokenizer has no ${IMG_CONTEXT_TOKEN} token`);
  return { imgContext, pad: tokenizer.padTokenId };
}

/** What the LLM is asked: prompt rows (one per question) and the pixel values of their samples. */
export interface PromptRows {
  rows: number[][];
  pixelValues: tf.Tensor4D | null;
  samples: Sample[];
  /** The samples' visual tokens [tokens, D] computed already (see ChatTurn.visualTokens): no vision pass. */
  visualTokens?: tf.Tensor2D;
}

/**
 * Generation for prompt rows (left-padded to one length): the model's input embeddings, then each
 * step's tokens; frees everything it makes.
 */
export async function* generateForRows(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  input: PromptRows,
  config: GenerationConfig,
  options: { signal?: AbortSignal; tap?: Tap; resetRotary?: boolean; batcher?: ContinuousBatcher } = {},
): AsyncGenerator<GenerationStep> {
  const T = Math.max(...input.rows.map((r) => r.length));
  const { maxContext } = model.limits;
  if (maxContext !== undefined && T + config.maxNewTokens > maxContext) {
    throw new InputError(
      'maxNewTokens',
      `the prompt's ${T} tokens plus maxNewTokens ${config.maxNewTokens} (${T + config.maxNewTokens}) exceed limits.maxContext ${maxContext}`,
    );
  }
  throwIfAborted(options.signal);
  const { batcher, ...run } = options;
  const batched = batcher !== undefined && input.rows.length === 1 && config.numBeams === 1 && options.tap === undefined;
  if (options.resetRotary && !batched) model.llm.rotary.reset();
  const { embeds, attentionMask } = await runYielding(
    model.inputSteps(input.rows, input.pixelValues, input.samples, promptTokenIds(tokenizer), options.tap, input.visualTokens),
    options.signal,
  );
  try {
    // As upstream's generate() from embeddings, the ids the logits processors see start at <s>.
    const seenIds = input.rows.map(() => [tokenizer.bosTokenId]);
    const decode = (ids: readonly number[]) => tokenizer.decode(ids, { skipSpecialTokens: true });
    if (batched) yield* batcher.generate({ embeds, seenIds: seenIds[0] }, config, { signal: options.signal, decode });
    else yield* generateSteps(model.llm, { embeds, attentionMask, seenIds }, config, { ...run, prefillChunk: model.limits.prefillChunk, decode });
  } finally {
    embeds.dispose();
  }
}

/** One chat turn ready to run: the prompt built and tokenized, the generation options resolved; nothing computed yet. */
export interface ChatTurn extends PreparedPrompt {
  pixelValues: tf.Tensor4D | null;
  samples: Sample[];
  generation: GenerationConfig;
  /**
   * The visual tokens of `samples` [tokens, D] in prompt order, when the caller has them (the server's
   * feature cache, src/server/features.ts): the turn runs no vision layer. The caller keeps them.
   */
  visualTokens?: tf.Tensor2D;
}

/**
 * The turn chat() runs, with `generation` from chatGenerationConfig: bad placeholders or tiles are an
 * InputError here, before any compute. With `visualTokens` (see ChatTurn) there are no pixel values:
 * the tiles are numPatchesList's.
 */
export function prepareChat(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  question: string,
  generation: GenerationConfig,
  options: PromptOptions & { visualTokens?: tf.Tensor2D } = {},
): ChatTurn {
  const { visualTokens, ...promptOptions } = options;
  if (visualTokens === undefined) return { ...preparePrompt(model, tokenizer, pixelValues, question, promptOptions), pixelValues, generation };
  if (pixelValues !== null) throw new InputError('visualTokens', 'a turn takes pixel values or their visual tokens, not both');
  const S = model.config.image_size;
  const tiles = { shape: [(options.numPatchesList ?? []).reduce((a, b) => a + b, 0), 3, S, S] as [number, number, number, number] };
  return { ...preparePrompt(model, tokenizer, tiles, question, promptOptions), pixelValues: null, generation, visualTokens };
}

export interface ChatIds extends PreparedPrompt {
  outputIds: number[];
  /** Beam search: all numReturnSequences sequences (padded as upstream's generate() pads them), best first. */
  sequences?: number[][];
  /** Beam search: their scores. */
  sequenceScores?: number[];
}

function turnSteps(model: VisionLanguageModel, tokenizer: PVCTokenizer, turn: ChatTurn, options: RunOptions): AsyncGenerator<GenerationStep> {
  const { rows, pixelValues, samples, visualTokens } = { rows: [turn.inputIds], ...turn };
  return generateForRows(model, tokenizer, { rows, pixelValues, samples, visualTokens }, turn.generation, {
    signal: options.signal,
    resetRotary: options.resetRotary,
    batcher: options.batcher,
  });
}

/** The token ids a turn generates (eos included), without decoding them. Beam search: outputIds is the best sequence. */
export async function runTurn(model: VisionLanguageModel, tokenizer: PVCTokenizer, turn: ChatTurn, options: RunOptions = {}): Promise<ChatIds> {
  const sequences: number[][] = [[]];
  let sequenceScores: number[] | undefined;
  for await (const step of turnSteps(model, tokenizer, turn, options)) {
    step.tokens.forEach((t, r) => (sequences[r] ??= []).push(t));
    sequenceScores = step.sequenceScores;
    options.onToken?.(step.tokens[0]);
  }
  const beams = sequenceScores ? { sequences, sequenceScores } : {};
  return { prompt: turn.prompt, question: turn.question, inputIds: turn.inputIds, outputIds: sequences[0], ...beams };
}

/** A turn's answer: its ids decoded, cut at <|im_end|> or a stop string. */
export function answerOf(tokenizer: PVCTokenizer, turn: ChatTurn, outputIds: number[]): string {
  return decodeAnswer(tokenizer, outputIds, SEPARATOR, turn.generation.stop);
}

/**
 * A turn's answer as a stream of text pieces whose concatenation is its answer. With beam search the
 * pieces come only once the search is over (no beam is final before).
 */
export async function* streamTurn(model: VisionLanguageModel, tokenizer: PVCTokenizer, turn: ChatTurn, options: RunOptions = {}): AsyncGenerator<string> {
  const decoder = new StreamDecoder(tokenizer, SEPARATOR, turn.generation.stop);
  for await (const step of turnSteps(model, tokenizer, turn, options)) {
    options.onToken?.(step.tokens[0]);
    const piece = decoder.push(step.tokens[0]);
    if (piece) yield piece;
  }
  const rest = decoder.finish();
  if (rest) yield rest;
}

/** Upstream's batch_chat(): several questions at once (left-padded), no history. */
export async function batchChat(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  questions: string[],
  generation: GenerationOptions = {},
  options: BatchChatOptions = {},
): Promise<string[]> {
  const config = chatGenerationConfig(tokenizer, generation);
  const { rows, samples } = prepareBatchPrompts(model, tokenizer, pixelValues, questions, options);
  // Beam search with numReturnSequences n gives n answers per question, as upstream's batch_chat.
  const out: number[][] = [];
  for await (const step of generateForRows(model, tokenizer, { rows, pixelValues, samples }, config, { signal: options.signal }))
    step.tokens.forEach((t, b) => (out[b] ??= []).push(t));
  return Array.from({ length: Math.max(rows.length, out.length) }, (_, r) => decodeAnswer(tokenizer, out[r] ?? [], SEPARATOR, config.stop));
}

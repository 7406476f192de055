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
   * `pvc serve` sets it for every request (one turn runs at a time there).
   */
  resetRotary?: boolean;
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
  options: { signal?: AbortSignal; tap?: Tap; resetRotary?: boolean } = {},
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
  if (options.resetRotary) model.llm.rotary.reset();
  const { embeds, attentionMask } = await runYielding(
    model.inputSteps(input.rows, input.pixelValues, input.samples, promptTokenIds(tokenizer), options.tap),
    options.signal,
  );
  try {
    // As upstream's generate() from embeddings, the ids the logits processors see start at <s>.
    const decode = (ids: readonly number[]) => tokenizer.decode(ids, { skipSpecialTokens: true });
    const run = { ...options, prefillChunk: model.limits.prefillChunk, decode };
    yield* generateSteps(model.llm, { embeds, attentionMask, seenIds: input.rows.map(() => [tokenizer.bosTokenId]) }, config, run);
  } finally {
    embeds.dispose();
  }
}

/** One chat turn ready to run: the prompt built and tokenized, the generation options resolved; nothing computed yet. */
export interface ChatTurn extends PreparedPrompt {
  pixelValues: tf.Tensor4D | null;
  samples: Sample[];
  generation: GenerationConfig;
}

/** The turn chat() runs, with `generation` from chatGenerationConfig: bad placeholders or tiles are an InputError here, before any compute. */
export function prepareChat(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  question: string,
  generation: GenerationConfig,
  options: PromptOptions = {},
): ChatTurn {
  return { ...preparePrompt(model, tokenizer, pixelValues, question, options), pixelValues, generation };
}

export interface ChatIds extends PreparedPrompt {
  outputIds: number[];
  /** Beam search: all numReturnSequences sequences (padded as upstream's generate() pads them), best first. */
  sequences?: number[][];
  /** Beam search: their scores. */
  sequenceScores?: number[];
}

function turnSteps(model: VisionLanguageModel, tokenizer: PVCTokenizer, turn: ChatTurn, options: RunOptions): AsyncGenerator<GenerationStep> {
  return generateForRows(model, tokenizer, { rows: [turn.inputIds], pixelValues: turn.pixelValues, samples: turn.samples }, turn.generation, {
    signal: options.signal,
    resetRotary: options.resetRotary,
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

// Upstream's chat(), batch_chat() and a streaming chat over a VisionLanguageModel:
//
//   question (+ history) -> prompt (./prompt.ts) -> ids -> embeddings with the visual tokens merged
//   -> InternLM2 generation (eos <|im_end|>) -> answer
import * as tf from '@tensorflow/tfjs';
import { contextLength } from '../config';
import { runYielding, throwIfAborted, yieldToEventLoop } from '../event_loop';
import { GenerationConfig, GenerationRequest, generateSteps, GenerationStep, resolveGenerationConfig } from '../generation/generate';
import { Tap } from '../nn/layers';
import { DataFlag, Sample } from '../model/samples';
import { mergeEmbeddings, VisionLanguageModel } from '../model/vlm';
import { decodeAnswer, PVCTokenizer, StreamDecoder } from '../tokenizer';
import { preparePrompt, PreparedPrompt, prepareBatchPrompts, PromptOptions } from './prompt';
import { History, IMG_CONTEXT_TOKEN, SEPARATOR } from './template';

/** Generation options: camelCase or upstream's snake_case keys (max_new_tokens, do_sample, num_beams, stop, ...). */
export type GenerationOptions = GenerationRequest;

export interface ChatOptions extends PromptOptions {
  returnHistory?: boolean;
  signal?: AbortSignal;
  /** Called with each generated token id (timing, inspection). */
  onToken?: (id: number) => void;
}

export interface BatchChatOptions {
  numPatchesList?: number[];
  dataFlag?: DataFlag | DataFlag[];
  signal?: AbortSignal;
}

function generationConfig(tokenizer: PVCTokenizer, options: GenerationOptions): GenerationConfig {
  const eos = tokenizer.tokenToId(SEPARATOR);
  if (eos === undefined) throw new Error(`the tokenizer has no ${SEPARATOR} token`);
  const config = resolveGenerationConfig(options, { eosTokenId: [eos], padTokenId: tokenizer.padTokenId });
  // chat() always stops at <|im_end|> (upstream overwrites eos_token_id).
  return { ...config, eosTokenId: [eos] };
}

/**
 * Generation for prompt rows (left-padded to one length): merges the visual tokens of `samples` into
 * the rows' embeddings and yields each step's tokens; frees everything it makes.
 */
export async function* generateForRows(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  samples: Sample[],
  rows: number[][],
  generation: GenerationOptions,
  options: { signal?: AbortSignal; tap?: Tap } = {},
): AsyncGenerator<GenerationStep> {
  const config = generationConfig(tokenizer, generation);
  const imgContextId = tokenizer.tokenToId(IMG_CONTEXT_TOKEN);
  if (imgContextId === undefined) throw new Error(`the tokenizer has no ${IMG_CONTEXT_TOKEN} token`);
  const T = Math.max(...rows.map((r) => r.length));
  // Checked before any compute: a request the model's positions cannot hold fails at once.
  const context = contextLength(model.config.llm);
  if (T + config.maxNewTokens > context) {
    const { max_position_embeddings: maxPos, rope_scaling: scaling } = model.config.llm;
    throw new Error(
      `the prompt's ${T} tokens plus maxNewTokens ${config.maxNewTokens} (${T + config.maxNewTokens}) exceed the model's context of ${context} positions ` +
        `(max_position_embeddings ${maxPos}${scaling ? ` x rope_scaling factor ${scaling.factor}` : ''})`,
    );
  }
  throwIfAborted(options.signal);
  const padded = rows.map((r) => [...new Array(T - r.length).fill(tokenizer.padTokenId), ...r]);
  const attentionMask = rows.map((r) => [...new Array(T - r.length).fill(0), ...r.map(() => 1)]);
  await yieldToEventLoop(options.signal);
  const text = model.llm.embedTokens(padded);
  let embeds: tf.Tensor3D;
  try {
    const visual = pixelValues === null ? null : await runYielding(model.visualTokenSteps(pixelValues, samples, options.tap), options.signal);
    try {
      embeds = mergeEmbeddings(text, padded, imgContextId, visual);
    } finally {
      visual?.dispose();
    }
  } finally {
    text.dispose();
  }
  try {
    // As upstream's generate() from embeddings, the ids the logits processors see start at <s>.
    const decode = (ids: readonly number[]) => tokenizer.decode(ids, { skipSpecialTokens: true });
    const run = { ...options, prefillChunk: model.limits.prefillChunk, decode };
    yield* generateSteps(model.llm, { embeds, attentionMask, seenIds: rows.map(() => [tokenizer.bosTokenId]) }, config, run);
  } finally {
    embeds.dispose();
  }
}

export interface ChatIds extends PreparedPrompt {
  outputIds: number[];
  /** Beam search: all numReturnSequences sequences (padded as upstream's generate() pads them), best first. */
  sequences?: number[][];
  /** Beam search: their scores. */
  sequenceScores?: number[];
}

/**
 * The prompt chat() builds and the token ids it generates (eos included), without decoding them.
 * Beam search (numBeams > 1): outputIds is the best sequence.
 */
export async function chatIds(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  question: string,
  generation: GenerationOptions = {},
  options: ChatOptions = {},
): Promise<ChatIds> {
  const prepared = preparePrompt(model, tokenizer, pixelValues, question, options);
  const sequences: number[][] = [[]];
  let sequenceScores: number[] | undefined;
  for await (const step of generateForRows(model, tokenizer, pixelValues, prepared.samples, [prepared.inputIds], generation, { signal: options.signal })) {
    step.tokens.forEach((t, r) => (sequences[r] ??= []).push(t));
    sequenceScores = step.sequenceScores;
    options.onToken?.(step.tokens[0]);
  }
  const beams = sequenceScores ? { sequences, sequenceScores } : {};
  return { prompt: prepared.prompt, question: prepared.question, inputIds: prepared.inputIds, outputIds: sequences[0], ...beams };
}

/** Upstream's chat(): the answer, and with returnHistory the history with this turn appended. */
export async function chat(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  question: string,
  generation: GenerationOptions = {},
  options: ChatOptions = {},
): Promise<string | { response: string; history: History }> {
  const prepared = await chatIds(model, tokenizer, pixelValues, question, generation, options);
  const response = decodeAnswer(tokenizer, prepared.outputIds, SEPARATOR, generationConfig(tokenizer, generation).stop);
  if (!options.returnHistory) return response;
  return { response, history: [...(options.history ?? []), [prepared.question, response]] };
}

/**
 * chat() as a stream of text pieces whose concatenation is chat()'s answer. With beam search the
 * pieces come only once the search is over (no beam is final before).
 */
export async function* streamChat(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  question: string,
  generation: GenerationOptions = {},
  options: ChatOptions = {},
): AsyncGenerator<string> {
  const prepared = preparePrompt(model, tokenizer, pixelValues, question, options);
  const decoder = new StreamDecoder(tokenizer, SEPARATOR, generationConfig(tokenizer, generation).stop);
  for await (const step of generateForRows(model, tokenizer, pixelValues, prepared.samples, [prepared.inputIds], generation, { signal: options.signal })) {
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
  const { rows, samples } = prepareBatchPrompts(model, tokenizer, pixelValues, questions, options);
  // Beam search with numReturnSequences n gives n answers per question, as upstream's batch_chat.
  const out: number[][] = [];
  for await (const step of generateForRows(model, tokenizer, pixelValues, samples, rows, generation, { signal: options.signal }))
    step.tokens.forEach((t, b) => (out[b] ??= []).push(t));
  const stop = generationConfig(tokenizer, generation).stop;
  return Array.from({ length: Math.max(rows.length, out.length) }, (_, r) => decodeAnswer(tokenizer, out[r] ?? [], SEPARATOR, stop));
}

// The generation loop: the prompt's prefill (in chunks for long prompts), then one token per step with
// the KV cache, stopping on any eos id, a stop string or max_new_tokens; it gives the event loop a turn
// after every layer, is abortable between them, and streams as an async iterator of token ids. With
// numBeams > 1 the steps come from beam search (beam.ts), all at its end. Both take the prefill and the
// decode step from steps.ts; the options and their checks are in config.ts.
import * as tf from '@tensorflow/tfjs';
import { throwIfAborted, yieldToEventLoop } from '../event_loop';
import { KVCache } from '../llm/cache';
import { InternLM2 } from '../llm/internlm2';
import { Tap } from '../nn/layers';
import { beamSearch } from './beam';
import { GenerationConfig } from './config';
import { applyMinNewTokens, applyRepetitionPenalty, applyTemperature, applyTopK, applyTopP, argmax, sample, SeededRandom, softmax } from './processors';
import { decodeStep, GenerationInput, prefill } from './steps';
import { StopStrings } from './stop';

export { GENERATION_DEFAULTS, resolveGenerationConfig } from './config';
export type { GenerationConfig, GenerationRequest } from './config';
export type { GenerationInput } from './steps';

export interface GenerationStep {
  /** 0-based index of the generated position. */
  step: number;
  /**
   * The new token of each row (padTokenId for rows already finished). Beam search: of each returned
   * sequence (B * numReturnSequences rows, each batch row's best first).
   */
  tokens: number[];
  /** Rows that have not ended yet (after this step): no eos, no stop string. */
  unfinished: boolean[];
  /** Beam search: the score of each returned sequence (see BeamSearchOutput). */
  sequenceScores?: number[];
}

export interface GenerationRunOptions {
  /** Stops the generation at its next pause (between layers and steps) with an AbortError. */
  signal?: AbortSignal;
  tap?: Tap;
  /** Prompt positions per prefill pass (see InternLM2.prefillSteps); with a tap the prompt runs in one pass. */
  prefillChunk?: number;
  /** The text of generated ids, for stop strings (required when config.stop is not empty). */
  decode?: (ids: readonly number[]) => string;
  /**
   * Continue this cache (the prompt's earlier positions; `input` holds the ones after them) instead of
   * a new one. It stays the caller's: the generated positions are appended to it and it is not freed.
   * Greedy and sampling only.
   */
  cache?: KVCache;
}

export function stopStrings(config: GenerationConfig, options: GenerationRunOptions): StopStrings | undefined {
  if (config.stop.length === 0) return undefined;
  if (options.decode === undefined) throw new Error('stop strings need a decode function (options.decode)');
  return new StopStrings(config.stop, options.decode);
}

/**
 * Yields one step at a time. The prefill and every decode step give the event loop a turn after each
 * layer, so timers, I/O and `signal` keep working during a long generation. The KV cache lives for the
 * iteration and is freed when it ends, returns early, throws or is aborted. With numBeams > 1 the
 * search runs to its end before the first step is yielded (no beam is final earlier); the steps then
 * spell out the sequences.
 */
export async function* generateSteps(
  model: InternLM2,
  input: GenerationInput,
  config: GenerationConfig,
  options: GenerationRunOptions = {},
): AsyncGenerator<GenerationStep> {
  const stop = stopStrings(config, options);
  if (config.numBeams > 1 && options.cache) throw new Error('beam search starts from its own cache (options.cache is for greedy and sampling)');
  if (config.numBeams > 1) {
    const out = await beamSearch(model, input, config, { signal: options.signal, tap: options.tap, stop, prefillChunk: options.prefillChunk });
    const width = out.sequences[0]?.length ?? 0;
    for (let step = 0; step < width; step++) {
      yield { step, tokens: out.sequences.map((s) => s[step]), unfinished: out.lengths.map((n) => step + 1 < n), sequenceScores: out.scores };
    }
    return;
  }
  const B = input.embeds.shape[0];
  if (input.seenIds.length !== B) throw new Error(`seenIds has ${input.seenIds.length} rows, embeds ${B}`);
  const { signal } = options;
  throwIfAborted(signal);
  const seen = input.seenIds.map((r) => [...r]);
  const generated: number[][] = seen.map(() => []);
  const unfinished = new Array(B).fill(true);
  const rng = new SeededRandom(config.seed);
  const cache: KVCache = options.cache ?? model.newCache(B);
  let logits: tf.Tensor | null = null;
  try {
    logits = await prefill(model, cache, input, options);
    for (let step = 0; step < config.maxNewTokens; step++) {
      const rows = (await logits!.data()) as Float32Array;
      logits!.dispose();
      logits = null;
      const V = rows.length / B;
      const tokens = Array.from({ length: B }, (_, b) => {
        if (!unfinished[b]) return config.padTokenId;
        return chooseToken(rows.slice(b * V, (b + 1) * V), seen[b], step, config, rng);
      });
      tokens.forEach((t, b) => {
        seen[b].push(t);
        if (!unfinished[b]) return;
        generated[b].push(t);
        if (config.eosTokenId.includes(t) || stop?.reached(generated[b])) unfinished[b] = false;
      });
      yield { step, tokens, unfinished: [...unfinished] };
      if (!unfinished.some(Boolean) || step + 1 >= config.maxNewTokens) break;
      await yieldToEventLoop(signal);
      logits = await decodeStep(model, cache, tokens, options);
    }
  } finally {
    logits?.dispose();
    if (cache !== options.cache) cache.dispose();
  }
}

/** The next token from one row's logits (processed in place): the processors in transformers' order, then argmax or a draw. */
export function chooseToken(logits: Float32Array, seen: number[], step: number, config: GenerationConfig, rng: SeededRandom): number {
  applyRepetitionPenalty(logits, seen, config.repetitionPenalty);
  applyMinNewTokens(logits, step, config.minNewTokens, config.eosTokenId);
  if (!config.doSample) return argmax(logits);
  applyTemperature(logits, config.temperature);
  applyTopK(logits, config.topK);
  applyTopP(logits, config.topP);
  return sample(softmax(logits), rng);
}

/**
 * Runs generation to the end: the new tokens of each row (eos included, padding after it dropped;
 * beam search: of each returned sequence).
 */
export async function generate(model: InternLM2, input: GenerationInput, config: GenerationConfig, options: GenerationRunOptions = {}): Promise<number[][]> {
  const rows = input.embeds.shape[0] * (config.numBeams > 1 ? config.numReturnSequences : 1);
  const out: number[][] = Array.from({ length: rows }, () => []);
  const done = new Array(rows).fill(false);
  for await (const { tokens, unfinished } of generateSteps(model, input, config, options)) {
    tokens.forEach((t, b) => {
      if (!done[b]) out[b].push(t);
      done[b] = !unfinished[b];
    });
  }
  return out;
}

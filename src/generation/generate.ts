// The generation loop: the prompt's prefill (in chunks for long prompts), then one token per step with
// the KV cache, stopping on any eos id, a stop string or max_new_tokens; it gives the event loop a turn
// after every layer, is abortable between them, and streams as an async iterator of token ids. With
// numBeams > 1 the steps come from beam search (beam.ts), all at its end.
import * as tf from '@tensorflow/tfjs';
import { throwIfAborted, runYielding, yieldToEventLoop } from '../event_loop';
import { KVCache } from '../llm/cache';
import { InternLM2 } from '../llm/internlm2';
import { Tap } from '../nn/layers';
import { beamSearch } from './beam';
import { applyMinNewTokens, applyRepetitionPenalty, applyTemperature, applyTopK, applyTopP, argmax, sample, SeededRandom, softmax } from './processors';
import { parseStop, StopStrings } from './stop';

export interface GenerationConfig {
  maxNewTokens: number;
  minNewTokens: number;
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  /** Generation stops at any of these. */
  eosTokenId: number[];
  /** Fills finished rows of a batch. */
  padTokenId: number;
  /** Seed of the sampler (doSample); the same seed gives the same tokens. */
  seed: number;
  /** Beam search with this many beams per row (1: greedy or sampling). */
  numBeams: number;
  /** Beam search: hypotheses are ranked by sum of log-probabilities / length ** lengthPenalty. */
  lengthPenalty: number;
  /** Beam search: when a row stops (transformers' early_stopping: true, false or "never"). */
  earlyStopping: boolean | 'never';
  /** Beam search: the best this many hypotheses of each row are returned (<= numBeams). */
  numReturnSequences: number;
  /** A row ends once its decoded text contains one of these; the answer is cut before it. */
  stop: string[];
}

/**
 * Generation options as callers give them: a partial config, camelCase or upstream's snake_case keys;
 * `stop` may be one string.
 */
export type GenerationRequest = Partial<Omit<GenerationConfig, 'stop'>> & { stop?: string | string[] } & Record<string, unknown>;

/** What upstream falls back to when the caller passes only a few keys (transformers' defaults). */
export const GENERATION_DEFAULTS: Omit<GenerationConfig, 'eosTokenId' | 'padTokenId'> = {
  maxNewTokens: 20,
  minNewTokens: 0,
  doSample: false,
  temperature: 1.0,
  topK: 50,
  topP: 1.0,
  repetitionPenalty: 1.0,
  seed: 0,
  numBeams: 1,
  lengthPenalty: 1.0,
  earlyStopping: false,
  numReturnSequences: 1,
  stop: [],
};

const KEYS: Record<string, keyof GenerationConfig> = {
  maxNewTokens: 'maxNewTokens',
  max_new_tokens: 'maxNewTokens',
  minNewTokens: 'minNewTokens',
  min_new_tokens: 'minNewTokens',
  doSample: 'doSample',
  do_sample: 'doSample',
  temperature: 'temperature',
  topK: 'topK',
  top_k: 'topK',
  topP: 'topP',
  top_p: 'topP',
  repetitionPenalty: 'repetitionPenalty',
  repetition_penalty: 'repetitionPenalty',
  eosTokenId: 'eosTokenId',
  eos_token_id: 'eosTokenId',
  padTokenId: 'padTokenId',
  pad_token_id: 'padTokenId',
  seed: 'seed',
  numBeams: 'numBeams',
  num_beams: 'numBeams',
  lengthPenalty: 'lengthPenalty',
  length_penalty: 'lengthPenalty',
  earlyStopping: 'earlyStopping',
  early_stopping: 'earlyStopping',
  numReturnSequences: 'numReturnSequences',
  num_return_sequences: 'numReturnSequences',
  stop: 'stop',
};

/**
 * A full generation config from the caller's keys (camelCase or upstream's snake_case) over the
 * defaults. Unknown keys and out-of-range values are errors naming them.
 */
export function resolveGenerationConfig(
  user: Record<string, unknown>,
  base: Pick<GenerationConfig, 'eosTokenId' | 'padTokenId'> & Partial<GenerationConfig>,
): GenerationConfig {
  const config: GenerationConfig = { ...GENERATION_DEFAULTS, ...base };
  for (const [key, value] of Object.entries(user)) {
    const field = KEYS[key];
    if (field === undefined) {
      throw new Error(`unknown generation option '${key}' (known: ${[...new Set(Object.values(KEYS))].join(', ')}, or their snake_case)`);
    }
    if (value === undefined) continue;
    (config as unknown as Record<string, unknown>)[field] =
      field === 'eosTokenId' && !Array.isArray(value) ? [value] : field === 'stop' ? parseStop(value) : value;
  }
  const check = (ok: boolean, field: keyof GenerationConfig, expected: string) => {
    if (!ok) throw new Error(`generation option ${field} = ${JSON.stringify(config[field])}: expected ${expected}`);
  };
  const isInt = (x: unknown) => Number.isSafeInteger(x);
  check(isInt(config.maxNewTokens) && config.maxNewTokens >= 0, 'maxNewTokens', 'an integer >= 0');
  check(isInt(config.minNewTokens) && config.minNewTokens >= 0, 'minNewTokens', 'an integer >= 0');
  check(typeof config.doSample === 'boolean', 'doSample', 'true or false');
  check(typeof config.temperature === 'number' && config.temperature > 0, 'temperature', 'a number > 0');
  check(isInt(config.topK) && config.topK >= 0, 'topK', 'an integer >= 0 (0 disables)');
  check(typeof config.topP === 'number' && config.topP > 0 && config.topP <= 1, 'topP', 'a number in (0, 1]');
  check(typeof config.repetitionPenalty === 'number' && config.repetitionPenalty > 0, 'repetitionPenalty', 'a number > 0');
  check(Array.isArray(config.eosTokenId) && config.eosTokenId.every(isInt), 'eosTokenId', 'a token id or a list of them');
  check(isInt(config.padTokenId), 'padTokenId', 'a token id');
  check(isInt(config.seed), 'seed', 'an integer');
  check(isInt(config.numBeams) && config.numBeams >= 1 && config.numBeams <= 64, 'numBeams', 'an integer from 1 to 64');
  check(typeof config.lengthPenalty === 'number' && Number.isFinite(config.lengthPenalty), 'lengthPenalty', 'a finite number');
  check([true, false, 'never'].includes(config.earlyStopping), 'earlyStopping', 'true, false or "never"');
  check(
    isInt(config.numReturnSequences) && config.numReturnSequences >= 1 && config.numReturnSequences <= config.numBeams,
    'numReturnSequences',
    `an integer from 1 to numBeams (${config.numBeams}); several sequences need beam search`,
  );
  check(!(config.numBeams > 1 && config.doSample), 'doSample', 'false with numBeams > 1 (beam sampling is not implemented)');
  return config;
}

export interface GenerationInput {
  /** Prompt embeddings [B, T, D] (the caller keeps ownership). */
  embeds: tf.Tensor3D;
  /** [B, T]: 1 for tokens, 0 for left padding. Default: no padding. */
  attentionMask?: number[][];
  /**
   * The ids the logits processors treat as already seen, per row (HF's `input_ids`). Upstream's chat
   * passes embeddings to generate(), where this is just [bos]; a caller generating from ids passes them.
   */
  seenIds: number[][];
}

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
}

function stopStrings(config: GenerationConfig, options: GenerationRunOptions): StopStrings | undefined {
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
  if (config.numBeams > 1) {
    const out = await beamSearch(model, input, config, { signal: options.signal, tap: options.tap, stop, prefillChunk: options.prefillChunk });
    const width = out.sequences[0]?.length ?? 0;
    for (let step = 0; step < width; step++) {
      yield { step, tokens: out.sequences.map((s) => s[step]), unfinished: out.lengths.map((n) => step + 1 < n), sequenceScores: out.scores };
    }
    return;
  }
  const [B, T] = input.embeds.shape;
  if (input.seenIds.length !== B) throw new Error(`seenIds has ${input.seenIds.length} rows, embeds ${B}`);
  const { signal, tap } = options;
  throwIfAborted(signal);
  const seen = input.seenIds.map((r) => [...r]);
  const generated: number[][] = seen.map(() => []);
  const unfinished = new Array(B).fill(true);
  const rng = new SeededRandom(config.seed);
  const cache: KVCache = model.newCache(B);
  let logits: tf.Tensor | null = null;
  try {
    const attentionMask = input.attentionMask ?? Array.from({ length: B }, () => new Array(T).fill(1));
    // Taps record the prompt pass whole ([1, heads, L, L] attention), so with a tap it is one chunk.
    const chunkSize = tap ? T : options.prefillChunk;
    logits = await runYielding(model.prefillSteps(input.embeds, cache, { attentionMask, chunkSize, tap }), signal);
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
      const next = model.embedTokens(tokens.map((t) => [t]));
      try {
        logits = await runYielding(model.forwardSteps(next, cache, { attentionMask: tokens.map(() => [1]), logits: 'last', tap }), signal);
      } finally {
        next.dispose();
      }
    }
  } finally {
    logits?.dispose();
    cache.dispose();
  }
}

function chooseToken(logits: Float32Array, seen: number[], step: number, config: GenerationConfig, rng: SeededRandom): number {
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

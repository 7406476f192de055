// The generation loop: the prompt's prefill (in chunks for long prompts), then one token per step with
// the KV cache, stopping on any eos id or max_new_tokens; it gives the event loop a turn after every
// layer, is abortable between them, and streams as an async iterator of token ids.
import * as tf from '@tensorflow/tfjs';
import { throwIfAborted, runYielding, yieldToEventLoop } from '../event_loop';
import { InternLM2, KVCache } from '../llm/internlm2';
import { Tap } from '../nn/layers';
import {
  applyMinNewTokens,
  applyRepetitionPenalty,
  applyTemperature,
  applyTopK,
  applyTopP,
  argmax,
  sample,
  SeededRandom,
  softmax,
} from './processors';

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
}

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
};

const KEYS: Record<string, keyof GenerationConfig> = {
  maxNewTokens: 'maxNewTokens', max_new_tokens: 'maxNewTokens',
  minNewTokens: 'minNewTokens', min_new_tokens: 'minNewTokens',
  doSample: 'doSample', do_sample: 'doSample',
  temperature: 'temperature',
  topK: 'topK', top_k: 'topK',
  topP: 'topP', top_p: 'topP',
  repetitionPenalty: 'repetitionPenalty', repetition_penalty: 'repetitionPenalty',
  eosTokenId: 'eosTokenId', eos_token_id: 'eosTokenId',
  padTokenId: 'padTokenId', pad_token_id: 'padTokenId',
  seed: 'seed',
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
    (config as unknown as Record<string, unknown>)[field] = field === 'eosTokenId' && !Array.isArray(value) ? [value] : value;
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
  /** The new token of each row (padTokenId for rows already finished). */
  tokens: number[];
  /** Rows that have not produced an eos yet (after this step). */
  unfinished: boolean[];
}

export interface GenerationRunOptions {
  /** Stops the generation at its next pause (between layers and steps) with an AbortError. */
  signal?: AbortSignal;
  tap?: Tap;
  /** Prompt positions per prefill pass (see InternLM2.prefillSteps); with a tap the prompt runs in one pass. */
  prefillChunk?: number;
}

/**
 * Yields one step at a time. The prefill and every decode step give the event loop a turn after each
 * layer, so timers, I/O and `signal` keep working during a long generation. The KV cache lives for the
 * iteration and is freed when it ends, returns early, throws or is aborted.
 */
export async function* generateSteps(model: InternLM2, input: GenerationInput, config: GenerationConfig, options: GenerationRunOptions = {}): AsyncGenerator<GenerationStep> {
  const [B, T] = input.embeds.shape;
  if (input.seenIds.length !== B) throw new Error(`seenIds has ${input.seenIds.length} rows, embeds ${B}`);
  const { signal, tap } = options;
  throwIfAborted(signal);
  const seen = input.seenIds.map((r) => [...r]);
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
        if (unfinished[b] && config.eosTokenId.includes(t)) unfinished[b] = false;
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

/** Runs generation to the end: the new tokens of each row (eos included, padding after it dropped). */
export async function generate(
  model: InternLM2,
  input: GenerationInput,
  config: GenerationConfig,
  options: GenerationRunOptions = {},
): Promise<number[][]> {
  const out: number[][] = Array.from({ length: input.embeds.shape[0] }, () => []);
  const done = new Array(out.length).fill(false);
  for await (const { tokens, unfinished } of generateSteps(model, input, config, options)) {
    tokens.forEach((t, b) => {
      if (!done[b]) out[b].push(t);
      done[b] = !unfinished[b];
    });
  }
  return out;
}

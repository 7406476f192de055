// The generation options: their names (camelCase or upstream's snake_case), transformers' defaults,
// and the checks that turn a caller's keys into a full config.
import { InputError } from '../errors';
import { parseStop } from './stop';

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
      throw new InputError(key, `unknown generation option '${key}' (known: ${[...new Set(Object.values(KEYS))].join(', ')}, or their snake_case)`);
    }
    if (value === undefined) continue;
    (config as unknown as Record<string, unknown>)[field] =
      field === 'eosTokenId' && !Array.isArray(value) ? [value] : field === 'stop' ? parseStop(value) : value;
  }
  const check = (ok: boolean, field: keyof GenerationConfig, expected: string) => {
    if (!ok) throw new InputError(field, `generation option ${field} = ${JSON.stringify(config[field])}: expected ${expected}`);
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

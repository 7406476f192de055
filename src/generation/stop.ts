// Stop strings (OpenAI's `stop`): a row's generation ends once the text decoded from its new tokens
// contains one; the answer is then cut before it (decodeAnswer / StreamDecoder with the same list).
// The check needs the tokenizer, which the generation loop does not know: the caller gives the
// decoding function, and the loop asks after each token.
import { InputError } from '../errors';
import { findStop } from '../tokenizer';

/** How many stop strings a request may carry, and how long each may be (the input is untrusted). */
export const MAX_STOP_STRINGS = 16;
export const MAX_STOP_LENGTH = 256;

export class StopStrings {
  constructor(
    readonly stops: readonly string[],
    /** Text of generated ids (special tokens skipped), as the answer is decoded. */
    private readonly decode: (ids: readonly number[]) => string,
  ) {}

  /**
   * Whether the text of these generated ids contains a stop string. It decodes all of them: a new
   * token can change text before it (a completed UTF-8 sequence, upstream's clean-up of " ."), and a
   * decode of a few hundred ids costs little next to a forward pass.
   */
  reached(ids: readonly number[]): boolean {
    return findStop(this.decode(ids), this.stops) >= 0;
  }
}

/** Validates the `stop` option: a string or a list of them. */
export function parseStop(value: unknown): string[] {
  const list = typeof value === 'string' ? [value] : value;
  const ok = Array.isArray(list) && list.length <= MAX_STOP_STRINGS && list.every((s) => typeof s === 'string' && s.length > 0 && s.length <= MAX_STOP_LENGTH);
  if (!ok) {
    throw new InputError(
      'stop',
      `generation option stop = ${JSON.stringify(value)?.slice(0, 200)}: expected a non-empty string or a list of at most ${MAX_STOP_STRINGS} (each 1 to ${MAX_STOP_LENGTH} characters)`,
    );
  }
  return [...(list as string[])];
}

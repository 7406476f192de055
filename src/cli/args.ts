// Command-line options of every command (pvc chat, inspect, doctor, serve; pvc-convert): node:util's
// parseArgs splits the arguments, and each command declares its options once here (a switch, a value or
// a repeatable value, with how the value is read and checked, and its default). Every value is checked
// as it is parsed; an unknown option, a value missing or out of range, or an option given twice that
// takes one value is an error naming the option.
import { parseArgs } from 'node:util';
import { WEIGHT_PRECISIONS, WeightPrecision } from '../io/weights';

/** Reads an option's text into its value; throws an Error whose message follows the option's name. */
export type Read<T> = (text: string) => T;

export interface Option<T> {
  readonly type: 'string' | 'boolean';
  /** May be given several times (the values in order). */
  readonly multiple: boolean;
  /** Also takes the plain arguments that follow it, up to the next option (pvc inspect --taps A B ...). */
  readonly greedy: boolean;
  readonly short?: string;
  readonly read: Read<unknown>;
  readonly fallback: T;
}

type Spec = Record<string, Option<unknown>>;
/** The parsed values: each option's under its key (camelCase of the option's name). */
export type Values<S extends Spec> = { -readonly [K in keyof S]: S[K] extends Option<infer T> ? T : never };

/** A switch: false unless given. */
export function flag(short?: string): Option<boolean> {
  return { type: 'boolean', multiple: false, greedy: false, short, read: () => true, fallback: false };
}

/** An option with one value. */
export function value<T>(read: Read<T>): Option<T | undefined>;
export function value<T>(read: Read<T>, fallback: T): Option<T>;
export function value<T>(read: Read<T>, fallback?: T): Option<T | undefined> {
  return { type: 'string', multiple: false, greedy: false, read, fallback };
}

/** An option that may repeat: its values in order ([] when not given). */
export function list<T>(read: Read<T>, options: { greedy?: boolean } = {}): Option<T[]> {
  return { type: 'string', multiple: true, greedy: options.greedy ?? false, read, fallback: [] };
}

/** Any text but the empty string (paths, names, keys). */
export const text: Read<string> = (s) => {
  if (s === '') throw new Error('needs a non-empty value');
  return s;
};

/** One of the given words. */
export function oneOf<T extends string>(words: readonly T[]): Read<T> {
  const expected = words.length > 1 ? `${words.slice(0, -1).join(', ')} or ${words[words.length - 1]}` : words[0];
  return (s) => {
    if (!(words as readonly string[]).includes(s)) throw new Error(`expects ${expected}, not ${s || "''"}`);
    return s as T;
  };
}

/** A number (an integer if asked) in a range: min and max inclusive, above exclusive. */
export function number(range: { integer?: boolean; min?: number; above?: number; max?: number } = {}): Read<number> {
  const { integer = false, min, above, max } = range;
  const low = above !== undefined ? `> ${above}` : min !== undefined ? `>= ${min}` : '';
  const bounds =
    min !== undefined && max !== undefined
      ? ` from ${min} to ${max}`
      : above !== undefined && max !== undefined
        ? ` in (${above}, ${max}]`
        : max !== undefined
          ? ` <= ${max}`
          : low && ` ${low}`;
  const expected = `${integer ? 'an integer' : 'a number'}${bounds}`;
  return (s) => {
    const v = s.trim() === '' ? NaN : Number(s);
    const ok =
      (integer ? Number.isSafeInteger(v) : Number.isFinite(v)) &&
      (min === undefined || v >= min) &&
      (above === undefined || v > above) &&
      (max === undefined || v <= max);
    if (!ok) throw new Error(`expects ${expected}, not ${s || "''"}`);
    return v;
  };
}

/** The word `none` (null), else what read makes of the text. */
export function orNone<T>(read: Read<T>): Read<T | null> {
  return (s) => (s === 'none' ? null : read(s));
}

/** The option's name on the command line: --max-new-tokens for maxNewTokens. */
export function optionName(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

export interface Parsed<S extends Spec> {
  values: Values<S>;
  /** The plain arguments, in order (those a greedy option took excepted). */
  positionals: string[];
  /** The options given (their keys), defaults aside. */
  given: ReadonlySet<keyof S>;
}

/**
 * Parses argv against the options declared in spec (keys in camelCase, --kebab-case on the command
 * line; `--name value` or `--name=value`). Plain arguments are an error unless positionals is set.
 */
export function parseOptions<S extends Spec>(argv: string[], spec: S, settings: { positionals?: boolean } = {}): Parsed<S> {
  const options = Object.fromEntries(
    Object.entries(spec).map(([key, o]) => [optionName(key).slice(2), o.short === undefined ? { type: o.type } : { type: o.type, short: o.short }]),
  );
  const { tokens } = parseArgs({ args: argv, options, strict: false, allowPositionals: true, tokens: true });
  // What each name on the command line stands for: --max-new-tokens, and -h where declared.
  const keys = new Map(Object.entries(spec).flatMap(([key, o]) => [[optionName(key), key] as const, ...(o.short ? [[`-${o.short}`, key] as const] : [])]));
  const values = Object.fromEntries(Object.entries(spec).map(([key, o]) => [key, Array.isArray(o.fallback) ? [...o.fallback] : o.fallback]));
  const given = new Set<string>();
  const positionals: string[] = [];
  const add = (key: string, name: string, raw: string) => {
    let v: unknown;
    try {
      v = spec[key].read(raw);
    } catch (e) {
      throw new Error(`${name} ${(e as Error).message}`, { cause: e });
    }
    values[key] = spec[key].multiple ? [...(values[key] as unknown[]), v] : v;
  };
  let greedy: string | null = null;
  for (const t of tokens) {
    if (t.kind === 'option-terminator') {
      greedy = null;
    } else if (t.kind === 'positional') {
      if (greedy !== null) add(greedy, optionName(greedy), t.value);
      else positionals.push(t.value);
    } else {
      const key = keys.get(t.rawName);
      if (key === undefined) throw new Error(`unknown option ${t.rawName}`);
      const name = optionName(key);
      const o = spec[key];
      if (given.has(key) && !o.multiple) throw new Error(`${name} was given more than once${o.type === 'string' ? ' (it takes one value)' : ''}`);
      given.add(key);
      greedy = o.greedy ? key : null;
      if (o.type === 'boolean') {
        if (t.value !== undefined) throw new Error(`${name} takes no value`);
        values[key] = true;
      } else {
        // A value that is itself an option (--model --image x) is the value left out.
        if (t.value === undefined || (!t.inlineValue && t.value.startsWith('--'))) throw new Error(`${name} needs a value`);
        add(key, name, t.value);
      }
    }
  }
  if (!settings.positionals && positionals.length > 0) throw new Error(`unexpected argument '${positionals[0]}'`);
  return { values: values as Values<S>, positionals, given: given as Set<keyof S> };
}

/** --weights and --matmul, which pvc chat, pvc inspect and pvc serve share (PVCModel.load's weights, matmul). */
export const WEIGHT_OPTIONS = {
  weights: value(oneOf(WEIGHT_PRECISIONS)),
  matmul: value(oneOf(['exact', 'fast'] as const)),
};

export const WEIGHT_USAGE = `  --weights W          float32 | bfloat16 | int8: how weights are held (default float32; bfloat16 and int8
                       need the tensorflow backend; README, "Weights in memory")
  --matmul M           exact | fast: with --weights bfloat16, widen each weight to float32 (exact, default)
                       or multiply in bf16 (fast; turns on libtensorflow's oneDNN, TF_ENABLE_ONEDNN_OPTS=1)`;

/**
 * PVCModel.load's weights / matmul from the parsed flags. 'fast' turns on oneDNN (whose bf16 kernels
 * make it fast) unless TF_ENABLE_ONEDNN_OPTS is set: libtensorflow reads it once, when it loads.
 */
export function weightLoadOptions(o: { weights?: WeightPrecision; matmul?: 'exact' | 'fast' }): { weights?: WeightPrecision; matmul?: 'exact' | 'fast' } {
  if (o.matmul === 'fast') process.env.TF_ENABLE_ONEDNN_OPTS ??= '1';
  return { weights: o.weights, matmul: o.matmul };
}

// The tokenizer of a converted model: `tokenizer.json` (built by pvc-convert from InternLM2's
// sentencepiece model) run by @huggingface/tokenizers for encoding.
//
// Decoding is done here rather than by the library: runs of byte-fallback pieces must decode the
// way sentencepiece (and so upstream's slow tokenizer) does, one U+FFFD per byte that does not start
// a valid UTF-8 sequence, while the library turns a whole invalid run into one or several U+FFFD by
// other rules. Everything else (▁ -> space, special tokens dropped on request, upstream's
// clean-up of spaces before punctuation) is plain.
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';
import { readJsonFile } from './json';

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const REPLACEMENT = '\uFFFD';

export interface EncodeOptions {
  /** Prepend <s> (the tokenizer's post-processor); true by default, as upstream's add_bos_token. */
  addSpecialTokens?: boolean;
}

/**
 * A piece of text to encode: `markup` pieces are read with special tokens parsed (the text of
 * <|im_end|> is that token), the others as plain text (the text of <|im_end|> is the characters
 * "<", "|", "im", ...), as vLLM and OpenAI tokenize message text.
 */
export interface TextPiece {
  text: string;
  markup: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

/**
 * transformers' clean_up_tokenization: drops the space before punctuation and English contractions.
 * Upstream's InternLM2Tokenizer applies it to every decoded string (whatever
 * clean_up_tokenization_spaces says), so chat() answers have it applied; so do we.
 */
export function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/** Decodes UTF-8 bytes as sentencepiece does: valid sequences as characters, any other byte as U+FFFD. */
export function decodeBytesLikeSentencepiece(bytes: number[]): string {
  let out = '';
  let i = 0;
  const trail = (k: number) => i + k < bytes.length && (bytes[i + k] & 0xc0) === 0x80;
  while (i < bytes.length) {
    const b = bytes[i];
    let cp = -1;
    let len = 1;
    if (b < 0x80) cp = b;
    else if ((b & 0xe0) === 0xc0 && trail(1)) {
      cp = ((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f);
      len = 2;
      if (cp < 0x80) cp = -1;
    } else if ((b & 0xf0) === 0xe0 && trail(1) && trail(2)) {
      cp = ((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f);
      len = 3;
      if (cp < 0x800) cp = -1;
    } else if ((b & 0xf8) === 0xf0 && trail(1) && trail(2) && trail(3)) {
      cp = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
      len = 4;
      if (cp < 0x10000) cp = -1;
    }
    const valid = cp >= 0 && (cp < 0xd800 || (cp >= 0xe000 && cp <= 0x10ffff));
    if (valid) {
      out += String.fromCodePoint(cp);
      i += len;
    } else {
      out += REPLACEMENT;
      i += 1;
    }
  }
  return out;
}

export class PVCTokenizer {
  /** Ids of special tokens (<unk>, <s>, </s>, <|im_end|>, <img>, ...), dropped by skipSpecialTokens. */
  readonly specialIds: ReadonlySet<number>;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;

  /** The same tokenizer with no added tokens: every string is text (made on first use). */
  private plainTokenizer: Tokenizer | null = null;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly json: Record<string, unknown>,
    private readonly config: Record<string, unknown>,
    source: string,
  ) {
    // The added tokens flagged special (the library keeps that list private).
    const added = (config.added_tokens_decoder ?? {}) as Record<string, { special?: boolean }>;
    this.specialIds = new Set(
      Object.entries(added)
        .filter(([, e]) => e.special !== false)
        .map(([id]) => Number(id)),
    );
    const id = (key: string, fallback: string) => {
      const token = typeof config[key] === 'string' ? (config[key] as string) : fallback;
      const v = this.tokenToId(token);
      if (v === undefined) throw new Error(`${source}: ${key} ${JSON.stringify(token)} is not in the vocabulary`);
      return v;
    };
    this.bosTokenId = id('bos_token', '<s>');
    this.eosTokenId = id('eos_token', '</s>');
    this.padTokenId = id('pad_token', '</s>');
  }

  /** Loads `tokenizer.json` + `tokenizer_config.json` from a converted model directory. */
  static load(dir: string): PVCTokenizer {
    const read = (name: string) => readJsonFile<Record<string, unknown>>(path.join(dir, name), `is ${dir} a model converted by pvc-convert?`);
    const json = read('tokenizer.json');
    const config = read('tokenizer_config.json');
    return new PVCTokenizer(new Tokenizer(json, config), json, config, dir);
  }

  get vocabSize(): number {
    return (this.tokenizer.model as unknown as { vocab: unknown[] }).vocab.length;
  }

  /**
   * A string's ids, special-token text parsed into special tokens (upstream's tokenizer(prompt)); or
   * pieces' ids: each markup piece parsed so, each text piece as plain text (see TextPiece). With
   * text pieces free of special-token strings both give the same ids for the same string: the library
   * too splits a string at its special tokens and tokenizes the text between them on its own.
   */
  encode(text: string | readonly TextPiece[], options: EncodeOptions = {}): number[] {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    if (typeof text === 'string') return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    // The post-processor's tokens around an empty text (<s>), then each run of pieces of one kind.
    const ids = addSpecialTokens ? this.tokenizer.encode('', { add_special_tokens: true }).ids : [];
    for (let i = 0; i < text.length;) {
      let j = i;
      let run = '';
      while (j < text.length && text[j].markup === text[i].markup) run += text[j++].text;
      const tokenizer = text[i].markup ? this.tokenizer : this.plain();
      if (run !== '') ids.push(...tokenizer.encode(run, { add_special_tokens: false }).ids);
      i = j;
    }
    return ids;
  }

  private plain(): Tokenizer {
    this.plainTokenizer ??= new Tokenizer({ ...this.json, added_tokens: [] }, this.config);
    return this.plainTokenizer;
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    let out = '';
    let bytes: number[] = [];
    const flush = () => {
      if (bytes.length > 0) out += decodeBytesLikeSentencepiece(bytes);
      bytes = [];
    };
    for (const id of ids) {
      if (options.skipSpecialTokens && this.specialIds.has(id)) continue;
      const token = this.idToToken(id);
      if (token === undefined) throw new Error(`token id ${id} is outside the vocabulary (${this.vocabSize} entries)`);
      const byte = BYTE_PIECE.exec(token);
      if (byte) {
        bytes.push(parseInt(byte[1], 16));
        continue;
      }
      flush();
      out += token.replace(/▁/g, ' ');
    }
    flush();
    return cleanUpTokenization(out);
  }
}

/** Python's str.isspace() characters (str.strip() removes these; JS trim() differs slightly). */
const PY_WHITESPACE =
  ' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000';

export function pythonStrip(text: string, side: 'both' | 'left' | 'right' = 'both'): string {
  let start = 0;
  let end = text.length;
  if (side !== 'right') while (start < end && PY_WHITESPACE.includes(text[start])) start++;
  if (side !== 'left') while (end > start && PY_WHITESPACE.includes(text[end - 1])) end--;
  return text.slice(start, end);
}

/** Where the earliest of the stop strings starts in `text`, or -1. */
export function findStop(text: string, stops: readonly string[]): number {
  let first = -1;
  for (const stop of stops) {
    const at = text.indexOf(stop);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}

/** `text` up to its first stop string (OpenAI's `stop`: the answer ends before it). */
export function cutAtStop(text: string, stops: readonly string[]): string {
  const at = findStop(text, stops);
  return at < 0 ? text : text.slice(0, at);
}

/** The length of the longest end of `text` that begins a stop string (text a later token may complete). */
function stopPrefixLength(text: string, stops: readonly string[]): number {
  for (let n = Math.min(text.length, Math.max(0, ...stops.map((s) => s.length - 1))); n > 0; n--) {
    const end = text.slice(text.length - n);
    if (stops.some((s) => s.length > n && s.startsWith(end))) return n;
  }
  return 0;
}

/**
 * An answer as upstream's chat() returns it: the new tokens decoded with special tokens skipped,
 * cut at the separator, stripped; with stop strings, cut before the first one (matched on the text
 * before stripping).
 */
export function decodeAnswer(tokenizer: PVCTokenizer, ids: readonly number[], separator = '<|im_end|>', stop: readonly string[] = []): string {
  return pythonStrip(cutAtStop(tokenizer.decode(ids, { skipSpecialTokens: true }).split(separator)[0], stop));
}

/**
 * Incremental decoding for streaming: `push` each generated id and get the text that is now final;
 * `finish` returns the rest. The pieces concatenate to `decodeAnswer` of all ids (with the same stop
 * strings). Text is held back while a later token could still change it: an unfinished UTF-8 sequence
 * of byte-fallback pieces, trailing whitespace (the answer is stripped), a trailing space that may
 * start one of upstream's clean-up patterns (" .", " n't", " 's", ...: all start with a space and are
 * at most 4 characters), and an end of the text that begins a stop string.
 */
export class StreamDecoder {
  private ids: number[] = [];
  private emitted = '';

  constructor(
    private readonly tokenizer: PVCTokenizer,
    private readonly separator = '<|im_end|>',
    private readonly stop: readonly string[] = [],
  ) {}

  push(id: number): string {
    this.ids.push(id);
    return this.advance(false);
  }

  finish(): string {
    return this.advance(true);
  }

  private advance(final: boolean): string {
    let decoded = cutAtStop(this.tokenizer.decode(final ? this.ids : this.completeIds(), { skipSpecialTokens: true }).split(this.separator)[0], this.stop);
    // Text that may turn out to be the start of a stop string waits for the next token.
    if (!final) decoded = decoded.slice(0, decoded.length - stopPrefixLength(decoded, this.stop));
    let text = pythonStrip(decoded, final ? 'both' : 'left');
    if (!final) {
      text = pythonStrip(text, 'right');
      const space = text.lastIndexOf(' ');
      if (space >= 0 && space >= text.length - 3) text = text.slice(0, space);
    }
    if (!text.startsWith(this.emitted)) {
      throw new Error(`stream decoding diverged: emitted ${JSON.stringify(this.emitted)}, now ${JSON.stringify(text)}`);
    }
    const piece = text.slice(this.emitted.length);
    this.emitted = text;
    return piece;
  }

  /** The ids without a trailing run of byte pieces that is still an incomplete UTF-8 sequence. */
  private completeIds(): number[] {
    let start = this.ids.length;
    const bytes: number[] = [];
    while (start > 0) {
      const m = BYTE_PIECE.exec(this.tokenizer.idToToken(this.ids[start - 1]) ?? '');
      if (!m) break;
      bytes.unshift(parseInt(m[1], 16));
      start--;
    }
    // Find where the last (possibly incomplete) character of the run starts.
    for (let k = bytes.length - 1; k >= 0 && k >= bytes.length - 4; k--) {
      const b = bytes[k];
      if ((b & 0xc0) === 0x80) continue; // continuation byte
      const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
      return bytes.length - k < need ? this.ids.slice(0, start + k) : this.ids;
    }
    return this.ids;
  }
}

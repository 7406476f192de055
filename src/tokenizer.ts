// The tokenizer of a converted model: `tokenizer.json` (built by pvc-convert from InternLM2's
// sentencepiece model) run by @huggingface/tokenizers for encoding.
//
// Decoding is done here rather than by the library: runs of byte-fallback pieces must decode the
// way sentencepiece (and so upstream's slow tokenizer) does, one U+FFFD per byte that does not start
// a valid UTF-8 sequence, while the library turns a whole invalid run into one or several U+FFFD by
// other rules. Everything else (▁ -> space, special tokens dropped on request, upstream's
// clean-up of spaces before punctuation) is plain.
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const REPLACEMENT = '\uFFFD';

export interface EncodeOptions {
  /** Prepend <s> (the tokenizer's post-processor); true by default, as upstream's add_bos_token. */
  addSpecialTokens?: boolean;
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
    .replaceAll(' .', '.').replaceAll(' ?', '?').replaceAll(' !', '!').replaceAll(' ,', ',')
    .replaceAll(" ' ", "'").replaceAll(" n't", "n't").replaceAll(" 'm", "'m").replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve").replaceAll(" 're", "'re");
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

  private constructor(private readonly tokenizer: Tokenizer, config: Record<string, unknown>, source: string) {
    // The added tokens flagged special (the library keeps that list private).
    const added = (config.added_tokens_decoder ?? {}) as Record<string, { special?: boolean }>;
    this.specialIds = new Set(Object.entries(added).filter(([, e]) => e.special !== false).map(([id]) => Number(id)));
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
    const read = (name: string) => {
      const file = path.join(dir, name);
      if (!fs.existsSync(file)) throw new Error(`${file} is missing: is ${dir} a model converted by pvc-convert?`);
      try {
        return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      } catch (e) {
        throw new Error(`${file}: not valid JSON: ${(e as Error).message}`);
      }
    };
    const json = read('tokenizer.json');
    const config = read('tokenizer_config.json');
    return new PVCTokenizer(new Tokenizer(json, config), config, dir);
  }

  get vocabSize(): number {
    return (this.tokenizer.model as unknown as { vocab: unknown[] }).vocab.length;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
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

/** Loads the tokenizer of a converted model directory. */
export async function loadTokenizer(dir: string): Promise<PVCTokenizer> {
  return PVCTokenizer.load(dir);
}

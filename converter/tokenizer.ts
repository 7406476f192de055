// InternLM2's sentencepiece `tokenizer.model` (+ the HF tokenizer_config.json / added_tokens.json)
// -> a `tokenizer.json` in the HF "fast tokenizer" layout, loadable by @huggingface/tokenizers.
//
// The sentencepiece ModelProto is decoded here directly (its wire format is small and stable), and
// its normalizer and trainer specs are read rather than assumed: a model this layout cannot
// reproduce (unigram, a non-identity normalization, extra-whitespace removal) is refused.
//
// Layout (internvl2.md, "Tokenizer"): BPE with byte fallback and fused unknowns, vocab and merges
// from the pieces and their scores (merges ranked by the score of the piece they produce); normalizer
// Replace(' ', '▁') (preceded by Prepend('▁') only when add_dummy_prefix); no pre-tokenizer; decoder
// Replace('▁', ' ') -> ByteFallback -> Fuse (-> Strip(one leading space) only with a dummy prefix:
// measured against the slow tokenizer, which keeps a leading space); post-processor prepending <s>;
// the HF added tokens registered as special tokens, their content replacing the placeholder piece at
// the same id.
import * as fs from 'fs';
import * as path from 'path';
import { readJsonFile } from '../src/json';

export enum PieceType {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

export interface SentencePiece {
  piece: string;
  score: number;
  type: PieceType;
}

export interface SentencePieceModel {
  pieces: SentencePiece[];
  trainer: { modelType: number; byteFallback: boolean; unkPiece: string; treatWhitespaceAsSuffix: boolean };
  normalizer: { name: string; hasCharsmap: boolean; addDummyPrefix: boolean; removeExtraWhitespaces: boolean; escapeWhitespaces: boolean };
}

// ---- protobuf wire format ----------------------------------------------------------------------

class ProtoReader {
  pos = 0;
  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {}

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  varint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.buf.length) throw new Error(`${this.what}: truncated varint`);
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return result;
      shift += 7;
      if (shift > 63) throw new Error(`${this.what}: malformed varint`);
    }
  }

  bytes(): Uint8Array {
    const len = this.varint();
    if (this.pos + len > this.buf.length) throw new Error(`${this.what}: field of ${len} bytes runs past the end`);
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  fixed32Float(): number {
    if (this.pos + 4 > this.buf.length) throw new Error(`${this.what}: truncated float`);
    const v = Buffer.from(this.buf.buffer, this.buf.byteOffset + this.pos, 4).readFloatLE(0);
    this.pos += 4;
    return v;
  }

  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 1) this.pos += 8;
    else if (wireType === 2) this.bytes();
    else if (wireType === 5) this.pos += 4;
    else throw new Error(`${this.what}: unsupported wire type ${wireType}`);
  }

  /** Iterates (field number, wire type) pairs; the callback reads or skips the value. */
  fields(onField: (field: number, wireType: number) => void): void {
    while (!this.done) {
      const key = this.varint();
      onField(Math.floor(key / 8), key & 7);
    }
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes a sentencepiece ModelProto (the fields this project needs; others are skipped). */
export function parseSentencePieceModel(data: Uint8Array, file: string): SentencePieceModel {
  const model: SentencePieceModel = {
    pieces: [],
    trainer: { modelType: 1, byteFallback: false, unkPiece: '<unk>', treatWhitespaceAsSuffix: false },
    normalizer: { name: '', hasCharsmap: false, addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true },
  };
  const top = new ProtoReader(data, file);
  top.fields((field, wt) => {
    if (field === 1 && wt === 2) {
      const r = new ProtoReader(top.bytes(), `${file}: piece ${model.pieces.length}`);
      const p: SentencePiece = { piece: '', score: 0, type: PieceType.NORMAL };
      r.fields((f, w) => {
        if (f === 1 && w === 2) p.piece = utf8.decode(r.bytes());
        else if (f === 2 && w === 5) p.score = r.fixed32Float();
        else if (f === 3 && w === 0) p.type = r.varint();
        else r.skip(w);
      });
      model.pieces.push(p);
    } else if (field === 2 && wt === 2) {
      const r = new ProtoReader(top.bytes(), `${file}: trainer_spec`);
      r.fields((f, w) => {
        if (f === 3 && w === 0) model.trainer.modelType = r.varint();
        else if (f === 35 && w === 0) model.trainer.byteFallback = r.varint() !== 0;
        else if (f === 24 && w === 0) model.trainer.treatWhitespaceAsSuffix = r.varint() !== 0;
        else if (f === 45 && w === 2) model.trainer.unkPiece = utf8.decode(r.bytes());
        else r.skip(w);
      });
    } else if (field === 3 && wt === 2) {
      const r = new ProtoReader(top.bytes(), `${file}: normalizer_spec`);
      r.fields((f, w) => {
        if (f === 1 && w === 2) model.normalizer.name = utf8.decode(r.bytes());
        else if (f === 2 && w === 2) model.normalizer.hasCharsmap = r.bytes().length > 0;
        else if (f === 3 && w === 0) model.normalizer.addDummyPrefix = r.varint() !== 0;
        else if (f === 4 && w === 0) model.normalizer.removeExtraWhitespaces = r.varint() !== 0;
        else if (f === 5 && w === 0) model.normalizer.escapeWhitespaces = r.varint() !== 0;
        else r.skip(w);
      });
    } else {
      top.skip(wt);
    }
  });
  if (model.pieces.length === 0) throw new Error(`${file}: no pieces: not a sentencepiece model`);
  return model;
}

// ---- tokenizer.json ----------------------------------------------------------------------------

interface AddedTokenEntry {
  content: string;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  single_word?: boolean;
  special?: boolean;
}

export interface HFTokenizerFiles {
  /** tokenizer_config.json */
  config: Record<string, unknown>;
  /** added_tokens.json (token -> id), if present */
  added: Record<string, number>;
}

/** The added tokens by id: tokenizer_config.json's added_tokens_decoder, then added_tokens.json. */
export function addedTokens(files: HFTokenizerFiles, source: string): Map<number, AddedTokenEntry> {
  const out = new Map<number, AddedTokenEntry>();
  const decoder = (files.config.added_tokens_decoder ?? {}) as Record<string, AddedTokenEntry>;
  for (const [id, entry] of Object.entries(decoder)) {
    if (!Number.isSafeInteger(Number(id)) || typeof entry?.content !== 'string') {
      throw new Error(`${source}: added_tokens_decoder entry ${JSON.stringify(id)} is malformed`);
    }
    out.set(Number(id), entry);
  }
  for (const [content, id] of Object.entries(files.added)) {
    const known = out.get(id);
    if (known !== undefined && known.content !== content) {
      throw new Error(`${source}: added_tokens.json gives id ${id} to ${JSON.stringify(content)}, tokenizer_config.json to ${JSON.stringify(known.content)}`);
    }
    if (known === undefined) out.set(id, { content, special: true });
  }
  return out;
}

/** Splits a string into code points (Python's indexing), not UTF-16 units. */
function codePoints(s: string): string[] {
  return Array.from(s);
}

/** HF's SentencePieceExtractor rule: every split of a piece into two pieces of the vocab is a merge, ranked by the piece's score. */
function bpeMerges(vocab: [string, number][], index: Map<string, number>): [string, string][] {
  const merges: { l: string; r: string; score: number }[] = [];
  for (const [piece, score] of vocab) {
    const cps = codePoints(piece);
    const local: { l: string; r: string; score: number }[] = [];
    for (let i = 1; i < cps.length; i++) {
      const l = cps.slice(0, i).join('');
      const r = cps.slice(i).join('');
      if (index.has(l) && index.has(r)) local.push({ l, r, score });
    }
    local.sort((a, b) => index.get(a.l)! - index.get(b.l)! || index.get(a.r)! - index.get(b.r)!);
    merges.push(...local);
  }
  // Stable sort, highest score first (Array.prototype.sort is stable).
  merges.sort((a, b) => b.score - a.score);
  return merges.map((m) => [m.l, m.r]);
}

/** Builds the tokenizer.json object. */
export function buildTokenizerJson(sp: SentencePieceModel, files: HFTokenizerFiles, source: string): Record<string, unknown> {
  const { trainer, normalizer } = sp;
  if (trainer.modelType !== 2) throw new Error(`${source}: sentencepiece model_type ${trainer.modelType} is not BPE (2): InternLM2 tokenizers are BPE`);
  if (!trainer.byteFallback) throw new Error(`${source}: sentencepiece byte_fallback is off; InternLM2 tokenizers use byte fallback`);
  if (trainer.treatWhitespaceAsSuffix) throw new Error(`${source}: treat_whitespace_as_suffix is not supported`);
  if (normalizer.hasCharsmap || !['identity', ''].includes(normalizer.name)) {
    throw new Error(`${source}: sentencepiece normalization '${normalizer.name}' is not supported (only identity)`);
  }
  if (normalizer.removeExtraWhitespaces) throw new Error(`${source}: sentencepiece remove_extra_whitespaces is on; not supported`);
  if (!normalizer.escapeWhitespaces) throw new Error(`${source}: sentencepiece escape_whitespaces is off; not supported`);

  const added = addedTokens(files, source);
  const vocab: [string, number][] = sp.pieces.map((p, id) => [added.get(id)?.content ?? p.piece, p.score]);
  // Tokens past the sentencepiece pieces (InternVL's <img>, <IMG_CONTEXT>, ...) live only in the
  // added vocabulary, and must follow the pieces without a gap.
  const extra = [...added.keys()].filter((id) => id >= vocab.length).sort((a, b) => a - b);
  extra.forEach((id, k) => {
    if (id !== vocab.length + k) {
      throw new Error(`${source}: added token ${JSON.stringify(added.get(id)!.content)} has id ${id}, leaving a gap after id ${vocab.length + k - 1}`);
    }
  });
  // As HF's SentencePieceExtractor: splits are looked up among the model's own pieces, and a
  // repeated piece keeps its last id (Python dict semantics).
  const spIndex = new Map<string, number>();
  sp.pieces.forEach((p, id) => spIndex.set(p.piece, id));
  const merges = bpeMerges(vocab, spIndex);
  const vocabObject: Record<string, number> = {};
  vocab.forEach(([piece], id) => {
    vocabObject[piece] = id;
  });
  const index = new Map(Object.entries(vocabObject));

  const entry = (id: number, e: AddedTokenEntry) => ({
    id,
    content: e.content,
    single_word: e.single_word ?? false,
    lstrip: e.lstrip ?? false,
    rstrip: e.rstrip ?? false,
    normalized: e.normalized ?? false,
    special: e.special ?? true,
  });
  // sentencepiece matches USER_DEFINED pieces in raw text before BPE (InternLM2's placeholders,
  // e.g. "[UNUSED_TOKEN_145]", encode to their id), so they become added tokens too. Where HF
  // renames the id, the placeholder comes first: the HF content listed after it is what decodes.
  const addedList: ReturnType<typeof entry>[] = [];
  sp.pieces.forEach((p, id) => {
    if (p.type === PieceType.USER_DEFINED) {
      const renamed = added.get(id);
      addedList.push(entry(id, { content: p.piece, special: renamed === undefined ? false : (renamed.special ?? true) }));
    }
  });
  for (const [id, e] of [...added.entries()].sort((a, b) => a[0] - b[0])) addedList.push(entry(id, e));
  const bos = stringSetting(files.config.bos_token) ?? '<s>';
  const bosId = index.get(bos);
  if (bosId === undefined) throw new Error(`${source}: bos_token ${JSON.stringify(bos)} is not in the vocabulary`);
  const addBos = files.config.add_bos_token !== false;
  const addEos = files.config.add_eos_token === true;
  const eos = stringSetting(files.config.eos_token) ?? '</s>';
  const eosId = index.get(eos);
  if (addEos && eosId === undefined) throw new Error(`${source}: eos_token ${JSON.stringify(eos)} is not in the vocabulary`);
  const seq = (id: 'A' | 'B') => ({ Sequence: { id, type_id: 0 } });
  const special = (t: string) => ({ SpecialToken: { id: t, type_id: 0 } });
  const single = [...(addBos ? [special(bos)] : []), seq('A'), ...(addEos ? [special(eos)] : [])];
  const pair = [...single, ...(addBos ? [special(bos)] : []), seq('B'), ...(addEos ? [special(eos)] : [])];
  const specialTokens: Record<string, unknown> = {};
  if (addBos) specialTokens[bos] = { id: bos, ids: [bosId], tokens: [bos] };
  if (addEos) specialTokens[eos] = { id: eos, ids: [eosId], tokens: [eos] };

  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedList,
    normalizer: {
      type: 'Sequence',
      normalizers: [...(normalizer.addDummyPrefix ? [{ type: 'Prepend', prepend: '▁' }] : []), { type: 'Replace', pattern: { String: ' ' }, content: '▁' }],
    },
    pre_tokenizer: null,
    post_processor: { type: 'TemplateProcessing', single, pair, special_tokens: specialTokens },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        // sentencepiece drops the leading space on decode only when it added one (dummy prefix).
        // InternLM2's slow tokenizer decodes exactly as sentencepiece does: its prefix-space
        // adjustment always adds a space and then removes it.
        ...(normalizer.addDummyPrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: added.get(0)?.content ?? trainer.unkPiece,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: vocabObject,
      merges,
    },
  };
}

function stringSetting(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

function readJsonIfPresent(file: string): Record<string, unknown> | undefined {
  return fs.existsSync(file) ? readJsonFile<Record<string, unknown>>(file) : undefined;
}

/**
 * The converted model's tokenizer files: `tokenizer.json` (from the checkpoint's own, else built from
 * tokenizer.model) and a `tokenizer_config.json` holding what the runtime needs.
 */
export function convertTokenizer(hfDir: string): { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  const configFile = path.join(hfDir, 'tokenizer_config.json');
  const config = readJsonIfPresent(configFile);
  if (config === undefined) throw new Error(`${hfDir}: tokenizer_config.json is missing`);
  const added = (readJsonIfPresent(path.join(hfDir, 'added_tokens.json')) ?? {}) as Record<string, number>;
  const files: HFTokenizerFiles = { config, added };
  let tokenizerJson = readJsonIfPresent(path.join(hfDir, 'tokenizer.json'));
  if (tokenizerJson === undefined) {
    const modelFile = path.join(hfDir, 'tokenizer.model');
    if (!fs.existsSync(modelFile)) throw new Error(`${hfDir}: neither tokenizer.json nor tokenizer.model found`);
    tokenizerJson = buildTokenizerJson(parseSentencePieceModel(fs.readFileSync(modelFile), modelFile), files, modelFile);
  }
  const tokens = addedTokens(files, configFile);
  const tokenizerConfig: Record<string, unknown> = {
    tokenizer_class: 'InternLM2Tokenizer',
    add_bos_token: config.add_bos_token !== false,
    add_eos_token: config.add_eos_token === true,
    bos_token: stringSetting(config.bos_token) ?? '<s>',
    eos_token: stringSetting(config.eos_token) ?? '</s>',
    pad_token: stringSetting(config.pad_token) ?? '</s>',
    unk_token: stringSetting(config.unk_token) ?? '<unk>',
    clean_up_tokenization_spaces: false,
    model_max_length: config.model_max_length ?? null,
    added_tokens_decoder: Object.fromEntries(
      [...tokens.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([id, e]) => [
          String(id),
          {
            content: e.content,
            lstrip: e.lstrip ?? false,
            normalized: e.normalized ?? false,
            rstrip: e.rstrip ?? false,
            single_word: e.single_word ?? false,
            special: e.special ?? true,
          },
        ]),
    ),
  };
  return { tokenizerJson, tokenizerConfig };
}

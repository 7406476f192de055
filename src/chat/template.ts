// The internlm2-chat conversation template (InternVL2's; ChatML without newlines after <|im_end|>)
// and the expansion of <image> placeholders into <img><IMG_CONTEXT>...</img>.
import { InputError } from '../errors';
import type { TextPiece } from '../tokenizer';

export const IMG_START_TOKEN = '<img>';
export const IMG_END_TOKEN = '</img>';
export const IMG_CONTEXT_TOKEN = '<IMG_CONTEXT>';
export const IMAGE_PLACEHOLDER = '<image>';
/** The template's separator, also the end-of-turn token generation stops at. */
export const SEPARATOR = '<|im_end|>';
const START = '<|im_start|>';
const ROLES = ['user\n', 'assistant\n'] as const;

export type History = [question: string, answer: string][];

/**
 * A piece of a prompt: `markup` is the template's own (special tokens it places: <|im_start|>,
 * <|im_end|>, <img>...</img>), the rest is text (role names, the system message, questions, answers).
 * Joined, the pieces are the prompt string; tokenized piece by piece, only markup becomes special tokens.
 */
export type PromptPiece = TextPiece;

const markup = (text: string): PromptPiece => ({ text, markup: true });
const plain = (text: string): PromptPiece => ({ text, markup: false });

/**
 * system + history + the new question, ending with the assistant's role so that the model answers (or
 * with `answerPrefix` after it, which the model continues), as pieces (see PromptPiece). As upstream's
 * template, an empty answer in the history adds its role without a separator.
 */
export function buildPromptPieces(systemMessage: string, history: History, question: string, answerPrefix = ''): PromptPiece[] {
  const pieces = [markup(START), plain(`system\n${systemMessage}`), markup(SEPARATOR)];
  const turn = (role: string, message: string | null) => pieces.push(markup(START), plain(role + (message || '')), ...(message ? [markup(SEPARATOR)] : []));
  for (const [q, a] of history) {
    turn(ROLES[0], q);
    turn(ROLES[1], a);
  }
  turn(ROLES[0], question);
  pieces.push(markup(START), plain(ROLES[1] + answerPrefix));
  return pieces;
}

/** The prompt string of pieces. */
export function joinPieces(pieces: readonly PromptPiece[]): string {
  return pieces.map((p) => p.text).join('');
}

/** buildPromptPieces as one string. */
export function buildPrompt(systemMessage: string, history: History, question: string): string {
  return joinPieces(buildPromptPieces(systemMessage, history, question));
}

/**
 * Replaces, for each entry n of numPatchesList (tiles per image), the first remaining <image> of the
 * prompt's text by <img> + <IMG_CONTEXT> x (tokensPerTile[k] * n) + </img> (markup pieces). Upstream
 * silently leaves an unmatched placeholder or entry behind (and then fails or feeds the literal text);
 * here both are errors.
 */
export function expandImagePieces(pieces: readonly PromptPiece[], numPatchesList: number[], tokensPerTile: number[]): PromptPiece[] {
  const placeholders = pieces.reduce((n, p) => n + (p.markup ? 0 : p.text.split(IMAGE_PLACEHOLDER).length - 1), 0);
  if (placeholders !== numPatchesList.length) {
    throw new InputError(
      'numPatchesList',
      `the prompt has ${placeholders} <image> placeholder(s) but numPatchesList has ${numPatchesList.length} entr${numPatchesList.length === 1 ? 'y' : 'ies'} ([${numPatchesList}])`,
    );
  }
  let k = 0;
  return pieces.flatMap((piece) => {
    if (piece.markup) return [piece];
    const [first, ...rest] = piece.text.split(IMAGE_PLACEHOLDER);
    const out = [plain(first)];
    for (const text of rest) {
      out.push(markup(IMG_START_TOKEN + IMG_CONTEXT_TOKEN.repeat(tokensPerTile[k] * numPatchesList[k]) + IMG_END_TOKEN), plain(text));
      k++;
    }
    return out.filter((p) => p.text !== '');
  });
}

/** expandImagePieces on a prompt string. */
export function expandImagePlaceholders(prompt: string, numPatchesList: number[], tokensPerTile: number[]): string {
  return joinPieces(expandImagePieces([plain(prompt)], numPatchesList, tokensPerTile));
}

// The internlm2-chat conversation template (InternVL2's; ChatML without newlines after <|im_end|>)
// and the expansion of <image> placeholders into <img><IMG_CONTEXT>...</img>.
import { InputError } from '../errors';

export const IMG_START_TOKEN = '<img>';
export const IMG_END_TOKEN = '</img>';
export const IMG_CONTEXT_TOKEN = '<IMG_CONTEXT>';
export const IMAGE_PLACEHOLDER = '<image>';
/** The template's separator, also the end-of-turn token generation stops at. */
export const SEPARATOR = '<|im_end|>';
const ROLES = ['<|im_start|>user\n', '<|im_start|>assistant\n'] as const;

export type History = [question: string, answer: string][];

/**
 * system + history + the new question, ending with the assistant's role so that the model answers.
 * As upstream's template, an empty answer in the history adds its role without a separator.
 */
export function buildPrompt(systemMessage: string, history: History, question: string): string {
  let prompt = `<|im_start|>system\n${systemMessage}${SEPARATOR}`;
  const turn = (role: string, message: string | null) => (prompt += message ? role + message + SEPARATOR : role);
  for (const [q, a] of history) {
    turn(ROLES[0], q);
    turn(ROLES[1], a);
  }
  turn(ROLES[0], question);
  turn(ROLES[1], null);
  return prompt;
}

/**
 * Replaces, for each entry n of numPatchesList (tiles per image), the first remaining <image> of the
 * prompt by <img> + <IMG_CONTEXT> x (tokensPerTile[k] * n) + </img>. Upstream silently leaves an
 * unmatched placeholder or entry behind (and then fails or feeds the literal text); here both are errors.
 */
export function expandImagePlaceholders(prompt: string, numPatchesList: number[], tokensPerTile: number[]): string {
  const placeholders = prompt.split(IMAGE_PLACEHOLDER).length - 1;
  if (placeholders !== numPatchesList.length) {
    throw new InputError(
      'numPatchesList',
      `the prompt has ${placeholders} <image> placeholder(s) but numPatchesList has ${numPatchesList.length} entr${numPatchesList.length === 1 ? 'y' : 'ies'} ([${numPatchesList}])`,
    );
  }
  numPatchesList.forEach((n, k) => {
    prompt = prompt.replace(IMAGE_PLACEHOLDER, IMG_START_TOKEN + IMG_CONTEXT_TOKEN.repeat(tokensPerTile[k] * n) + IMG_END_TOKEN);
  });
  return prompt;
}

// Prompt building, in one place for chat, batchChat, inspection, the CLI, the examples and the server:
// the question (+ history) in the internlm2-chat template, the Image-k / Frame k prefixes upstream's
// examples use, and each <image> expanded into <img><IMG_CONTEXT> x n</img> for its tiles.
import type * as tf from '@tensorflow/tfjs';
import { InputError } from '../errors';
import { DataFlag, Sample, samplesOf } from '../model/samples';
import { VisionLanguageModel } from '../model/vlm';
import { PVCTokenizer } from '../tokenizer';
import { buildPrompt, buildPromptPieces, expandImagePieces, expandImagePlaceholders, History, IMAGE_PLACEHOLDER, joinPieces } from './template';

/**
 * The question with one placeholder line per image or frame in front, as upstream's quick start writes
 * them: "Image-1: <image>\nImage-2: <image>\n..." for several images (a single image gets no prefix:
 * chat adds "<image>\n" itself), "Frame1: <image>\n..." for a video's frames. A question that already
 * has <image> placeholders is returned as it is.
 */
export function withImagePlaceholders(question: string, count: number, kind: 'images' | 'video'): string {
  if (question.includes(IMAGE_PLACEHOLDER) || count === 0 || (kind === 'images' && count === 1)) return question;
  const line = kind === 'video' ? (k: number) => `Frame${k}: ${IMAGE_PLACEHOLDER}\n` : (k: number) => `Image-${k}: ${IMAGE_PLACEHOLDER}\n`;
  return Array.from({ length: count }, (_, k) => line(k + 1)).join('') + question;
}

export interface PromptOptions {
  /** Earlier (question, answer) turns. */
  history?: History | null;
  /** Tiles per image (upstream's num_patches_list), in order of the <image> placeholders. Default: one image with every tile. */
  numPatchesList?: number[];
  /** PVC's per-sample kind: 1 single image, 2 multi-image, 3 video (one per sample with splitSizes). */
  dataFlag?: DataFlag | DataFlag[];
  /** Tiles per sample (upstream's split_sizes); default: all tiles are one sample. */
  splitSizes?: number[];
  /** Replaces the template's system message (the model config's system_message). */
  systemMessage?: string;
  /**
   * Tokenize the system message, history and question as plain text: special-token strings in them
   * (`<|im_end|>`, `<|im_start|>`, `<img>`, ...) stay characters, so no text can forge a turn; only the
   * template places special tokens (its markup and the images' <img><IMG_CONTEXT>...</img>, which
   * <image> placeholders still become). vLLM's and OpenAI's rule; `pvc serve` always sets it. Default
   * false: the whole prompt string is tokenized, special-token text parsed, as upstream's chat() does.
   */
  plainText?: boolean;
  /**
   * The start of the answer: the prompt ends with it after the assistant's role, and the model goes on
   * from there (an assistant prefill); the answer is what it adds. Tokenized as the rest of the prompt.
   */
  answerPrefix?: string;
}

export interface PreparedPrompt {
  prompt: string;
  /** The question as stored in history (with the automatic "<image>\n"). */
  question: string;
  inputIds: number[];
}

/**
 * The prompt and ids chat() feeds the model, following upstream: "<image>\n" is prepended when there
 * is no history, pixels are given and the question has no <image>; each numPatchesList entry expands
 * the next <image> into the IMG_CONTEXT tokens of its tiles.
 */
export function preparePrompt(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  /** Only its tile count (shape[0]) is read. */
  pixelValues: Pick<tf.Tensor4D, 'shape'> | null,
  question: string,
  options: PromptOptions = {},
): PreparedPrompt & { samples: Sample[] } {
  const history = options.history ?? null;
  if (history === null && pixelValues !== null && !question.includes(IMAGE_PLACEHOLDER)) question = `${IMAGE_PLACEHOLDER}\n${question}`;
  const numPatchesList = options.numPatchesList ?? (pixelValues !== null ? [pixelValues.shape[0]] : []);
  const tiles = pixelValues?.shape[0] ?? 0;
  const total = numPatchesList.reduce((a, b) => a + b, 0);
  if (total !== tiles) throw new InputError('numPatchesList', `numPatchesList [${numPatchesList}] sums to ${total}, but pixelValues has ${tiles} tiles`);
  const samples = samplesOf(numPatchesList, options.dataFlag, options.splitSizes);
  const tokensPerTile = samples.flatMap((s) => s.tilesPerImage.map(() => model.tokensPerTile(s.dataFlag)));
  const pieces = expandImagePieces(
    buildPromptPieces(options.systemMessage ?? model.config.system_message, history ?? [], question, options.answerPrefix),
    numPatchesList,
    tokensPerTile,
  );
  const prompt = joinPieces(pieces);
  return { prompt, question, inputIds: tokenizer.encode(options.plainText ? pieces : prompt), samples };
}

/** Upstream's batch_chat prompts: one question per row, each with its own image (numPatchesList[i] tiles) or none. */
export function prepareBatchPrompts(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  pixelValues: tf.Tensor4D | null,
  questions: string[],
  options: { numPatchesList?: number[]; dataFlag?: DataFlag | DataFlag[] } = {},
): { rows: number[][]; samples: Sample[] } {
  const numPatchesList = options.numPatchesList ?? (pixelValues !== null ? [pixelValues.shape[0]] : questions.map(() => 0));
  if (numPatchesList.length !== questions.length) {
    throw new InputError('numPatchesList', `batchChat: ${questions.length} questions but numPatchesList has ${numPatchesList.length} entries`);
  }
  const tiles = pixelValues?.shape[0] ?? 0;
  if (numPatchesList.reduce((a, b) => a + b, 0) !== tiles)
    throw new InputError('numPatchesList', `numPatchesList [${numPatchesList}] does not sum to the ${tiles} tiles of pixelValues`);
  // One sample per question.
  const samples = pixelValues === null ? [] : samplesOf(numPatchesList, options.dataFlag, numPatchesList);
  const rows = questions.map((q, i) => {
    if (pixelValues !== null && !q.includes(IMAGE_PLACEHOLDER)) q = `${IMAGE_PLACEHOLDER}\n${q}`;
    const images = pixelValues === null ? [] : [numPatchesList[i]];
    const prompt = expandImagePlaceholders(
      buildPrompt(model.config.system_message, [], q),
      images,
      images.map(() => model.tokensPerTile(samples[i].dataFlag)),
    );
    return tokenizer.encode(prompt);
  });
  return { rows, samples };
}

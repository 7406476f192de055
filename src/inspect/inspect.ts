// model.inspect: runs a prompt (and optionally generation) exactly as chat does, recording the
// selected taps of the prompt pass and of every generation step.
import * as tf from '@tensorflow/tfjs';
import { chatGenerationConfig, generateForRows, GenerationOptions, promptTokenIds } from '../chat/chat';
import { preparePrompt } from '../chat/prompt';
import { History } from '../chat/template';
import { DataFlag, Sample, samplesOf } from '../model/samples';
import { imageTokenPositions, VisionLanguageModel } from '../model/vlm';
import { PVCTokenizer } from '../tokenizer';
import { expandTaps, TapRecorder } from './taps';

export interface InspectRequest {
  /** Default: the tokenizer of the model's directory. */
  tokenizer?: PVCTokenizer;
  pixelValues?: tf.Tensor4D | null;
  /** A chat question (templated as chat() does), or the prompt ids themselves. */
  question?: string;
  inputIds?: number[];
  history?: History | null;
  numPatchesList?: number[];
  dataFlag?: DataFlag | DataFlag[];
  splitSizes?: number[];
  /** Tap names or globs: `vision.layers.*.out`, `llm.layers.{0..3}.attn.probs`, ... (see src/inspect/taps.ts). */
  taps: string[];
  /** Generate too, recording the taps of every generation step. */
  generate?: GenerationOptions;
  /** Return plain arrays ({shape, data}) instead of tensors. */
  asArrays?: boolean;
  signal?: AbortSignal;
}

export interface TapArray {
  shape: number[];
  data: Float32Array;
}

export interface Inspection<T = tf.Tensor> {
  /** The prompt pass, by tap name. */
  taps: Record<string, T>;
  /** steps[k]: the generation pass that read generated token k. */
  steps: Record<string, T>[];
  prompt: string | null;
  inputIds: number[];
  outputIds: number[];
  /** Positions of the IMG_CONTEXT tokens in inputIds (where the visual tokens sit). */
  imageTokenPositions: number[];
  /** Frees the returned tensors. */
  dispose(): void;
}

/**
 * Runs a prompt (and optionally generation) recording the selected taps. The returned tensors are the
 * caller's: `dispose()` them (or ask for arrays). Without taps the model runs exactly as in chat().
 */
export async function inspect(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  request: InspectRequest,
): Promise<Inspection<tf.Tensor> | Inspection<TapArray>> {
  const pixelValues = request.pixelValues ?? null;
  const recorder = new TapRecorder(expandTaps(request.taps, model.tapNames()));
  let prompt: string | null = null;
  let inputIds: number[];
  let samples: Sample[];
  if (request.question !== undefined) {
    ({ prompt, inputIds, samples } = preparePrompt(model, tokenizer, pixelValues, request.question, request));
  } else if (request.inputIds !== undefined) {
    inputIds = request.inputIds;
    samples = pixelValues === null ? [] : samplesOf(request.numPatchesList ?? [pixelValues.shape[0]], request.dataFlag, request.splitSizes);
  } else {
    throw new Error('inspect: give a question or inputIds');
  }
  const outputIds: number[] = [];
  try {
    const config = chatGenerationConfig(tokenizer, request.generate ?? { maxNewTokens: 0 });
    const steps = generateForRows(model, tokenizer, { rows: [inputIds], pixelValues, samples }, config, { signal: request.signal, tap: recorder.tap });
    for await (const step of steps) {
      outputIds.push(step.tokens[0]);
      recorder.step = step.step; // the next pass reads this token
    }
  } catch (e) {
    recorder.dispose();
    throw e;
  }
  const base = { prompt, inputIds, outputIds, imageTokenPositions: imageTokenPositions(inputIds, promptTokenIds(tokenizer).imgContext) };
  const taps = recorder.promptValues();
  const steps = recorder.steps.map((m) => Object.fromEntries(m));
  if (!request.asArrays) {
    return { ...base, taps, steps, dispose: () => tf.dispose([...Object.values(taps), ...steps.flatMap((s) => Object.values(s))]) };
  }
  // Read asynchronously: a GPU backend (webgpu) cannot read a tensor synchronously in Node.
  const toArray = async (t: tf.Tensor): Promise<TapArray> => {
    const out = { shape: t.shape, data: (await t.data()) as Float32Array };
    t.dispose();
    return out;
  };
  const mapValues = async (r: Record<string, tf.Tensor>) =>
    Object.fromEntries(await Promise.all(Object.entries(r).map(async ([k, v]) => [k, await toArray(v)])));
  return { ...base, taps: await mapValues(taps), steps: await Promise.all(steps.map(mapValues)), dispose: () => {} };
}

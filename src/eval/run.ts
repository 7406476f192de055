// `pvc eval` in one process: the items not yet in the results file answered one after another, each
// result appended as one line as soon as it is known. A rerun (after a crash, a kill, a Ctrl-C) skips
// what the file holds; a line cut short by a kill is dropped when the file is opened again, so a
// killed run loses at most the item it was answering.
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { throwIfAborted } from '../event_loop';
import { InputError } from '../errors';
import { PVCModel } from '../pvc_model';
import { loadImage } from '../preprocess/image';
import { decodeAnswer } from '../tokenizer';
import { MMBenchItem, mmbenchOption } from './mmbench';
import { checkAnswer, itemFrames, MVBenchItem, mvbenchQuestion } from './mvbench';

export type Benchmark = 'mvbench' | 'mmbench';
export const BENCHMARKS: readonly Benchmark[] = ['mvbench', 'mmbench'];

/** An item of a benchmark, as a job carries it. */
export type EvalItem = MVBenchItem | MMBenchItem;

/** A protocol's media and decoding. */
export interface EvalProtocol {
  /** Frames sampled from a video (video benchmarks), one tile each. */
  numSegments: number;
  /** Most tiles of an image (image benchmarks; 1: the image as one tile, PVC's script without --dynamic). */
  maxNum: number;
  numBeams: number;
  maxNewTokens: number;
  minNewTokens: number;
}

/** One line of the results file. */
export interface EvalResult {
  id: string;
  task: string;
  /** Tokens of the prompt (visual tokens included). */
  promptIds: number;
  answer: string;
  /** The option read from the answer (its first word), and whether it is the right one. */
  option: string;
  correct: boolean;
  seconds: number;
}

/** A JSONL file of results, one line per item, appended one whole line at a time. */
export class ResultsFile {
  private constructor(
    readonly file: string,
    readonly results: Map<string, EvalResult>,
    private fd: number | null,
  ) {}

  /** Opens (or creates) the file; a last line without its newline (a write cut short) is removed. */
  static open(file: string): ResultsFile {
    const results = new Map<string, EvalResult>();
    if (fs.existsSync(file)) {
      const bytes = fs.readFileSync(file);
      const whole = bytes.lastIndexOf(0x0a) + 1;
      if (whole < bytes.length) fs.truncateSync(file, whole);
      bytes
        .subarray(0, whole)
        .toString('utf8')
        .split('\n')
        .forEach((line, i) => {
          if (line === '') return;
          let r: EvalResult | null;
          try {
            r = JSON.parse(line) as EvalResult | null;
          } catch (e) {
            throw new InputError('out', `${file} line ${i + 1}: not JSON (${(e as Error).message}); not a results file of pvc eval?`);
          }
          if (r === null || typeof r !== 'object' || typeof r.id !== 'string' || typeof r.correct !== 'boolean' || typeof r.task !== 'string')
            throw new InputError('out', `${file} line ${i + 1}: not a result (id, task, correct)`);
          results.set(r.id, r);
        });
    }
    return new ResultsFile(file, results, fs.openSync(file, 'a'));
  }

  has(id: string): boolean {
    return this.results.has(id);
  }

  /** Appends a result as one write of one line (O_APPEND: whole lines, also with other writers). Twice the same id: the first stays. */
  append(result: EvalResult): void {
    if (this.fd === null) throw new Error(`${this.file}: closed`);
    if (this.results.has(result.id)) return;
    const line = Buffer.from(JSON.stringify(result) + '\n');
    for (let at = 0; at < line.length;) at += fs.writeSync(this.fd, line, at);
    this.results.set(result.id, result);
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

/** Accuracy per task and over all items, in percent (as PVC prints it: the tasks, then 'Avg'). */
export function accuracyOf(results: Iterable<EvalResult>): {
  tasks: Record<string, { correct: number; total: number; accuracy: number }>;
  avg: number;
  items: number;
} {
  const tasks: Record<string, { correct: number; total: number; accuracy: number }> = {};
  let correct = 0;
  let items = 0;
  for (const r of results) {
    const t = (tasks[r.task] ??= { correct: 0, total: 0, accuracy: 0 });
    t.total++;
    items++;
    if (r.correct) {
      t.correct++;
      correct++;
    }
  }
  for (const t of Object.values(tasks)) t.accuracy = (100 * t.correct) / t.total;
  return { tasks, avg: items === 0 ? 0 : (100 * correct) / items, items };
}

/** Answers one item under the protocol; on a fresh rotary state (no item depends on the ones before). */
export async function answerItem(model: PVCModel, dir: string, item: EvalItem, protocol: EvalProtocol, signal?: AbortSignal): Promise<EvalResult> {
  const started = Date.now();
  const generation = { numBeams: protocol.numBeams, maxNewTokens: protocol.maxNewTokens, minNewTokens: protocol.minNewTokens, doSample: false };
  let pixelValues: tf.Tensor4D | undefined;
  try {
    if (item.benchmark === 'mmbench') {
      // The image tiled as PVC's script does (--dynamic: up to maxNum tiles and the thumbnail), no data flag.
      const image = await loadImage(Buffer.from(item.image, 'base64'), {
        inputSize: model.config.image_size,
        maxNum: protocol.maxNum,
        useThumbnail: model.config.use_thumbnail,
      });
      pixelValues = image.pixelValues;
      const ids = await model.chatIds(pixelValues, item.question, generation, { numPatchesList: [image.numPatches], signal, resetRotary: true });
      const answer = decodeAnswer(model.tokenizer, ids.outputIds);
      const option = mmbenchOption(answer, item.options);
      return {
        id: item.id,
        task: item.task,
        promptIds: ids.inputIds.length,
        answer,
        option,
        correct: option === item.answer,
        seconds: (Date.now() - started) / 1000,
      };
    }
    const frames = await itemFrames(dir, item, protocol.numSegments, model.config.image_size, signal);
    pixelValues = frames.pixelValues;
    const ids = await model.chatIds(pixelValues, mvbenchQuestion(item, frames.numPatchesList.length), generation, {
      dataFlag: 3,
      numPatchesList: frames.numPatchesList,
      signal,
      resetRotary: true,
    });
    const answer = decodeAnswer(model.tokenizer, ids.outputIds);
    const { option, correct } = checkAnswer(answer, item.answer);
    return { id: item.id, task: item.task, promptIds: ids.inputIds.length, answer, option, correct, seconds: (Date.now() - started) / 1000 };
  } finally {
    tf.dispose(pixelValues);
  }
}

/** Answers the items the results file does not hold yet, in order; `onResult` after each. */
export async function runEval(
  model: PVCModel,
  dir: string,
  items: EvalItem[],
  protocol: EvalProtocol,
  results: ResultsFile,
  options: { signal?: AbortSignal; onResult?: (r: EvalResult) => void } = {},
): Promise<void> {
  for (const item of items) {
    if (results.has(item.id)) continue;
    throwIfAborted(options.signal);
    let r: EvalResult;
    try {
      r = await answerItem(model, dir, item, protocol, options.signal);
    } catch (e) {
      if (options.signal?.aborted) throw e;
      throw new Error(`${item.id}${item.benchmark === 'mvbench' ? ` (${item.media})` : ''}: ${(e as Error).message}`, { cause: e });
    }
    results.append(r);
    options.onResult?.(r);
  }
}

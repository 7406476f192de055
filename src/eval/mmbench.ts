// MMBench as PVC's evaluation runs it (OpenGVLab/PVC eval/mmbench, read, not copied): the benchmark's
// published layout (one TSV file: index, question, hint, A..E, answer, category, ..., image as base64),
// read as pandas reads it (an empty cell, or one of pandas' missing-value words, is no value); the
// prompt (the hint, the question, "X. option" lines, "Answer with the option's letter from the given
// choices directly."); the image (`--dynamic`: tiles up to `--max-num` plus the thumbnail, else one
// 448 px tile), no data flag; the decoding (at most 100 tokens, at least 1, no sampling; 5 beams, 1 with
// --dynamic as PVC's script forces) and the reading of the answer (its post_process: the answer itself
// when it is one character, its first character when that is an option letter, else the first option
// whose text the answer contains). An item is right when that reading is the answer letter (MMBench's
// own scoring, circular and through its server, is not run here).
import * as fs from 'fs';
import { parse } from 'csv-parse/sync';
import { InputError } from '../errors';
import type { EvalProtocol } from './run';

const LETTERS = ['A', 'B', 'C', 'D', 'E'];
const INSTRUCTION = "Answer with the option's letter from the given choices directly.";

/** The cells pandas' read_csv reads as missing (its default na_values), so PVC's script sees no value there. */
const PANDAS_NA = new Set([
  '',
  '#N/A',
  '#N/A N/A',
  '#NA',
  '-1.#IND',
  '-1.#QNAN',
  '-NaN',
  '-nan',
  '1.#IND',
  '1.#QNAN',
  '<NA>',
  'N/A',
  'NA',
  'NULL',
  'NaN',
  'None',
  'n/a',
  'nan',
  'null',
]);

/** PVC's MMBench defaults: tiles up to 6 plus the thumbnail (`--dynamic --max-num 6`), so 1 beam; 100 tokens. */
export const MMBENCH_PROTOCOL: EvalProtocol = { numSegments: 96, maxNum: 6, numBeams: 1, maxNewTokens: 100, minNewTokens: 1 };

/** Largest TSV read (MMBench-EN dev is ~100 MB with its images). */
const MAX_TSV_BYTES = 2 ** 30;

/** One MMBench item, as a job: everything a worker needs. */
export interface MMBenchItem {
  benchmark: 'mmbench';
  /** The TSV's index column. */
  id: string;
  /** The category column ('' when the set has none): accuracy is reported per category. */
  task: string;
  /** The question as the model gets it (hint, question, options, instruction). */
  question: string;
  /** The options the item has, by letter. */
  options: Record<string, string>;
  /** The right letter, or null (a test split: no answers). */
  answer: string | null;
  /** The image file's bytes, base64 (as the TSV holds them). */
  image: string;
}

/** The items of an MMBench TSV file, in its order; an error names the file, the row and what is wrong. */
export function readMMBench(file: string): MMBenchItem[] {
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new InputError('data', `${file}: no such file (MMBench's layout: one .tsv file)`);
  if (fs.statSync(file).size > MAX_TSV_BYTES) throw new InputError('data', `${file}: larger than ${MAX_TSV_BYTES} bytes`);
  let rows: string[][];
  try {
    rows = parse(fs.readFileSync(file), { delimiter: '\t', relax_quotes: true, relax_column_count: true, skip_empty_lines: true });
  } catch (e) {
    throw new InputError('data', `${file}: not a TSV file (${(e as Error).message})`);
  }
  const header = rows[0] ?? [];
  const column = (name: string) => header.indexOf(name);
  for (const name of ['index', 'question', 'image', 'A'])
    if (column(name) < 0) throw new InputError('data', `${file}: no '${name}' column (MMBench's: index, question, hint, A..E, answer, category, image)`);
  const cell = (row: string[], name: string): string | null => {
    const i = column(name);
    return i < 0 || PANDAS_NA.has(row[i] ?? '') ? null : row[i];
  };
  const seen = new Set<string>();
  return rows.slice(1).map((row, r) => {
    const where = `${file} row ${r + 2}`;
    if (row.length !== header.length) throw new InputError('data', `${where}: ${row.length} cells, the header has ${header.length}`);
    const id = cell(row, 'index');
    const question = cell(row, 'question');
    const image = cell(row, 'image');
    if (id === null || question === null || image === null) throw new InputError('data', `${where}: index, question and image are needed`);
    if (seen.has(id)) throw new InputError('data', `${where}: index ${id} is there twice`);
    seen.add(id);
    const options: Record<string, string> = {};
    for (const letter of LETTERS) {
      const text = cell(row, letter);
      if (text !== null) options[letter] = text;
    }
    const hint = cell(row, 'hint');
    const prompt = [hint === null ? question : `${hint}\n${question}`, ...Object.entries(options).map(([k, v]) => `${k}. ${v}`), INSTRUCTION].join('\n');
    return { benchmark: 'mmbench', id, task: cell(row, 'category') ?? '', question: prompt, options, answer: cell(row, 'answer'), image };
  });
}

/** The option an answer picks, read as PVC's post_process reads it (the answer itself when nothing matches). */
export function mmbenchOption(answer: string, options: Record<string, string>): string {
  const pred = answer.trim();
  const chars = [...pred]; // Python's len and pred[0] count code points
  if (chars.length === 1) return pred;
  if (chars.length > 0 && Object.hasOwn(options, chars[0])) return chars[0];
  for (const [letter, text] of Object.entries(options)) if (pred.includes(text)) return letter;
  return pred;
}

/** What is wrong with an MMBench item that came from a queue (null: nothing). */
export function mmbenchItemError(item: MMBenchItem): string | null {
  if (typeof item.question !== 'string' || typeof item.image !== 'string') return 'question and image are needed';
  if (
    item.options === null ||
    typeof item.options !== 'object' ||
    !Object.entries(item.options).every(([k, v]) => LETTERS.includes(k) && typeof v === 'string')
  )
    return `options ${JSON.stringify(item.options)?.slice(0, 200)}: letters A to E, each a string`;
  if (item.answer !== null && typeof item.answer !== 'string') return `answer ${JSON.stringify(item.answer)}`;
  return null;
}

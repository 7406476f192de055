// Shared test helpers: where the fixtures live and how to read the oracle's references.
import * as fs from 'fs';
import * as path from 'path';
import { SafetensorsFile } from '../src/io/safetensors';

export const FIXTURES = path.join(__dirname, 'fixtures');

export function checkpointDir(name: string): string {
  return path.join(FIXTURES, 'checkpoints', name);
}

export interface ChatRecord {
  name: string;
  question: string;
  num_patches_list: number[] | null;
  history_in: [string, string][] | null;
  history_out?: [string, string][];
  generation_config: Record<string, unknown>;
  prompt: string;
  input_ids: number[];
  output_ids: number[];
  answer: string;
}

export interface ReferenceDoc {
  fixture: string;
  seed: number;
  upstream_commit: string;
  versions: Record<string, string>;
  shards: string[];
  vocab_size: number;
  token_ids: Record<string, number>;
  num_image_token: number;
  pixel_values: { image_a_tiles: number; image_b_tiles: number };
  chat?: ChatRecord[];
  batch_chat?: {
    questions: string[];
    num_patches_list: number[];
    prompts: string[];
    input_ids: number[][];
    attention_mask: number[][];
    output_ids: number[][];
    answers: string[];
  };
  greedy16?: number[];
}

/** The oracle's reference for a fixture: its JSON document and its float32 tensors (close when done). */
export function loadReference(name: string): { doc: ReferenceDoc; tensors: SafetensorsFile } {
  const dir = path.join(FIXTURES, 'reference', name);
  const doc = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')) as ReferenceDoc;
  return { doc, tensors: SafetensorsFile.open(path.join(dir, 'tensors.safetensors')) };
}

export function readJson<T = Record<string, unknown>>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}

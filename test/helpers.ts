// Shared test helpers: where the fixtures live and how to read the oracle's references.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SafetensorsFile } from '../src/io/safetensors';

export const FIXTURES = path.join(__dirname, 'fixtures');

/** The project's own example media (examples/media/README.md): every test that just needs an input uses these. */
export const MEDIA = {
  image1: path.join(__dirname, '..', 'examples', 'media', 'image1.jpg'),
  image2: path.join(__dirname, '..', 'examples', 'media', 'image2.jpg'),
  video: path.join(__dirname, '..', 'examples', 'media', 'video.mp4'),
};

/**
 * The PVC quick start's real example files, beside the checkout in CI (../shared/assets), absent from a
 * user's clone. Tests held to references computed from them run only where they are present.
 */
export const SHARED_ASSETS = path.resolve(__dirname, '..', '..', 'shared', 'assets');
export const SHARED_ASSETS_PRESENT = fs.existsSync(path.join(SHARED_ASSETS, 'example_image1.jpg'));

/** `test` where ../shared/assets is present, else `test.skip` and a printed reason naming the path. */
export function withSharedAssets(file: string, what: string): jest.It {
  if (SHARED_ASSETS_PRESENT) return test;
  console.warn(`${file}: ${SHARED_ASSETS} is absent, so ${what} skipped (CI has it; see examples/media/README.md).`);
  return test.skip;
}

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
  ntk?: { max_position_embeddings: number; input_ids: number[]; tokens: number[] };
  /** upstream chat() with max_position_embeddings this small, on prompts longer than it x the rope_scaling factor. */
  long_context?: { max_position_embeddings: number; chat: ChatRecord[] };
}

/** The oracle's reference for a fixture: its JSON document and its float32 tensors (close when done). */
export function loadReference(name: string): { doc: ReferenceDoc; tensors: SafetensorsFile } {
  const dir = path.join(FIXTURES, 'reference', name);
  const doc = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')) as ReferenceDoc;
  return { doc, tensors: SafetensorsFile.open(path.join(dir, 'tensors.safetensors')) };
}

/** A reference tensor of rank 4 (pixel values, clips) as a tf tensor. */
export function referenceTensor4d(tensors: SafetensorsFile, name: string): tf.Tensor4D {
  return tf.tensor4d(tensors.readFloat32(name), tensors.info(name).shape as [number, number, number, number]);
}

export function readJson<T = Record<string, unknown>>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}

/** Converts a fixture checkpoint with pvc-convert into a fresh temporary directory; returns its path. */
export function convertFixture(name: string): string {
  // Imported here so suites that do not convert do not load the converter.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { convertCheckpoint } = require('../converter/convert') as typeof import('../converter/convert');
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-fixture-')), name);
  convertCheckpoint(checkpointDir(name), dir);
  return dir;
}

/**
 * A converted fixture whose config allows `positions` positions (max_position_embeddings), for requests
 * longer than the tiny models' context (the weights do not depend on it).
 */
export function convertWithPositions(name: string, positions: number): string {
  const dir = convertFixture(name);
  const file = path.join(dir, 'config.json');
  const config = readJson<{ llm: { max_position_embeddings: number } }>(file);
  config.llm.max_position_embeddings = positions;
  fs.writeFileSync(file, JSON.stringify(config));
  return dir;
}

/** max |a - b| / max |ref|: the parity measure the issues state tolerances in. */
export function relativeMaxError(actual: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (actual.length !== ref.length) throw new Error(`length ${actual.length} != reference length ${ref.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return diff / scale;
}

/** The parity tolerance of the issues: max |a - b| <= 1e-4 * max |ref|. */
export const PARITY_TOLERANCE = 1e-4;

/**
 * Asserts max |a - b| <= tolerance * max |ref|; on failure the message names what was compared and
 * the measured error (a bare boolean would hide how far off it was).
 */
export function expectParity(actual: ArrayLike<number>, ref: ArrayLike<number>, what: string, tolerance = PARITY_TOLERANCE): void {
  const error = relativeMaxError(actual, ref);
  if (!(error <= tolerance)) throw new Error(`${what}: max|a - b| / max|ref| = ${error.toExponential(3)}, above the tolerance ${tolerance}`);
}

/** Whether a tfjs-node package (GPU or CPU build) is installed: the tensorflow backend can start. */
export function tensorflowInstalled(): boolean {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      require.resolve(pkg);
      return true;
    } catch {
      /* not installed */
    }
  }
  return false;
}

type ParityBackend = 'wasm' | 'cpu' | 'tensorflow' | 'webgpu';

/** PVC_TEST_BACKENDS (comma-separated) replaces the default list, e.g. `PVC_TEST_BACKENDS=webgpu` in CI. */
function parityBackends(): ParityBackend[] {
  const listed = process.env.PVC_TEST_BACKENDS;
  if (!listed) return tensorflowInstalled() ? ['wasm', 'cpu', 'tensorflow'] : ['wasm', 'cpu'];
  const names = listed.split(',').map((s) => s.trim());
  for (const n of names) {
    if (!['wasm', 'cpu', 'tensorflow', 'webgpu'].includes(n)) throw new Error(`PVC_TEST_BACKENDS: unknown backend '${n}'`);
  }
  return names as ParityBackend[];
}

/**
 * Backends the parity suites run on: wasm (default for tests) and cpu, plus tensorflow when
 * @tensorflow/tfjs-node(-gpu) is installed (e.g. built by `npm run build:tensorflow [-- --gpu]`), or the
 * list in PVC_TEST_BACKENDS (webgpu runs only when listed there).
 */
export const PARITY_BACKENDS: readonly ParityBackend[] = parityBackends();

/**
 * Keeps tapped tensors for reading after the pass. A tap runs inside tf.tidy, and a synchronous read
 * (dataSync) of a tensor the GPU holds is impossible on webgpu in Node, so each tap keeps a clone, read
 * asynchronously (and disposed) by `values()`. A name tapped again replaces the earlier value.
 */
export function tapRecorder(): { tap: (name: string, value: tf.Tensor) => void; values: () => Promise<Map<string, Float32Array>> } {
  const kept = new Map<string, tf.Tensor>();
  return {
    tap: (name, value) => {
      kept.get(name)?.dispose();
      kept.set(name, tf.keep(value.clone()));
    },
    values: async () => {
      const out = new Map<string, Float32Array>();
      for (const [name, t] of kept) out.set(name, (await t.data()) as Float32Array);
      tf.dispose([...kept.values()]);
      kept.clear();
      return out;
    },
  };
}

/** A tensor's values, read asynchronously (works on every backend) and the tensor disposed. */
export async function readAndDispose(t: tf.Tensor): Promise<Float32Array> {
  const v = (await t.data()) as Float32Array;
  t.dispose();
  return v;
}

/** Captures process.stdout / stderr writes during each test of the calling suite. */
export function captureOutput(): { stdout: () => string; stderr: () => string } {
  let out = '';
  let err = '';
  beforeEach(() => {
    out = '';
    err = '';
    jest.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
    jest.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  });
  afterEach(() => jest.restoreAllMocks());
  return { stdout: () => out, stderr: () => err };
}

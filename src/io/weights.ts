// A converted model directory (pvc-convert's output) -> named float32 tensors.
// manifest.json lists every tensor with its shard, absolute offset, dtype, shape and sha256; the
// shards are ordinary safetensors files. Opening checks the manifest against the shard headers.
import * as path from 'path';
import { FORMAT_NAME, FORMAT_VERSION } from '../config';
import * as tf from '@tensorflow/tfjs';
import { DType, SafetensorsCheckpoint } from './safetensors';
import { readJsonFile } from '../json';

export const MANIFEST_FILE = 'manifest.json';

export interface ManifestEntry {
  file: string;
  offset: number;
  dtype: DType;
  shape: number[];
  sha256: string;
}

export interface Manifest {
  format: typeof FORMAT_NAME;
  format_version: number;
  storage_dtype: 'float32' | 'float16';
  source: { model_type: string; files: { name: string; bytes: number }[] };
  shards: string[];
  tensors: Record<string, ManifestEntry>;
}

export function readManifest(dir: string): Manifest {
  const file = path.join(dir, MANIFEST_FILE);
  const m = readJsonFile<Manifest>(file, 'not a model converted by pvc-convert (or an interrupted conversion)');
  if (m.format !== FORMAT_NAME) throw new Error(`${file}: format ${JSON.stringify(m.format)} is not ${FORMAT_NAME}`);
  if (m.format_version !== FORMAT_VERSION)
    throw new Error(`${file}: format_version ${m.format_version} is not supported (this build reads ${FORMAT_VERSION}); convert the checkpoint again`);
  if (m.tensors === null || typeof m.tensors !== 'object') throw new Error(`${file}: missing "tensors"`);
  return m;
}

/** Opens a converted model's weights; every manifest entry must agree with its shard's header. */
export function openWeights(dir: string): { manifest: Manifest; weights: SafetensorsCheckpoint } {
  const manifest = readManifest(dir);
  const manifestPath = path.join(dir, MANIFEST_FILE);
  const weightMap = Object.fromEntries(Object.entries(manifest.tensors).map(([name, t]) => [name, t.file]));
  const weights = SafetensorsCheckpoint.fromWeightMap(dir, weightMap, manifestPath);
  for (const [name, t] of Object.entries(manifest.tensors)) {
    const info = weights.info(name);
    if (info.dtype !== t.dtype || info.offset !== t.offset || JSON.stringify(info.shape) !== JSON.stringify(t.shape)) {
      weights.close();
      throw new Error(
        `${manifestPath}: tensor '${name}' is ${t.dtype} [${t.shape}] at ${t.offset} but ${t.file} holds ${info.dtype} [${info.shape}] at ${info.offset}`,
      );
    }
  }
  return { manifest, weights };
}

export interface LoadOptions {
  /** Called after each tensor with the bytes read so far and the total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/**
 * The model's tensors, by project name, as float32 tf tensors. Loaded once (each tensor read with
 * one positioned read, each shard opened once); owned here and freed by `dispose()`.
 */
export class Weights {
  /** Names held as their transpose (see `storeTransposed`). */
  private readonly heldTransposed = new Set<string>();

  private constructor(
    readonly dir: string,
    private readonly tensors: Map<string, tf.Tensor>,
  ) {}

  static load(dir: string, options: LoadOptions = {}): Weights {
    const { weights } = openWeights(dir);
    const tensors = new Map<string, tf.Tensor>();
    try {
      const names = weights.names;
      const total = names.reduce((a, n) => a + weights.info(n).byteLength, 0);
      let done = 0;
      for (const name of names) {
        const info = weights.info(name);
        tensors.set(name, tf.tensor(weights.readFloat32(name), info.shape, 'float32'));
        done += info.byteLength;
        options.onProgress?.(done, total);
      }
    } catch (e) {
      tensors.forEach((t) => t.dispose());
      throw e;
    } finally {
      weights.close();
    }
    return new Weights(dir, tensors);
  }

  /** Wraps tensors that are already in memory (tests, tools). Ownership passes to the store. */
  static fromTensors(dir: string, tensors: Map<string, tf.Tensor>): Weights {
    return new Weights(dir, tensors);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  get names(): string[] {
    return [...this.tensors.keys()];
  }

  /** The tensor `name`; with `rank`, its rank is checked too. Missing names are errors naming the model. */
  get(name: string, rank?: number): tf.Tensor {
    const t = this.tensors.get(name);
    if (t === undefined) throw new Error(`${this.dir}: the converted model has no tensor '${name}'`);
    if (this.heldTransposed.has(name))
      throw new Error(`${this.dir}: tensor '${name}' is held transposed (storeTransposed); a second reader of it would get the wrong layout`);
    if (rank !== undefined && t.rank !== rank) throw new Error(`${this.dir}: tensor '${name}' has shape [${t.shape}], expected rank ${rank}`);
    return t;
  }

  /**
   * Replaces the stored 2-D tensor `name` by its transpose and returns it (the original is freed:
   * memory is not doubled). Called once per weight while a model is built, by a Linear whose kernels
   * want the [out, in] layout; from then on `get(name)` refuses the name.
   */
  storeTransposed(name: string): tf.Tensor2D {
    if (!this.heldTransposed.has(name)) {
      const t = this.get(name, 2);
      this.tensors.set(name, tf.keep(tf.transpose(t)));
      t.dispose();
      this.heldTransposed.add(name);
    }
    return this.tensors.get(name) as tf.Tensor2D;
  }

  /** Bytes held (float32). */
  get byteLength(): number {
    let bytes = 0;
    this.tensors.forEach((t) => (bytes += t.size * 4));
    return bytes;
  }

  dispose(): void {
    this.tensors.forEach((t) => t.dispose());
    this.tensors.clear();
  }
}

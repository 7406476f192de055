// A converted model directory (pvc-convert's output) -> named tensors, float32 or held below it.
// manifest.json lists every tensor with its shard, absolute offset, dtype, shape and sha256; the
// shards are ordinary safetensors files. Opening checks the manifest against the shard headers.
//
// Precision (`LoadOptions.precision`, chosen once at load): 'float32' holds every tensor as a float32
// tfjs tensor (4 bytes per value). 'bfloat16' holds every 2-D weight as bfloat16 (2 bytes: the
// checkpoint's own values when it is stored in bf16, float32 values rounded to nearest even otherwise),
// 'int8' every 2-D weight but the token embedding as int8 with a float32 scale per output column
// (1 byte; the embedding stays bfloat16). Vectors (norms, biases, scales) are float32 in every mode.
// Held weights are libtensorflow tensors on the tensorflow backend (src/io/native.ts) and int32 words
// read by WGSL programs on webgpu (src/io/webgpu_packed.ts); wasm and cpu hold float32 only.
import * as path from 'path';
import { FORMAT_NAME, FORMAT_VERSION } from '../config';
import * as tf from '@tensorflow/tfjs';
import { bf16ToF32, DType, f32ToBf16, SafetensorsCheckpoint } from './safetensors';
import { readJsonFile } from '../json';
import { NativeDType, NativeTensor, releaseStagingBuffer, stagingBuffer } from './native';
import { PackedTensor } from './webgpu_packed';

export type WeightPrecision = 'float32' | 'bfloat16' | 'int8';
export const WEIGHT_PRECISIONS: readonly WeightPrecision[] = ['float32', 'bfloat16', 'int8'];

/** The tensor that stays bfloat16 under 'int8' (its rows are looked up, not multiplied). */
const TOKEN_EMBEDDING = 'llm.embed.weight';

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
  storage_dtype: 'float32' | 'float16' | 'bfloat16';
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
  /** How 2-D weights are held (see the file comment); default 'float32'. */
  precision?: WeightPrecision;
  /**
   * Under bfloat16 / int8: the weights to hold as their transpose [out, in] from the start (those
   * Linear will ask for with storeTransposed), so no second copy is ever made.
   */
  transpose?: (name: string) => boolean;
  /** Called after each tensor with the bytes read so far and the total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/**
 * A 2-D weight held below float32: bfloat16 values, or int8 values times a float32 scale per output
 * column (`scale`, over axis `scaleAxis` of `data`: 1 as converted [in, out], 0 when held transposed).
 */
export class HeldMatrix {
  constructor(
    readonly data: NativeTensor | PackedTensor,
    readonly scale: tf.Tensor1D | null,
    readonly scaleAxis: 0 | 1,
  ) {}

  get shape(): [number, number] {
    return this.data.shape as [number, number];
  }

  get byteLength(): number {
    return this.data.byteLength + (this.scale ? this.scale.size * 4 : 0);
  }

  /** The float32 values (the caller owns the tensor). */
  toFloat32(): tf.Tensor2D {
    if (this.scale === null) return this.data.toFloat32() as tf.Tensor2D;
    const scale = this.scale;
    return tf.tidy(() => tf.mul(this.data.toFloat32(), this.scaleAxis === 1 ? scale : scale.reshape([-1, 1])));
  }

  /** Rows `ids` (int32, any shape) as float32: [...ids.shape, columns] (call inside tf.tidy). */
  gatherRows(ids: tf.Tensor): tf.Tensor {
    const rows = this.data.gatherRows(ids);
    if (this.scale === null) return rows;
    return tf.mul(rows, this.scaleAxis === 1 ? this.scale : tf.expandDims(tf.gather(this.scale, ids), -1));
  }

  /** The transpose, as a new HeldMatrix; this one is freed. */
  transposeAndFree(): HeldMatrix {
    const t = new HeldMatrix(this.data.transpose(), this.scale, this.scaleAxis === 1 ? 0 : 1);
    this.data.dispose();
    return t;
  }

  dispose(): void {
    this.data.dispose();
    this.scale?.dispose();
  }
}

/** A buffer for a weight's bytes: the reused staging buffer on tensorflow (src/io/native.ts), a fresh one on webgpu. */
function bufferFor(byteLength: number): Uint8Array {
  return tf.getBackend() === 'webgpu' ? new Uint8Array(byteLength) : stagingBuffer(byteLength);
}

/** Values in a bufferFor() buffer, held as the backend holds them: packed words on webgpu, a libtensorflow tensor otherwise. */
function hold(values: Uint8Array, dtype: NativeDType, shape: [number, number], transpose: boolean, what: string): NativeTensor | PackedTensor {
  if (tf.getBackend() !== 'webgpu') return NativeTensor.fromStaging(values, dtype, shape, { transpose, what });
  if (transpose) throw new Error(`${what}: webgpu multiplies weights as converted ([in, out]); none is held transposed`);
  return PackedTensor.fromBytes(values, dtype, shape, what);
}

/** A BF16 tensor's bits, in an aligned array of its own. */
function readBf16(weights: { readInto<T extends Uint8Array>(name: string, buf: T): T }, name: string, n: number): Uint16Array {
  const bits = new Uint16Array(n);
  weights.readInto(name, new Uint8Array(bits.buffer));
  return bits;
}

/** Values (whole rows of them) of a bfloat16 matrix widened to float32 at once while it is quantized (quantizeInt8). */
const QUANTIZE_BLOCK_VALUES = 1 << 22;

/**
 * Symmetric int8 per output column of an [in, out] matrix: q = round(w / s), s = max |w| / 127. The
 * values are float32, or bfloat16 bits ({ bf16 }), widened a block of rows at a time (never the whole
 * matrix: the output head would be 1.5 GB of float32). `out` receives q.
 */
export function quantizeInt8(
  values: Float32Array | { bf16: Uint16Array },
  rows: number,
  cols: number,
  out: Int8Array = new Int8Array(rows * cols),
): { q: Int8Array; scale: Float32Array } {
  const blockRows = Math.max(1, Math.floor(QUANTIZE_BLOCK_VALUES / cols));
  const wide = values instanceof Float32Array ? null : new Uint32Array(Math.min(rows, blockRows) * cols);
  /** Rows r0 .. r0 + blockRows as float32. */
  const block = (r0: number): Float32Array => {
    const r1 = Math.min(rows, r0 + blockRows);
    if (values instanceof Float32Array) return values.subarray(r0 * cols, r1 * cols);
    return bf16ToF32(values.bf16.subarray(r0 * cols, r1 * cols), wide!);
  };
  const scale = new Float32Array(cols);
  for (let r0 = 0; r0 < rows; r0 += blockRows) {
    const b = block(r0);
    for (let o = 0; o < b.length; o += cols) {
      for (let c = 0; c < cols; c++) {
        const a = Math.abs(b[o + c]);
        if (a > scale[c]) scale[c] = a;
      }
    }
  }
  const inv = new Float32Array(cols);
  for (let c = 0; c < cols; c++) {
    scale[c] /= 127;
    inv[c] = scale[c] > 0 ? 1 / scale[c] : 0;
  }
  for (let r0 = 0; r0 < rows; r0 += blockRows) {
    const b = block(r0);
    const at = r0 * cols;
    for (let o = 0; o < b.length; o += cols) {
      for (let c = 0; c < cols; c++) out[at + o + c] = Math.max(-127, Math.min(127, Math.round(b[o + c] * inv[c])));
    }
  }
  return { q: out, scale };
}

/**
 * The model's tensors, by project name: float32 tf tensors, and under 'bfloat16' / 'int8' the 2-D
 * weights as HeldMatrix. Loaded once (each tensor read with one positioned read, each shard opened
 * once); owned here and freed by `dispose()`.
 */
export class Weights {
  private constructor(
    readonly dir: string,
    private readonly tensors: Map<string, tf.Tensor | HeldMatrix>,
    readonly precision: WeightPrecision = 'float32',
    /** Names held as their transpose (see `storeTransposed`; under bfloat16 / int8, from load on). */
    private readonly heldTransposed = new Set<string>(),
  ) {}

  static load(dir: string, options: LoadOptions = {}): Weights {
    const precision = options.precision ?? 'float32';
    if (!WEIGHT_PRECISIONS.includes(precision)) throw new Error(`weights precision '${precision}': expected one of ${WEIGHT_PRECISIONS.join(', ')}`);
    const { weights } = openWeights(dir);
    const tensors = new Map<string, tf.Tensor | HeldMatrix>();
    const heldTransposed = new Set<string>();
    try {
      const names = weights.names;
      const total = names.reduce((a, n) => a + weights.info(n).byteLength, 0);
      let done = 0;
      for (const name of names) {
        const info = weights.info(name);
        const what = `${dir}: tensor '${name}'`;
        if (precision === 'float32' || info.shape.length !== 2 || !name.endsWith('.weight')) {
          tensors.set(name, tf.tensor(weights.readFloat32(name), info.shape, 'float32'));
        } else {
          const shape = info.shape as [number, number];
          const transpose = options.transpose?.(name) ?? false;
          const n = shape[0] * shape[1];
          let held: HeldMatrix;
          if (precision === 'bfloat16' || name === TOKEN_EMBEDDING) {
            const buf = bufferFor(n * 2);
            if (info.dtype === 'BF16') weights.readInto(name, buf);
            else f32ToBf16(weights.readFloat32(name), new Uint16Array(buf.buffer, buf.byteOffset, n));
            held = new HeldMatrix(hold(buf, 'bfloat16', shape, transpose, what), null, transpose ? 0 : 1);
          } else {
            // Quantized straight into the buffer the tensor is made from; a bf16 checkpoint is read as
            // its bits (no float32 copy of the matrix).
            const buf = bufferFor(n);
            const out = new Int8Array(buf.buffer, buf.byteOffset, n);
            const values = info.dtype === 'BF16' ? { bf16: readBf16(weights, name, n) } : weights.readFloat32(name);
            const { scale } = quantizeInt8(values, shape[0], shape[1], out);
            held = new HeldMatrix(hold(buf, 'int8', shape, transpose, what), tf.tensor1d(scale), transpose ? 0 : 1);
          }
          tensors.set(name, held);
          if (transpose) heldTransposed.add(name);
        }
        done += info.byteLength;
        options.onProgress?.(done, total);
      }
    } catch (e) {
      tensors.forEach((t) => t.dispose());
      throw e;
    } finally {
      weights.close();
      if (precision !== 'float32') releaseStagingBuffer();
    }
    return new Weights(dir, tensors, precision, heldTransposed);
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

  private held(name: string): tf.Tensor | HeldMatrix {
    const t = this.tensors.get(name);
    if (t === undefined) throw new Error(`${this.dir}: the converted model has no tensor '${name}'`);
    if (this.heldTransposed.has(name))
      throw new Error(`${this.dir}: tensor '${name}' is held transposed (storeTransposed); a second reader of it would get the wrong layout`);
    return t;
  }

  /**
   * The tensor `name` as float32; with `rank`, its rank is checked too. Missing names are errors naming
   * the model. A weight held below float32 is widened here once, and held as float32 from then on
   * (meant for the few small matrices not read through `matrix`, such as the patch embedding).
   */
  get(name: string, rank?: number): tf.Tensor {
    let t = this.held(name);
    if (t instanceof HeldMatrix) {
      const values = t.toFloat32();
      t.dispose();
      this.tensors.set(name, values);
      t = values;
    }
    if (rank !== undefined && t.rank !== rank) throw new Error(`${this.dir}: tensor '${name}' has shape [${t.shape}], expected rank ${rank}`);
    return t;
  }

  /** The 2-D weight `name` as it is held: a float32 tensor, or a HeldMatrix under 'bfloat16' / 'int8'. */
  matrix(name: string): tf.Tensor2D | HeldMatrix {
    const t = this.held(name);
    if (t instanceof HeldMatrix) return t;
    return this.get(name, 2) as tf.Tensor2D;
  }

  /**
   * Replaces the stored 2-D tensor `name` by its transpose and returns it (the original is freed:
   * memory is not doubled). Called once per weight while a model is built, by a Linear whose kernels
   * want the [out, in] layout; from then on `get(name)` refuses the name.
   */
  storeTransposed(name: string): tf.Tensor2D | HeldMatrix {
    if (!this.heldTransposed.has(name)) {
      const t = this.matrix(name);
      this.tensors.set(name, t instanceof HeldMatrix ? t.transposeAndFree() : tf.keep(tf.transpose(t)));
      if (!(t instanceof HeldMatrix)) t.dispose();
      this.heldTransposed.add(name);
    }
    return this.tensors.get(name) as tf.Tensor2D | HeldMatrix;
  }

  /** Bytes held (4 per float32 value, 2 per bfloat16, 1 per int8 plus its scales), of every tensor or of those `which` selects. */
  byteLengthOf(which: (name: string) => boolean = () => true): number {
    let bytes = 0;
    this.tensors.forEach((t, name) => {
      if (which(name)) bytes += t instanceof HeldMatrix ? t.byteLength : t.size * 4;
    });
    return bytes;
  }

  get byteLength(): number {
    return this.byteLengthOf();
  }

  dispose(): void {
    this.tensors.forEach((t) => t.dispose());
    this.tensors.clear();
  }
}

// Tensors tfjs has no dtype for (bfloat16, int8), held as libtensorflow handles on the tensorflow
// backend. tfjs-node's binding runs any libtensorflow op by name (`executeOp`) and passes any dtype
// attribute, but its tensors can only be float32, int32, bool or string: a bf16 or int8 handle is a raw
// id that tfjs cannot wrap, so `NativeTensor` owns it and frees it in `dispose()`. Every value that
// leaves this file is an ordinary float32 tfjs tensor (tracked by tf.tidy like any other).
//
// Loading: the bytes are read into one staging buffer (`stagingBuffer`), reused for every weight and
// placed on a 64-byte boundary, where libtensorflow shares a JS buffer instead of copying it; the int32
// tensor over it is Bitcast (zero-copy) to the target dtype, then copied (or transposed) once into
// libtensorflow's own memory. So a weight is held once, at 2 or 1 bytes per value, and loading leaves
// no garbage behind: neither JS buffers waiting for a GC (which a long run of native work never
// triggers: 16 GB of them killed an 8B load; the staging buffer itself is freed at once, see
// releaseStagingBuffer) nor freed copies between live ones in the C heap.
import * as tf from '@tensorflow/tfjs';

/** TF_DataType values the binding does not export (tensorflow/c/tf_datatype.h). */
const TF_INT8 = 6;
const TF_BFLOAT16 = 14;

export type NativeDType = 'bfloat16' | 'int8';

const DTYPE_CODE: Record<NativeDType, number> = { bfloat16: TF_BFLOAT16, int8: TF_INT8 };
const DTYPE_BYTES: Record<NativeDType, number> = { bfloat16: 2, int8: 1 };

interface OpAttr {
  name: string;
  type: number;
  value: unknown;
}
interface TensorMetadata {
  id: number;
  shape: number[];
  dtype: number;
}
interface Binding {
  TF_FLOAT: number;
  TF_INT32: number;
  TF_ATTR_TYPE: number;
  TF_ATTR_BOOL: number;
  createTensor(shape: number[], dtype: number, values: Int32Array): number;
  deleteTensor(id: number): void;
  executeOp(name: string, attrs: OpAttr[], inputIds: number[], numOutputs: number): TensorMetadata[];
}
interface NodeBackend {
  binding: Binding;
  getInputTensorIds(tensors: tf.Tensor[]): number[];
  createOutputTensor(metadata: TensorMetadata): tf.Tensor;
}

/** The tensorflow backend's binding, or an error naming what to use instead. */
function nodeBackend(what: string): NodeBackend {
  const backend = tf.backend() as unknown as Partial<NodeBackend>;
  if (tf.getBackend() !== 'tensorflow' || backend.binding?.executeOp === undefined) {
    throw new Error(
      `${what} needs the tensorflow backend (@tensorflow/tfjs-node or tfjs-node-gpu; backend now: ${tf.getBackend()}); ` +
        `wasm and cpu hold weights as float32 only: load with weights 'float32'`,
    );
  }
  return backend as NodeBackend;
}

const typeAttr = (b: Binding, name: string, value: number): OpAttr => ({ name, type: b.TF_ATTR_TYPE, value });
const boolAttr = (b: Binding, name: string, value: boolean): OpAttr => ({ name, type: b.TF_ATTR_BOOL, value });

function run(be: NodeBackend, op: string, attrs: OpAttr[], inputs: number[]): TensorMetadata {
  return be.binding.executeOp(op, attrs, inputs, 1)[0];
}

function castAttrs(b: Binding, from: number, to: number): OpAttr[] {
  return [typeAttr(b, 'SrcT', from), typeAttr(b, 'DstT', to), boolAttr(b, 'Truncate', false)];
}

/** Runs `op` with an int32 shape-like argument made from `values` (freed after). */
function withInt32<T>(be: NodeBackend, values: number[], f: (id: number) => T): T {
  const t = tf.tensor1d(values, 'int32');
  try {
    return f(be.getInputTensorIds([t])[0]);
  } finally {
    t.dispose();
  }
}

/** TF_NewTensor copies data that is not aligned to this (EIGEN_MAX_ALIGN_BYTES with AVX-512). */
const TF_ALIGNMENT = 64;

let staging: { buffer: ArrayBuffer; offset: number } | null = null;

/** Whether libtensorflow shares (does not copy) a JS buffer starting at `bytes`: a write after handing it over shows. */
function sharedByTensorflow(be: NodeBackend, bytes: Uint8Array): boolean {
  const words = new Int32Array(bytes.buffer, bytes.byteOffset, 1);
  words[0] = 0;
  const id = be.binding.createTensor([1], be.binding.TF_INT32, words);
  words[0] = 0x5a5a5a5a;
  const seen = (be.binding as unknown as { tensorDataSync(id: number): Int32Array }).tensorDataSync(id)[0];
  be.binding.deleteTensor(id);
  return seen === 0x5a5a5a5a;
}

/**
 * A buffer of at least `byteLength` bytes for the next `NativeTensor.fromStaging`, reused from call to
 * call (grown when needed) and placed where libtensorflow shares it. Its contents are overwritten by
 * the next call.
 */
export function stagingBuffer(byteLength: number): Uint8Array {
  const be = nodeBackend('holding a weight below float32');
  const size = Math.ceil(byteLength / 4) * 4;
  if (staging === null || staging.buffer.byteLength - staging.offset < size) {
    releaseStagingBuffer();
    const buffer = new ArrayBuffer(Math.max(size, 1 << 20) + TF_ALIGNMENT);
    // The JS allocator aligns to 16 bytes: one of four offsets is on a 64-byte boundary.
    const offset = [0, 16, 32, 48].find((o) => sharedByTensorflow(be, new Uint8Array(buffer, o, 4))) ?? 0;
    staging = { buffer, offset };
  }
  return new Uint8Array(staging.buffer, staging.offset, size);
}

/**
 * Frees the staging buffer now (after a load: it is as large as the largest weight, 758 MB for
 * InternLM2-7B's output head), not at a garbage collection that native work may not trigger for the
 * rest of the run: transferred through a MessageChannel that is then closed, its memory goes back at the
 * next turn of the event loop (measured: 735 MB of RSS back within 500 ms, no GC).
 */
export function releaseStagingBuffer(): void {
  if (staging === null) return;
  const { port1, port2 } = new MessageChannel();
  port1.postMessage(null, [staging.buffer]);
  port1.close();
  port2.close();
  staging = null;
}

/** A bfloat16 or int8 libtensorflow tensor owned by this object (see the file comment). */
export class NativeTensor {
  private handle: number | null;

  private constructor(
    private readonly be: NodeBackend,
    id: number,
    readonly dtype: NativeDType,
    readonly shape: number[],
  ) {
    this.handle = id;
  }

  /**
   * The first n values of `dtype` in `staged` (from stagingBuffer; little-endian, row-major) as a tensor
   * of `shape` (n values), or of its transpose with `transpose` (2-D only), in libtensorflow's memory.
   */
  static fromStaging(staged: Uint8Array, dtype: NativeDType, shape: number[], options: { transpose?: boolean; what?: string } = {}): NativeTensor {
    const what = options.what ?? 'a weight';
    const be = nodeBackend(`holding ${what} as ${dtype}`);
    const b = be.binding;
    const code = DTYPE_CODE[dtype];
    const n = shape.reduce((a, d) => a * d, 1);
    if (staged.byteLength < n * DTYPE_BYTES[dtype] || staged.byteLength % 4 !== 0 || staged.byteOffset % 4 !== 0) {
      throw new Error(`${what}: a ${staged.byteLength}-byte staging view for ${dtype} [${shape}]`);
    }
    if (options.transpose && shape.length !== 2) throw new Error(`${what}: only a 2-D tensor is transposed, not [${shape}]`);
    const words = new Int32Array(staged.buffer, staged.byteOffset, staged.byteLength / 4);
    const ids: number[] = [];
    const step = (meta: TensorMetadata) => (ids.push(meta.id), meta.id);
    try {
      const packed = b.createTensor([words.length], b.TF_INT32, words);
      ids.push(packed);
      // Bitcast int32 [m] -> dtype [m, 4 / size]: the same bytes, no copy; then the n values, shaped.
      const cast = step(run(be, 'Bitcast', [typeAttr(b, 'T', b.TF_INT32), typeAttr(b, 'type', code)], [packed]));
      const flat = withInt32(be, [-1], (minusOne) => step(run(be, 'Reshape', [typeAttr(b, 'T', code), typeAttr(b, 'Tshape', b.TF_INT32)], [cast, minusOne])));
      const exact =
        words.length * 4 === n * DTYPE_BYTES[dtype]
          ? flat
          : withInt32(be, [0], (begin) =>
              withInt32(be, [n], (size) => step(run(be, 'Slice', [typeAttr(b, 'T', code), typeAttr(b, 'Index', b.TF_INT32)], [flat, begin, size]))),
            );
      const shaped = withInt32(be, shape, (s) => step(run(be, 'Reshape', [typeAttr(b, 'T', code), typeAttr(b, 'Tshape', b.TF_INT32)], [exact, s])));
      // The one copy into libtensorflow's memory, after which the staging buffer is free again.
      const out = options.transpose
        ? withInt32(be, [1, 0], (perm) => run(be, 'Transpose', [typeAttr(b, 'T', code), typeAttr(b, 'Tperm', b.TF_INT32)], [shaped, perm]))
        : copyOf(be, shaped, code);
      return new NativeTensor(be, out.id, dtype, options.transpose ? [shape[1], shape[0]] : shape);
    } finally {
      ids.forEach((id) => b.deleteTensor(id));
    }
  }

  private get id(): number {
    if (this.handle === null) throw new Error(`a ${this.dtype} [${this.shape}] tensor was used after dispose()`);
    return this.handle;
  }

  get byteLength(): number {
    return this.shape.reduce((a, d) => a * d, 1) * DTYPE_BYTES[this.dtype];
  }

  /** The 2-D transpose as a new tensor (this one is left as it is). */
  transpose(): NativeTensor {
    const b = this.be.binding;
    const out = withInt32(this.be, [1, 0], (perm) =>
      run(this.be, 'Transpose', [typeAttr(b, 'T', DTYPE_CODE[this.dtype]), typeAttr(b, 'Tperm', b.TF_INT32)], [this.id, perm]),
    );
    return new NativeTensor(this.be, out.id, this.dtype, [this.shape[1], this.shape[0]]);
  }

  /** The values widened to float32, as a tfjs tensor the caller owns (exact for both dtypes). */
  toFloat32(): tf.Tensor {
    const b = this.be.binding;
    return this.be.createOutputTensor(run(this.be, 'Cast', castAttrs(b, DTYPE_CODE[this.dtype], b.TF_FLOAT), [this.id]));
  }

  /** Rows (axis 0) or columns (axis 1) `begin .. begin + size` of a 2-D tensor, widened to float32 (the caller owns it). */
  sliceToFloat32(axis: 0 | 1, begin: number, size: number): tf.Tensor {
    const be = this.be;
    const b = be.binding;
    const code = DTYPE_CODE[this.dtype];
    const at = axis === 0 ? [begin, 0] : [0, begin];
    const extent = axis === 0 ? [size, -1] : [-1, size];
    const part = withInt32(be, at, (beginId) =>
      withInt32(be, extent, (sizeId) => run(be, 'Slice', [typeAttr(b, 'T', code), typeAttr(b, 'Index', b.TF_INT32)], [this.id, beginId, sizeId])),
    );
    const f = run(be, 'Cast', castAttrs(b, code, b.TF_FLOAT), [part.id]);
    b.deleteTensor(part.id);
    return be.createOutputTensor(f);
  }

  /** Rows `ids` (int32, any shape) of a 2-D tensor, widened to float32: [...ids.shape, columns]. */
  gatherRows(ids: tf.Tensor): tf.Tensor {
    const be = this.be;
    const b = be.binding;
    const code = DTYPE_CODE[this.dtype];
    const axis = tf.scalar(0, 'int32');
    try {
      const [idsId, axisId] = be.getInputTensorIds([ids, axis]);
      const g = run(
        be,
        'GatherV2',
        [typeAttr(b, 'Tparams', code), typeAttr(b, 'Tindices', b.TF_INT32), typeAttr(b, 'Taxis', b.TF_INT32)],
        [this.id, idsId, axisId],
      );
      const f = run(be, 'Cast', castAttrs(b, code, b.TF_FLOAT), [g.id]);
      b.deleteTensor(g.id);
      return be.createOutputTensor(f);
    } finally {
      axis.dispose();
    }
  }

  /**
   * x @ W (or x @ W^T) computed in bfloat16 by libtensorflow (oneDNN's bf16 kernels where enabled): x is
   * rounded to bf16 (round to nearest even), products accumulate as the kernel does, the result is
   * rounded to bf16 and widened back to float32, as PyTorch's bf16 F.linear. Only for bfloat16 tensors.
   */
  matMulBf16(x: tf.Tensor, transposeB: boolean): tf.Tensor {
    if (this.dtype !== 'bfloat16') throw new Error(`matMulBf16 on a ${this.dtype} tensor`);
    const be = this.be;
    const b = be.binding;
    const xb = run(be, 'Cast', castAttrs(b, b.TF_FLOAT, TF_BFLOAT16), be.getInputTensorIds([x]));
    const y = run(be, 'BatchMatMulV2', [typeAttr(b, 'T', TF_BFLOAT16), boolAttr(b, 'adj_x', false), boolAttr(b, 'adj_y', transposeB)], [xb.id, this.id]);
    b.deleteTensor(xb.id);
    const f = run(be, 'Cast', castAttrs(b, TF_BFLOAT16, b.TF_FLOAT), [y.id]);
    b.deleteTensor(y.id);
    return be.createOutputTensor(f);
  }

  dispose(): void {
    if (this.handle !== null) this.be.binding.deleteTensor(this.handle);
    this.handle = null;
  }
}

/** A copy of `id` in a buffer of its own (libtensorflow's DeepCopy). */
function copyOf(be: NodeBackend, id: number, code: number): TensorMetadata {
  return run(be, 'DeepCopy', [typeAttr(be.binding, 'T', code)], [id]);
}

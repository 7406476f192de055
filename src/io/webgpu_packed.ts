// Weights held packed on the webgpu backend: the checkpoint's bf16 (or int8) bytes as they lie, in an
// int32 tensor of [rows, cols / per] words (2 bf16 or 4 int8 values per word, little-endian), read by WGSL
// programs that widen each value where it is used (bf16: `bitcast<f32>(word << 16)` or the high half;
// int8: the sign-extended byte). tfjs-backend-webgpu binds an int32 tensor as `array<i32>` unchanged, so
// nothing is widened in memory. The products accumulate in float32 like the float32 matmul, in their own
// order (one output per invocation, k ascending). tfjs-backend-webgpu is an optional dependency, read
// only when its backend is in use.
import * as tf from '@tensorflow/tfjs';

export type PackedDType = 'bfloat16' | 'int8';

const PER_WORD: Record<PackedDType, number> = { bfloat16: 2, int8: 4 };

interface WebGPUProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  size: boolean;
  uniforms: string;
  getUserCode(): string;
}
interface WebGPUBackend {
  runWebGPUProgram(program: WebGPUProgram, inputs: tf.TensorInfo[], dtype: 'float32', uniforms: { type: 'int32'; data: number[] }[]): tf.TensorInfo;
}
interface WebGPUUtil {
  flatDispatchLayout(shape: number[]): { x: number[] };
  computeDispatch(layout: { x: number[] }, shape: number[], workgroupSize: [number, number, number]): [number, number, number];
}

function webgpuUtil(): WebGPUUtil {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('@tensorflow/tfjs-backend-webgpu') as { webgpu_util: WebGPUUtil }).webgpu_util;
}

/** WGSL: the value at row k, column n of the packed weight W (uniforms.words words per row). */
function weightAt(dtype: PackedDType): string {
  const widen =
    dtype === 'bfloat16'
      ? 'return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (n & 1) == 1));'
      : 'return f32(bitcast<i32>(((word >> (u32(n & 3) * 8u)) & 0xffu) << 24u) >> 24u);';
  return `
    fn weightAt(k : i32, n : i32) -> f32 {
      let word = bitcast<u32>(W[k * uniforms.words + n / ${PER_WORD[dtype]}]);
      ${widen}
    }`;
}

/**
 * 'matmul': y [M, N] = A [M, K] @ W [K, N]; 'unpack': the float32 values of W [K, N]; 'gather': rows I
 * (int32 row indices) of W. (Gathering the int32 words with tf.gather instead would fall back to the
 * CPU for a small tensor, reading GPU data through a float path that rounds large int32 values.)
 */
function program(dtype: PackedDType, outputShape: [number, number], kind: 'matmul' | 'unpack' | 'gather'): WebGPUProgram {
  const util = webgpuUtil();
  const workgroupSize: [number, number, number] = [64, 1, 1];
  const dispatchLayout = util.flatDispatchLayout(outputShape);
  const body = {
    matmul: `var acc = 0.0;
          let m = index / uniforms.N;
          for (var k = 0; k < uniforms.K; k++) {
            acc = acc + A[m * uniforms.K + k] * weightAt(k, n);
          }
          setOutputAtIndex(index, acc);`,
    unpack: `setOutputAtIndex(index, weightAt(index / uniforms.N, n));`,
    gather: `setOutputAtIndex(index, weightAt(I[index / uniforms.N], n));`,
  }[kind];
  return {
    variableNames: { matmul: ['A', 'W'], unpack: ['W'], gather: ['W', 'I'] }[kind],
    outputShape,
    shaderKey: `pvc_packed_${kind}_${dtype}`,
    dispatchLayout,
    dispatch: util.computeDispatch(dispatchLayout, outputShape, workgroupSize),
    workgroupSize,
    size: true,
    uniforms: 'K : i32, N : i32, words : i32,',
    getUserCode: () => `
      ${weightAt(dtype)}
      fn main(index : i32) {
        if (index < uniforms.size) {
          let n = index % uniforms.N;
          ${body}
        }
      }`,
  };
}

function run(p: WebGPUProgram, inputs: tf.Tensor[], K: number, N: number, words: number): tf.Tensor {
  const backend = tf.backend() as unknown as WebGPUBackend;
  const info = backend.runWebGPUProgram(p, inputs, 'float32', [
    { type: 'int32', data: [K] },
    { type: 'int32', data: [N] },
    { type: 'int32', data: [words] },
  ]);
  return tf.engine().makeTensorFromTensorInfo(info);
}

/** A [rows, cols] bfloat16 or int8 matrix packed into int32 words on the webgpu backend (see the file comment). */
export class PackedTensor {
  private constructor(
    private words: tf.Tensor2D | null,
    readonly dtype: PackedDType,
    readonly shape: [number, number],
  ) {}

  /** `bytes`: the row-major little-endian values (a row that does not fill whole words is padded). */
  static fromBytes(bytes: Uint8Array, dtype: PackedDType, shape: number[], what = 'a weight'): PackedTensor {
    if (tf.getBackend() !== 'webgpu') throw new Error(`PackedTensor is for the webgpu backend (backend now: ${tf.getBackend()})`);
    if (shape.length !== 2) throw new Error(`${what}: only 2-D weights are packed, not [${shape}]`);
    const per = PER_WORD[dtype];
    const [rows, cols] = shape;
    const rowWords = Math.ceil(cols / per);
    const rowBytes = cols * (4 / per);
    let aligned = bytes;
    if (rowWords * 4 !== rowBytes) {
      // e.g. the LM head's 92553 columns: each row starts on a word.
      aligned = new Uint8Array(rows * rowWords * 4);
      for (let r = 0; r < rows; r++) aligned.set(bytes.subarray(r * rowBytes, (r + 1) * rowBytes), r * rowWords * 4);
    } else if (bytes.byteOffset % 4 !== 0) {
      aligned = new Uint8Array(bytes);
    }
    const words = new Int32Array(aligned.buffer, aligned.byteOffset, rows * rowWords);
    return new PackedTensor(tf.tensor2d(words, [rows, rowWords], 'int32'), dtype, [rows, cols]);
  }

  private get held(): tf.Tensor2D {
    if (this.words === null) throw new Error(`a ${this.dtype} [${this.shape}] tensor was used after dispose()`);
    return this.words;
  }

  get byteLength(): number {
    return this.held.size * 4;
  }

  /** x [..., K] @ W [K, N] -> [..., N], float32. */
  matMul(x: tf.Tensor): tf.Tensor {
    const [K, N] = this.shape;
    const a = x.reshape([-1, K]);
    const y = run(program(this.dtype, [a.shape[0], N], 'matmul'), [a, this.held], K, N, this.held.shape[1]);
    a.dispose();
    return y.reshape([...x.shape.slice(0, -1), N]);
  }

  /** The values widened to float32 (the caller owns the tensor). */
  toFloat32(): tf.Tensor {
    const [K, N] = this.shape;
    return run(program(this.dtype, [K, N], 'unpack'), [this.held], K, N, this.held.shape[1]);
  }

  /** Rows `ids` (int32, any shape) widened to float32: [...ids.shape, cols]. */
  gatherRows(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const [K, N] = this.shape;
      const flat = ids.flatten();
      return run(program(this.dtype, [flat.size, N], 'gather'), [this.held, flat], K, N, this.held.shape[1]).reshape([...ids.shape, N]);
    });
  }

  transpose(): PackedTensor {
    throw new Error('packed webgpu weights are multiplied as converted ([in, out]); they are never transposed');
  }

  dispose(): void {
    this.words?.dispose();
    this.words = null;
  }
}

// The few building blocks shared by InternViT, PVC's temporal layers, the projector and InternLM2.
// Each holds its weights (tensors owned by the model's weight store) and has a plain `forward`.
// Callers run them inside tf.tidy; nothing here keeps intermediates.
//
// Which kernels the products use is decided once, when a model is built, from the backend in use
// (src/model/kernels.ts), and handed to the layers as a `Kernels` value: nothing here asks which
// backend is active.
import * as tf from '@tensorflow/tfjs';
import { NativeTensor } from '../io/native';
import { HeldMatrix, Weights } from '../io/weights';
import { PackedTensor } from '../io/webgpu_packed';

/** Receives intermediate values by name (see `model.inspect`); it must keep (clone) what it wants beyond the call. */
export type Tap = (name: string, value: tf.Tensor) => void;

/** The kernel choices of a model, made once at load (see src/model/kernels.ts for why each is fast where). */
export interface Kernels {
  /**
   * Layout of Linear weights: 'in-out' [in, out], y = x @ W (as converted; wasm, cpu and libtensorflow's
   * Eigen engine), or 'out-in' [out, in], y = x @ W^T (libtensorflow's oneDNN engine).
   */
  linearLayout: 'in-out' | 'out-in';
  /** Products as single BatchMatMul kernels (tensorflow: tf.matMul and tf.fused.matMul add reshape ops around them). */
  singleKernelMatMul: boolean;
  /** Attention as two 2-D matMuls per group against an explicitly transposed key block (wasm). */
  attentionPer2DGroup: boolean;
  /**
   * How a Linear whose weight is held as bfloat16 multiplies (src/io/weights.ts): 'exact' widens the
   * weight to float32 and runs the float32 product (the same numbers as a float32 model of the same
   * values); 'fast' runs libtensorflow's bf16 product (activations rounded to bf16, as PyTorch's bf16 run).
   */
  bf16MatMul: 'exact' | 'fast';
}

/** Plain tfjs ops everywhere: right on every backend, the choice for tests and tools that build layers directly. */
export const PORTABLE_KERNELS: Kernels = { linearLayout: 'in-out', singleKernelMatMul: false, attentionPer2DGroup: false, bf16MatMul: 'exact' };

/** a @ b (or a @ b^T) for rank-2 or rank-3 operands as the one kernel it is; tf.matMul adds reshape ops around it. */
export function batchMatMul<T extends tf.Tensor>(a: T, b: tf.Tensor, transposeB = false): T {
  return tf.engine().runKernel('BatchMatMul', { a, b }, { transposeA: false, transposeB }) as T;
}

/**
 * y = x @ W + b over the last axis, with W in the layout `kernels.linearLayout` says, held as the
 * weights were loaded: float32, or a HeldMatrix (bfloat16 or int8: tensorflow and webgpu).
 */
export class Linear {
  /** [in, out], or [out, in] with the 'out-in' layout. */
  readonly weight: tf.Tensor2D | HeldMatrix;
  readonly bias: tf.Tensor1D | null;
  private readonly transposed: boolean;

  constructor(
    w: Weights,
    name: string,
    bias: boolean,
    private readonly kernels: Kernels,
  ) {
    this.transposed = kernels.linearLayout === 'out-in';
    // Converted weights are [in, out]; the 'out-in' layout replaces the stored tensor by its transpose once, here.
    this.weight = this.transposed ? w.storeTransposed(`${name}.weight`) : w.matrix(`${name}.weight`);
    this.bias = bias ? (w.get(`${name}.bias`, 1) as tf.Tensor1D) : null;
  }

  get inFeatures(): number {
    return this.weight.shape[this.transposed ? 1 : 0];
  }

  get outFeatures(): number {
    return this.weight.shape[this.transposed ? 0 : 1];
  }

  forward<T extends tf.Tensor>(x: T): T {
    const lead = x.shape.slice(0, -1);
    if (this.kernels.singleKernelMatMul) {
      // libtensorflow's BatchMatMulV2 takes [1, T, in] or [rows, in] against the 2-D weight as it is: for a
      // small layer in a decode step, the six reshape ops tf.fused.matMul adds cost as much as the matVec.
      const a = x.rank === 2 || (x.rank === 3 && x.shape[0] === 1) ? x : x.reshape([-1, this.inFeatures]);
      let y = this.product(a);
      if (this.bias) y = tf.add(y, this.bias);
      return (a === x ? y : y.reshape([...lead, this.outFeatures])) as T;
    }
    if (this.weight instanceof HeldMatrix) {
      let y = this.product(x);
      if (this.bias) y = tf.add(y, this.bias);
      return y as T;
    }
    const x2d = x.reshape([-1, this.inFeatures]) as tf.Tensor2D;
    const y = tf.fused.matMul({ a: x2d, b: this.weight, bias: this.bias ?? undefined, transposeB: this.transposed });
    return y.reshape([...lead, this.outFeatures]) as T;
  }

  /** a @ W as one BatchMatMul, W widened just before (exact) or multiplied in bf16 (fast). */
  private product(a: tf.Tensor): tf.Tensor {
    const w = this.weight;
    if (!(w instanceof HeldMatrix)) return batchMatMul(a, w, this.transposed);
    if (w.data instanceof PackedTensor) {
      // webgpu: a WGSL program reads the packed words (src/io/webgpu_packed.ts); layout 'in-out' there.
      const y = w.data.matMul(a);
      return w.scale ? tf.mul(y, w.scale) : y;
    }
    if (w.data.dtype === 'bfloat16' && this.kernels.bf16MatMul === 'fast') return w.data.matMulBf16(a, this.transposed);
    if (w.data.dtype === 'int8' && w.data.byteLength * 4 > INT8_WIDEN_BYTES) return this.int8ProductByParts(a, w.data);
    // The whole weight is widened, then the float32 kernel runs on exactly the shapes a float32 model
    // runs: the same sums in the same order (splitting it by columns changes Eigen's blocking at decode).
    const values = w.data.toFloat32();
    const y = batchMatMul(a, values, this.transposed);
    values.dispose();
    return w.scale ? tf.mul(y, w.scale) : y;
  }

  /**
   * An int8 weight too large to widen at once (the output head: 1.5 GB as float32), widened and
   * multiplied a slice of outputs at a time: each output's sum is over the same inputs, and libtensorflow's
   * pool, which keeps the largest block it ever handed out, never holds the whole float32 matrix.
   */
  private int8ProductByParts(a: tf.Tensor, data: NativeTensor): tf.Tensor {
    const w = this.weight as HeldMatrix;
    const outAxis: 0 | 1 = this.transposed ? 0 : 1;
    const [outs, ins] = [data.shape[outAxis], data.shape[1 - outAxis]];
    const step = Math.max(1, Math.floor(INT8_WIDEN_BYTES / (4 * ins)));
    const parts: tf.Tensor[] = [];
    try {
      for (let begin = 0; begin < outs; begin += step) {
        const values = data.sliceToFloat32(outAxis, begin, Math.min(step, outs - begin));
        parts.push(batchMatMul(a, values, this.transposed));
        values.dispose();
      }
      const y = parts.length === 1 ? parts[0] : tf.concat(parts, -1);
      return w.scale ? tf.mul(y, w.scale) : y;
    } finally {
      if (parts.length > 1) tf.dispose(parts);
    }
  }
}

/**
 * Bytes of float32 an int8 weight is widened to at once (Linear.int8ProductByParts): the output head's
 * [4096, 92553] goes in 23 parts, an InternLM2-7B MLP matrix (235 MB) in 2.
 */
export const INT8_WIDEN_BYTES = 128 * 2 ** 20;

/** nn.LayerNorm over the last axis: biased variance, eps inside the square root, affine. */
export class LayerNorm {
  readonly weight: tf.Tensor1D;
  readonly bias: tf.Tensor1D;

  constructor(
    w: Weights,
    name: string,
    readonly eps: number,
  ) {
    this.weight = w.get(`${name}.weight`, 1) as tf.Tensor1D;
    this.bias = w.get(`${name}.bias`, 1) as tf.Tensor1D;
  }

  forward<T extends tf.Tensor>(x: T): T {
    const mean = tf.mean(x, -1, true);
    const centered = tf.sub(x, mean);
    const variance = tf.mean(tf.square(centered), -1, true);
    return tf.add(tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, this.eps))), this.weight), this.bias) as T;
  }
}

/** RMSNorm as InternViT and InternLM2 compute it: x * rsqrt(mean(x^2) + eps), then the weight (fp32 throughout here). */
export class RMSNorm {
  readonly weight: tf.Tensor1D;

  constructor(
    w: Weights,
    name: string,
    readonly eps: number,
  ) {
    this.weight = w.get(`${name}.weight`, 1) as tf.Tensor1D;
  }

  forward<T extends tf.Tensor>(x: T): T {
    const variance = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, this.eps))), this.weight) as T;
  }
}

export type Norm = LayerNorm | RMSNorm;

/** Exact (erf) GELU, as nn.GELU() and transformers' "gelu". */
export function gelu<T extends tf.Tensor>(x: T): T {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)) as T;
}

export function silu<T extends tf.Tensor>(x: T): T {
  return tf.mul(x, tf.sigmoid(x)) as T;
}

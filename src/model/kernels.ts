// The kernel choices of a model, decided once at load from the backend in use (nanoGPT decides its
// attention kernel once in the constructor; so do we, for the whole model).
//
// Measured on 2 cores (npm run bench; [512,4096] x [4096,14336] unless said):
// - Linear layout: wasm only runs a plain 2-D matMul fast, and libtensorflow's Eigen engine (the
//   tensorflow backend's default, see src/backend.ts) is fastest on [in, out] as converted (260 ms vs
//   731 ms transposed); oneDNN (TF_ENABLE_ONEDNN_OPTS=1) is fastest on [out, in] (236 ms vs 432 ms).
// - Single-kernel products on tensorflow: tf.matMul / tf.fused.matMul add reshape ops with their own
//   shape tensors; a medium decode step went from ~860 to ~410 kernels without them.
// - Attention on wasm: batched or transposed matMuls run ~10x slower than 2-D ones, so large score
//   matrices are computed per group against an explicitly transposed key block.
import { BackendName, tensorflowUsesOneDNN } from '../backend';
import { Kernels, PORTABLE_KERNELS } from '../nn/layers';

//
// bf16 products (weights 'bfloat16', matmul 'fast'), [1 or 512, 4096] x [4096, 14336] on 2 cores:
// oneDNN's bf16 BatchMatMulV2 4.8 / 55 ms against its float32 10.4 / 207 ms; widening the bf16 weight
// to float32 first (matmul 'exact') 25 / 220 ms. Eigen's bf16 product is ~10x slower than its float32
// one, so 'fast' pays only with oneDNN (the CLI's --matmul fast turns oneDNN on).
export function kernelsFor(backend: BackendName, bf16MatMul: Kernels['bf16MatMul'] = 'exact'): Kernels {
  switch (backend) {
    case 'tensorflow':
      return { linearLayout: tensorflowUsesOneDNN() ? 'out-in' : 'in-out', singleKernelMatMul: true, attentionPer2DGroup: false, bf16MatMul };
    case 'wasm':
      return { ...PORTABLE_KERNELS, attentionPer2DGroup: true };
    default:
      return PORTABLE_KERNELS;
  }
}

// One [1, 4096] x [4096, 14336] product with a bfloat16 weight held by libtensorflow (InternLM2-7B's w1),
// in each matmul mode (exact: widened to float32, then the float32 kernel; fast: the bf16 kernel), with
// libtensorflow's allocator as shipped (its BFC pool) and with malloc: ms and page faults per product.
// Beside them, the floor of any mode that gives float32's numbers: the same weight held in float32 (the
// float32 kernel alone), and exact widened 1024 columns at a time (cheaper temporaries; its outputs
// against exact's: how many differ in the last bit).
// Each setting runs in a process of its own (libtensorflow reads the allocator setting when it loads).
//
//   npx tsx test/bench/widen-product.ts            # every setting, a table on stdout
import { spawnSync } from 'child_process';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../src/backend';
import { NativeTensor, releaseStagingBuffer, stagingBuffer } from '../../src/io/native';

const [K, N] = [4096, 14336];
const MODES = ['exact', 'fast', 'float32', 'chunked'] as const;
type Mode = (typeof MODES)[number];
const faults = () => process.resourceUsage().minorPageFault + process.resourceUsage().majorPageFault;

async function measure(): Promise<void> {
  await initBackend({ backend: 'tensorflow', log: null });
  const staged = stagingBuffer(K * N * 2);
  const bits = new Uint16Array(staged.buffer, staged.byteOffset, K * N);
  for (let i = 0; i < bits.length; i++) bits[i] = 0x3c00 + (i % 97); // bf16 values in [0.0078, 0.0156)
  const w = NativeTensor.fromStaging(staged, 'bfloat16', [K, N]);
  releaseStagingBuffer();
  const x = tf.randomUniform([1, K], -1, 1, 'float32', 1);
  const w32 = w.toFloat32();
  const CHUNK = 1024;
  const products: Record<Mode, () => tf.Tensor> = {
    exact: () => tf.tidy(() => tf.matMul(x, w.toFloat32())),
    fast: () => w.matMulBf16(x, false),
    float32: () => tf.matMul(x, w32),
    chunked: () =>
      tf.tidy(() =>
        tf.concat(
          Array.from({ length: N / CHUNK }, (_, j) => tf.matMul(x, w.sliceToFloat32(1, j * CHUNK, CHUNK))),
          1,
        ),
      ),
  };
  const exactValues = products.exact().dataSync();
  const row: Record<string, unknown> = { oneDNN: process.env.TF_ENABLE_ONEDNN_OPTS, bfc: process.env.TF_CPU_ALLOCATOR_USE_BFC };
  for (const mode of MODES) {
    const ms: number[] = [];
    const pf: number[] = [];
    for (let i = 0; i < 8; i++) {
      const [f0, t0] = [faults(), performance.now()];
      const y = products[mode]();
      const values = y.dataSync();
      y.dispose();
      if (i === 0) row[`${mode}Differing`] = values.filter((v, k) => v !== exactValues[k]).length;
      if (i < 2) continue; // warm-up
      ms.push(performance.now() - t0);
      pf.push(faults() - f0);
    }
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
    row[mode] = { ms: median(ms), faults: median(pf) };
  }
  tf.dispose([x, w32]);
  w.dispose();
  console.log(JSON.stringify(row));
}

if (process.argv.includes('--measure')) {
  measure().catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  console.log(
    '| oneDNN | allocator | exact ms | exact faults | fast ms | fast faults | float32 held ms | exact by 1024 columns ms | its outputs differing from exact |\n|---|---|---|---|---|---|---|---|---|',
  );
  for (const oneDNN of ['0', '1'])
    for (const bfc of ['true', 'false']) {
      const env = { ...process.env, TF_ENABLE_ONEDNN_OPTS: oneDNN, TF_CPU_ALLOCATOR_USE_BFC: bfc };
      const r = spawnSync(process.execPath, [...process.execArgv, __filename, '--measure'], { env, encoding: 'utf8' });
      const line = r.stdout.trim().split('\n').pop() ?? '';
      if (r.status !== 0 || !line.startsWith('{')) {
        console.log(`| ${oneDNN} | ${bfc === 'true' ? 'BFC pool' : 'malloc'} | error: ${r.stderr.trim().split('\n').pop()} |||||||`);
        continue;
      }
      const o = JSON.parse(line) as Record<Mode, { ms: number; faults: number }> & { chunkedDiffering: number };
      console.log(
        `| ${oneDNN} | ${bfc === 'true' ? 'BFC pool' : 'malloc'} | ${o.exact.ms.toFixed(1)} | ${o.exact.faults} | ${o.fast.ms.toFixed(1)} | ${o.fast.faults} | ${o.float32.ms.toFixed(1)} | ${o.chunked.ms.toFixed(1)} | ${o.chunkedDiffering} of ${N} |`,
      );
    }
}

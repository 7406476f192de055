// Weights held below float32 (src/io/weights.ts, src/io/native.ts) on the tensorflow backend.
// - bfloat16 with matmul 'exact' must give exactly the numbers of float32 on the same values: each
//   fixture is converted to bf16 storage (`pvc-convert --dtype bfloat16`), then loaded both ways, and
//   every stage (vision features, each LLM layer, logits) and the greedy ids must be equal bit for bit.
// - bfloat16 'fast' (bf16 products) and int8 (per-column scales) change the numbers: their errors
//   against float32 are printed (README, "Weights in memory") and held below bounds a broken path misses.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { convertCheckpoint } from '../converter/convert';
import { cpuHasBf16Instructions, initBackend } from '../src/backend';
import { generateForRows } from '../src/chat/chat';
import { bf16ToF32, f32ToBf16 } from '../src/io/safetensors';
import { HeldMatrix, openWeights, quantizeInt8, readManifest, Weights } from '../src/io/weights';
import { INT8_WIDEN_BYTES, Kernels, Linear } from '../src/nn/layers';
import { LoadOptions } from '../src/model/vlm';
import { NativeTensor, stagingBuffer } from '../src/io/native';
import { PVCModel } from '../src/pvc_model';
import {
  checkpointDir,
  convertFixture,
  PARITY_BACKENDS,
  PARITY_TOLERANCE,
  readAndDispose,
  relativeMaxError,
  tapRecorder,
  tensorflowInstalled,
} from './helpers';

const onTensorflow = tensorflowInstalled() ? describe : describe.skip;

test('f32ToBf16 rounds to nearest even and keeps specials', () => {
  const f = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, Infinity, -Infinity, 3.4e38, 0, -0]);
  expect(Array.from(f32ToBf16(f)).map((b) => b.toString(16))).toEqual(
    // 1+2^-8 is halfway: to even (0x3f80); 1+3*2^-8 halfway: up to even (0x3f82); just above halfway: up.
    ['3f80', '3f80', '3f82', '3f81', 'c020', '7f80', 'ff80', '7f80', '0', '8000'],
  );
  const nan = f32ToBf16(new Float32Array([NaN]))[0];
  expect(Number.isNaN(bf16ToF32(new Uint16Array([nan]))[0])).toBe(true);
  // Every bf16 value widened and rounded back is itself.
  const all = new Uint16Array(65536).map((_, i) => i);
  const back = f32ToBf16(bf16ToF32(all));
  expect(all.every((b, i) => back[i] === b || ((b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0))).toBe(true);
});

test("cpuHasBf16Instructions reads /proc/cpuinfo's flags: AVX512-BF16 or AMX-BF16, whole words", () => {
  const cpu = (flags: string) => `processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: ${flags}\nbugs\t\t: sysret_ss_attrs\n`;
  expect(cpuHasBf16Instructions(cpu('fpu sse2 avx avx2 fma'))).toBe(false);
  expect(cpuHasBf16Instructions(cpu('avx2 avx512f avx512bw avx512_vnni'))).toBe(false);
  expect(cpuHasBf16Instructions(cpu('avx2 avx512f avx512_bf16 avx512_fp16'))).toBe(true);
  expect(cpuHasBf16Instructions(cpu('avx2 amx_bf16 amx_tile amx_int8'))).toBe(true);
  expect(cpuHasBf16Instructions(cpu('avx2 xavx512_bf16'))).toBe(false);
  expect(cpuHasBf16Instructions('processor\t: 0\nFeatures\t: fp asimd\n')).toBeUndefined();
});

test('quantizeInt8: per-column scales, values within half a step', () => {
  const rows = 3;
  const cols = 2;
  const w = new Float32Array([0.5, -4, -1, 2, 0.25, 1]);
  const { q, scale } = quantizeInt8(w, rows, cols);
  expect(Array.from(scale)).toEqual([1 / 127, 4 / 127].map((x) => Math.fround(x)));
  expect(Array.from(q)).toEqual([64, -127, -127, 64, 32, 32]);
  for (let i = 0; i < w.length; i++) expect(Math.abs(q[i] * scale[i % cols] - w[i])).toBeLessThanOrEqual(scale[i % cols] / 2 + 1e-7);
});

test('quantizeInt8 of bfloat16 bits (widened block by block) equals quantizeInt8 of their float32 values', () => {
  // 1500 x 3001: three blocks of rows, the last one short.
  const [rows, cols] = [1500, 3001];
  let seed = 7;
  const bits = Uint16Array.from({ length: rows * cols }, () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 16);
  const finite = bits.map((b) => ((b & 0x7f80) === 0x7f80 ? b & 0x807f : b)); // no inf / NaN
  const want = quantizeInt8(bf16ToF32(finite), rows, cols);
  const out = new Int8Array(rows * cols);
  const got = quantizeInt8({ bf16: finite }, rows, cols, out);
  expect(got.q).toBe(out);
  expect(Buffer.from(got.q.buffer).equals(Buffer.from(want.q.buffer))).toBe(true);
  expect(Buffer.from(got.scale.buffer).equals(Buffer.from(want.scale.buffer))).toBe(true);
});

test('pvc-convert --dtype bfloat16 writes bf16 shards whose values are the float32 conversion rounded', () => {
  const f32 = convertFixture('tiny-internvl2');
  const bf = path.join(path.dirname(f32), 'bf16');
  convertCheckpoint(checkpointDir('tiny-internvl2'), bf, { dtype: 'bfloat16' });
  const manifest = readManifest(bf);
  expect(manifest.storage_dtype).toBe('bfloat16');
  const a = openWeights(bf).weights;
  const b = openWeights(f32).weights;
  try {
    for (const name of Object.keys(manifest.tensors)) {
      expect(a.info(name).dtype).toBe('BF16');
      expect(Buffer.from(a.readBytes(name)).equals(Buffer.from(f32ToBf16(b.readFloat32(name)).buffer))).toBe(true);
    }
  } finally {
    a.close();
    b.close();
    fs.rmSync(path.dirname(f32), { recursive: true, force: true });
  }
});

interface Run {
  ids: number[];
  /** Every stage's value at the last step. */
  stages: Map<string, Float32Array>;
  /** The prompt's (first step's) logits: before greedy ids can part. */
  promptLogits: Float32Array;
  bytes: number;
}

const prompts: Record<string, { tiles: number; question: string; frames?: number }> = {
  'tiny-internvl2': { tiles: 3, question: '<image>\nWhat is in the picture?' },
  'tiny-pvc': { tiles: 4, question: 'Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\nWhat happens?', frames: 4 },
  'scenes-pvc': { tiles: 1, question: '<image>\nWhat colour is the star?' },
};

/** bf16-valued copies of the fixtures (pvc-convert --dtype bfloat16), made once for the suites below. */
const dirs = new Map<string, string>();
function convertAll(): void {
  if (dirs.size > 0) return;
  for (const name of Object.keys(prompts)) {
    const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-bf16-')), name);
    convertCheckpoint(checkpointDir(name), dir, { dtype: 'bfloat16' });
    dirs.set(name, dir);
  }
}
afterAll(() => dirs.forEach((d) => fs.rmSync(path.dirname(d), { recursive: true, force: true })));

/** A greedy chat of 12 tokens on seeded pixels, every stage recorded. */
async function run(name: string, options: LoadOptions): Promise<Run> {
  const model = await PVCModel.load(dirs.get(name)!, options);
  try {
    const { tiles, question, frames } = prompts[name];
    const S = model.config.vision.image_size;
    const pixelValues = tf.tidy(
      () =>
        tf.sin(
          tf
            .range(0, tiles * 3 * S * S)
            .reshape([tiles, 3, S, S])
            .mul(0.37),
        ) as tf.Tensor4D,
    );
    const rec = tapRecorder();
    let promptLogits: tf.Tensor | null = null;
    const tap = (stage: string, value: tf.Tensor) => {
      if (stage === 'llm.logits' && promptLogits === null) promptLogits = tf.keep(value.clone());
      rec.tap(stage, value);
    };
    const video = frames ? { numPatchesList: Array(frames).fill(1), dataFlag: 3 as const } : {};
    const turn = model.prepareChat(pixelValues, question, { generation: model.generationConfig({ max_new_tokens: 12 }), ...video });
    const ids: number[] = [];
    const input = { rows: [turn.inputIds], pixelValues, samples: turn.samples };
    for await (const step of generateForRows(model, model.tokenizer, input, turn.generation, { tap })) ids.push(step.tokens[0]);
    pixelValues.dispose();
    return { ids, stages: await rec.values(), promptLogits: await readAndDispose(promptLogits!), bytes: model.weights.byteLength };
  } finally {
    model.dispose();
  }
}

/** Relative max errors of the projector output and the prompt's logits against `f32`, and how many greedy ids agree. */
function errorsAgainst(f32: Run, r: Run): { errors: [string, number][]; line: string } {
  const errors: [string, number][] = [
    ['projector.out', relativeMaxError(r.stages.get('projector.out')!, f32.stages.get('projector.out')!)],
    ['prompt logits', relativeMaxError(r.promptLogits, f32.promptLogits)],
  ];
  const sameIds = r.ids.filter((id, i) => id === f32.ids[i]).length;
  const line = `${errors.map(([s, e]) => `${s} ${e.toExponential(2)}`).join(', ')}; greedy ids equal ${sameIds}/${f32.ids.length}; ${(r.bytes / f32.bytes).toFixed(3)}x the bytes`;
  return { errors, line };
}

onTensorflow('weights held in bfloat16 and int8 (tensorflow backend)', () => {
  const backend = 'tensorflow';
  beforeAll(async () => {
    await initBackend({ backend, log: null });
    convertAll();
  }, 120_000);

  for (const name of Object.keys(prompts)) {
    test(`${name}: bfloat16 exact equals float32 bit for bit at every stage, and holds half the matrix bytes`, async () => {
      const f32 = await run(name, { backend, weights: 'float32' });
      const bf = await run(name, { backend, weights: 'bfloat16' });
      expect(bf.ids).toEqual(f32.ids);
      expect([...bf.stages.keys()]).toEqual([...f32.stages.keys()]);
      expect(f32.stages.size).toBeGreaterThan(5);
      for (const [stage, values] of f32.stages) {
        const other = bf.stages.get(stage)!;
        const same = values.length === other.length && values.every((v, i) => Object.is(v, other[i]));
        expect({ stage, same }).toEqual({ stage, same: true });
      }
      expect(bf.bytes).toBeLessThan(f32.bytes * 0.56);
    }, 120_000);

    test(`${name}: int8 and bfloat16 fast stay close to float32 (errors printed)`, async () => {
      const f32 = await run(name, { backend, weights: 'float32' });
      const lines: string[] = [];
      for (const [mode, options, bound] of [
        ['bfloat16 fast', { weights: 'bfloat16', matmul: 'fast' }, 0.05],
        ['int8', { weights: 'int8' }, 0.08],
      ] as [string, LoadOptions, number][]) {
        const r = await run(name, { backend, ...options });
        const { errors, line } = errorsAgainst(f32, r);
        lines.push(`${mode}: ${line}`);
        for (const [stage, e] of errors) expect({ mode, stage, ok: e < bound }).toEqual({ mode, stage, ok: true });
        expect(r.bytes).toBeLessThan(f32.bytes * (mode === 'int8' ? 0.4 : 0.56));
      }
      process.stderr.write(
        `${name} on tensorflow (oneDNN ${process.env.TF_ENABLE_ONEDNN_OPTS ?? '0'}), relative max error against float32: ${lines.join(' | ')}\n`,
      );
    }, 120_000);
  }

  test('a weight made from the staging buffer keeps its values when the buffer is reused', () => {
    const staged = stagingBuffer(8);
    new Uint16Array(staged.buffer, staged.byteOffset, 4).set([0x3f80, 0x4000, 0x4040, 0x4080]); // 1, 2, 3, 4
    const t = NativeTensor.fromStaging(staged, 'bfloat16', [2, 2]);
    const tt = NativeTensor.fromStaging(staged, 'bfloat16', [2, 2], { transpose: true });
    stagingBuffer(8).fill(0xff);
    const [a, b] = [t.toFloat32(), tt.toFloat32()];
    expect([Array.from(a.dataSync()), Array.from(b.dataSync()), tt.shape]).toEqual([
      [1, 2, 3, 4],
      [1, 3, 2, 4],
      [2, 2],
    ]);
    tf.dispose([a, b]);
    t.dispose();
    tt.dispose();
  });

  test('an int8 weight too large to widen at once is multiplied a slice of outputs at a time, as the whole widened weight would be, in both layouts', () => {
    // [1024, 34000] int8 widens to 139 MB: over INT8_WIDEN_BYTES, so Linear takes it in 2 parts.
    const [ins, outs] = [1024, 34000];
    expect(ins * outs * 4).toBeGreaterThan(INT8_WIDEN_BYTES);
    let seed = 31;
    const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    const { q, scale } = quantizeInt8(Float32Array.from({ length: ins * outs }, random), ins, outs);
    const staged = stagingBuffer(q.byteLength);
    staged.set(new Uint8Array(q.buffer));
    const x = tf.tensor3d(Float32Array.from({ length: 3 * ins }, random), [1, 3, ins]);
    for (const layout of ['in-out', 'out-in'] as const) {
      const held = new HeldMatrix(
        NativeTensor.fromStaging(staged, 'int8', [ins, outs], { transpose: layout === 'out-in' }),
        tf.tensor1d(scale),
        layout === 'out-in' ? 0 : 1,
      );
      const weights = { matrix: () => held, storeTransposed: () => held } as unknown as Weights;
      const kernels: Kernels = { linearLayout: layout, singleKernelMatMul: true, attentionPer2DGroup: false, bf16MatMul: 'exact' };
      const slices = jest.spyOn(NativeTensor.prototype, 'sliceToFloat32');
      const y = new Linear(weights, 'w', false, kernels).forward(x);
      expect(slices.mock.calls.map(([, begin, size]) => [begin, size])).toEqual([
        [0, 32768],
        [32768, outs - 32768],
      ]);
      slices.mockRestore();
      // The whole weight widened at once, the outputs scaled after the product as Linear scales them.
      const whole = held.data.toFloat32();
      const want = tf.mul(tf.matMul(x.reshape([3, ins]), whole, false, layout === 'out-in'), held.scale!);
      expect(y.shape).toEqual([1, 3, outs]);
      expect(relativeMaxError(y.dataSync(), want.dataSync())).toBeLessThan(1e-6);
      tf.dispose([y, whole, want]);
      held.dispose();
    }
    x.dispose();
  }, 120_000);

  test('load and dispose leave no tfjs tensor and no libtensorflow handle behind', async () => {
    const binding = (tf.backend() as unknown as { binding: { getNumOfTensors(): number } }).binding;
    await run('tiny-pvc', { backend, weights: 'bfloat16' }); // warm-up: tfjs keeps a few scalars of its own
    const tensors = tf.memory().numTensors;
    const handles = binding.getNumOfTensors();
    for (const options of [{ weights: 'bfloat16' }, { weights: 'bfloat16', matmul: 'fast' }, { weights: 'int8' }] as LoadOptions[])
      await run('tiny-pvc', { backend, ...options });
    expect({ tensors: tf.memory().numTensors, handles: binding.getNumOfTensors() }).toEqual({ tensors, handles });
  }, 120_000);

  test("matmul 'fast' warns at load on a CPU without bf16 instructions, and only there", async () => {
    const warn = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    try {
      for (const matmul of ['fast', 'exact'] as const) (await PVCModel.load(dirs.get('tiny-internvl2')!, { backend, weights: 'bfloat16', matmul })).dispose();
      const codes = warn.mock.calls.map((c) => (c[1] as { code?: string } | undefined)?.code);
      // This machine's own flags decide which is right (a CUDA build on a GPU would not warn either).
      const onCpu = (await initBackend({ backend, log: null })).device?.startsWith('CPU');
      expect(codes).toEqual(onCpu && cpuHasBf16Instructions() === false ? ['PVC_FAST_WITHOUT_BF16'] : []);
    } finally {
      warn.mockRestore();
    }
  }, 120_000);

  test('refuses what cannot work, naming the alternative', async () => {
    const dir = dirs.get('tiny-internvl2')!;
    await expect(PVCModel.load(dir, { backend, weights: 'float32', matmul: 'fast' })).rejects.toThrow(/matmul 'fast' .* needs weights 'bfloat16'/);
    await expect(PVCModel.load(dir, { backend, weights: 'float16' as never })).rejects.toThrow(/weights 'float16': expected one of float32, bfloat16, int8/);
    await expect(PVCModel.load(dir, { backend: 'cpu', weights: 'bfloat16' })).rejects.toThrow(
      /need the tensorflow backend .* or webgpu, not cpu; on cpu load with weights 'float32'/,
    );
    await initBackend({ backend, log: null });
  });
});

// webgpu (PVC_TEST_BACKENDS=webgpu, as .ci/run does on llvmpipe): the packed-weight WGSL programs
// (src/io/webgpu_packed.ts) against webgpu's own float32 kernels on the same bf16 values.
(PARITY_BACKENDS.includes('webgpu') ? describe : describe.skip)('weights held packed on webgpu', () => {
  const backend = 'webgpu';
  beforeAll(async () => {
    await initBackend({ backend, log: null });
    convertAll();
  }, 120_000);

  for (const name of ['tiny-internvl2', 'tiny-pvc']) {
    test(`${name}: bfloat16 within parity tolerance of float32 with the same ids; int8 close`, async () => {
      const f32 = await run(name, { backend, weights: 'float32' });
      const bf = await run(name, { backend, weights: 'bfloat16' });
      const int8 = await run(name, { backend, weights: 'int8' });
      const b = errorsAgainst(f32, bf);
      const q = errorsAgainst(f32, int8);
      process.stderr.write(`${name} on webgpu, relative max error against float32: bfloat16 ${b.line} | int8 ${q.line}\n`);
      expect(bf.ids).toEqual(f32.ids);
      for (const [stage, values] of f32.stages) {
        const e = relativeMaxError(bf.stages.get(stage)!, values);
        expect({ stage, ok: e <= PARITY_TOLERANCE }).toEqual({ stage, ok: true });
      }
      for (const [stage, e] of q.errors) expect({ stage, ok: e < 0.08 }).toEqual({ stage, ok: true });
      expect(bf.bytes).toBeLessThan(f32.bytes * 0.56);
      expect(int8.bytes).toBeLessThan(f32.bytes * 0.4);
    }, 300_000);
  }
});

// `pvc doctor`: the report, the self-check and its exit codes.
import * as os from 'os';
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { DoctorReport, formatReport, SELF_CHECK_TOLERANCE } from '../src/cli/doctor';
import doctorModel from '../src/cli/doctor-model.json';
import { main } from '../src/cli/main';
import { BACKEND_NAMES, cpuHasBf16Instructions } from '../src/backend';
import { captureOutput, convertFixture, readJson } from './helpers';

const output = captureOutput();

test("the self-check model is the tiny fixture's config and tensor shapes, as pvc-convert makes them", () => {
  const dir = convertFixture('tiny-internvl2');
  try {
    expect(doctorModel.config).toEqual(readJson(path.join(dir, 'config.json')));
    const manifest = readJson<{ tensors: Record<string, { shape: number[] }> }>(path.join(dir, 'manifest.json'));
    expect(doctorModel.tensors).toEqual(Object.entries(manifest.tensors).map(([name, t]) => [name, t.shape]));
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('pvc doctor --json reports versions, every backend, memory, and a passing self-check (exit 0)', async () => {
  expect(await main(['doctor', '--backend', 'wasm', '--json'])).toBe(0);
  const report = JSON.parse(output.stdout()) as DoctorReport;
  expect(report.node).toBe(process.version);
  expect(report.tfjs).toBe(tf.version_core);
  expect(report.backends.map((b) => b.name)).toEqual([...BACKEND_NAMES]);
  for (const b of report.backends) expect(b.detail.length).toBeGreaterThan(0);
  expect(report.backends.find((b) => b.name === 'wasm')!.available).toBe(true);
  expect(report.backends.find((b) => b.name === 'cpu')!.available).toBe(true);
  // webgpu's status agrees with the adapter line: available exactly when an adapter was found.
  const webgpu = report.backends.find((b) => b.name === 'webgpu')!;
  expect(report.webgpu.startsWith('none: ')).toBe(!webgpu.available);
  expect(report.memory.totalBytes).toBe(os.totalmem());
  expect(report.cpu).toEqual({ model: os.cpus()[0].model, cores: os.cpus().length, bf16: cpuHasBf16Instructions() });
  expect(report.active).toMatchObject({ name: 'wasm', reason: 'requested by the backend option' });
  const check = report.selfCheck!;
  expect(check).toMatchObject({ backend: 'wasm', reference: 'cpu', passed: true, tolerance: SELF_CHECK_TOLERANCE });
  expect(Object.keys(check.errors).sort()).toEqual(['decodeLogits', 'paddedBatchLogits', 'promptLogits', 'visual']);
  for (const e of Object.values(check.errors)) expect(e).toBeLessThanOrEqual(SELF_CHECK_TOLERANCE);
  expect(tf.getBackend()).toBe('wasm');

  const text = formatReport(report);
  expect(text).toMatch(new RegExp(`^node ${process.version.replace(/\./g, '\\.')} .*tfjs ${tf.version_core}`));
  for (const name of BACKEND_NAMES) expect(text).toMatch(new RegExp(`^  ${name} +(available|unavailable): `, 'm'));
  expect(text).toMatch(/^webgpu adapter: /m);
  expect(text).toMatch(/^memory: [0-9.]+ GiB total/m);
  expect(text).toMatch(/^cpu: .+, [0-9]+ cores; (bf16 instructions unknown|AVX512-BF16 or AMX-BF16: |no AVX512-BF16 or AMX-BF16: )/m);
  expect(text).toMatch(/\nself-check: PASS$/);
});

test('a backend that computes wrong fails the self-check (exit 1)', async () => {
  // wasm with a broken rsqrt (the identity): every norm is off.
  const rsqrt = tf.getKernel('Rsqrt', 'wasm')!;
  const identity = tf.getKernel('Identity', 'wasm')!;
  tf.unregisterKernel('Rsqrt', 'wasm');
  tf.registerKernel({ ...rsqrt, kernelFunc: identity.kernelFunc });
  try {
    expect(await main(['doctor', '--backend', 'wasm'])).toBe(1);
  } finally {
    tf.unregisterKernel('Rsqrt', 'wasm');
    tf.registerKernel(rsqrt);
  }
  expect(output.stdout()).toMatch(/self-check \(tiny InternVL2, random weights\) on wasm against cpu: visual [0-9.e+-]+, /);
  expect(output.stdout()).toMatch(/\nself-check: FAIL\n$/);
});

test('usage errors exit 2 and say what is wrong', async () => {
  expect(await main(['doctor', '--backend', 'gpu'])).toBe(2);
  expect(output.stderr()).toMatch(/pvc doctor: --backend expects tensorflow, wasm, cpu or webgpu, not gpu/);
  expect(await main(['doctor', '--verbose'])).toBe(2);
  expect(output.stderr()).toMatch(/pvc doctor: unknown option --verbose/);
  expect(await main(['doctor', '--backend', 'wasm', '--backend', 'cpu'])).toBe(2);
  expect(output.stderr()).toMatch(/pvc doctor: --backend was given more than once/);
  expect(await main(['doctor', 'wasm'])).toBe(2);
  expect(output.stderr()).toMatch(/pvc doctor: unexpected argument 'wasm'/);
});

// `pvc doctor`: what this machine can run the model on, and a short check that the active backend
// computes the model as the reference backend does.
//   pvc doctor [--backend B] [--json]
// Prints node and tfjs versions; each backend's status (and why one is unavailable); libtensorflow's
// version and whether it sees a CUDA device; the WebGPU adapter and its limits; memory; then the
// self-check. Exit code 0 when the self-check passes, 1 when it fails, 2 on a usage error.
//
// The self-check runs a tiny InternVL2 (3 ViT layers, projector, 2 InternLM2 layers, vocabulary 1015:
// the shapes of the test fixture tiny-internvl2, kept in doctor-model.json) with seeded random weights
// on the active backend and on the cpu backend, and compares. It needs no file from test/ (an installed
// package has none) and no Python. The cpu backend is the reference because it is plain JavaScript that
// every install has and that the parity suites hold to upstream's PyTorch model; what can break on a
// given machine is the other backends (a libtensorflow build, a GPU driver, a WebGPU adapter's limits
// or kernels), and those are what the check compares against it. When cpu itself is active, wasm is
// the reference. The inputs cover a vision forward, a prompt prefill, decode steps through the KV
// cache, and a left-padded batch (masked rows, which a softmax can get wrong).
import * as os from 'os';
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { BACKEND_NAMES, BackendInfo, BackendName, cpuHasBf16Instructions, initBackend } from '../backend';
import { validateConfig } from '../config';
import { Weights } from '../io/weights';
import { kernelsFor } from '../model/kernels';
import { VisionLanguageModel } from '../model/vlm';
import { findWebGPUAdapter, formatAdapter } from '../webgpu';
import { flag, oneOf, parseOptions, value, Values } from './args';
import doctorModel from './doctor-model.json';

/** The parity tolerance of the test suites: max |a - b| <= 1e-4 * max |ref|. */
export const SELF_CHECK_TOLERANCE = 1e-4;

export interface BackendStatus {
  name: BackendName;
  available: boolean;
  /** What runs it (provider, device, adapter) when available; why not, when not. */
  detail: string;
}

export interface SelfCheck {
  backend: BackendName;
  reference: BackendName;
  /** max |a - b| / max |ref| per output compared. */
  errors: Record<string, number>;
  tolerance: number;
  passed: boolean;
  seconds: number;
  /** Why it could not run, when it failed before comparing. */
  error?: string;
}

export interface DoctorReport {
  node: string;
  platform: string;
  tfjs: string;
  backends: BackendStatus[];
  tensorflow?: { provider?: string; libtensorflow?: string; cudaDevice: boolean; nvidiaDriver?: string };
  webgpu: string;
  memory: { totalBytes: number; freeBytes: number; rssBytes: number; gpus: string[] };
  /** The CPU, and whether it has the bf16 instructions `--matmul fast` needs on the CPU (undefined: unknown, not Linux). */
  cpu: { model: string; cores: number; bf16: boolean | undefined };
  active?: BackendInfo;
  selfCheck?: SelfCheck;
}

const USAGE = 'usage: pvc doctor [--backend tensorflow|wasm|cpu|webgpu] [--json]';

const DOCTOR_OPTIONS = { backend: value(oneOf(BACKEND_NAMES)), json: flag() };

/** A deterministic uniform generator (mulberry32): the same weights and inputs on every backend. */
function uniform(seed: number): (n: number, scale: number, offset?: number) => Float32Array {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return (n, scale, offset = 0) => Float32Array.from({ length: n }, () => offset + scale * (2 * next() - 1));
}

/** The self-check model's weights: matrices scaled by 1/sqrt(fan-in), norm weights near 1, layer scales near 0.5, small biases. */
function selfCheckTensors(): Map<string, { shape: number[]; values: Float32Array }> {
  const rand = uniform(20241125);
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const [name, shape] of doctorModel.tensors as [string, number[]][]) {
    const n = shape.reduce((a, b) => a * b, 1);
    let values: Float32Array;
    if (shape.length >= 2) values = rand(n, name.includes('embed') && !name.includes('patch') ? 1 : 1 / Math.sqrt(shape[0]));
    else if (/norm\d?\.weight$/.test(name)) values = rand(n, 0.1, 1);
    else if (/\.ls\d$/.test(name)) values = rand(n, 0.1, 0.5);
    else values = rand(n, 0.05);
    out.set(name, { shape, values });
  }
  return out;
}

/** Runs the self-check model on the current backend; returns its outputs as plain arrays. */
async function runSelfCheckModel(): Promise<Record<string, Float32Array>> {
  const config = validateConfig(doctorModel.config, 'doctor-model.json');
  const tensors = new Map<string, tf.Tensor>();
  for (const [name, { shape, values }] of selfCheckTensors()) tensors.set(name, tf.tensor(values, shape, 'float32'));
  const weights = Weights.fromTensors('(self-check model)', tensors);
  const out: Record<string, Float32Array> = {};
  try {
    // Built as a model load builds it: with the kernels of the backend in use.
    const { vision: vit, projector, llm } = new VisionLanguageModel('(self-check model)', config, weights, kernelsFor(tf.getBackend() as BackendName));
    const rand = uniform(7);
    const S = config.vision.image_size;
    const pixels = tf.tensor4d(rand(2 * 3 * S * S, 1.5), [2, 3, S, S]);
    const visual = tf.tidy(() => projector.forward(vit.forward(pixels)));
    pixels.dispose();
    out.visual = (await visual.data()) as Float32Array;

    // A prompt: some text, the first image's visual tokens, more text; then 3 greedy decode steps.
    const V = config.llm.vocab_size;
    const ids = Array.from({ length: 12 }, (_, i) => (i * 89 + 5) % V);
    const embeds = tf.tidy(() => {
      const text = llm.embedTokens([ids]);
      const image = visual.slice([0, 0, 0], [1, -1, -1]);
      return tf.concat([text.slice([0, 0, 0], [1, 4, -1]), image, text.slice([0, 4, 0], [1, -1, -1])], 1) as tf.Tensor3D;
    });
    visual.dispose();
    const cache = llm.newCache(1);
    try {
      const prompt = llm.forward(embeds, cache);
      embeds.dispose();
      out.promptLogits = (await prompt.data()) as Float32Array;
      prompt.dispose();
      // Each step feeds the token at a fixed position (not the argmax: a near-tie could pick differently
      // on two correct backends and make every later step incomparable).
      const steps: Float32Array[] = [];
      for (let s = 0; s < 3; s++) {
        const next = llm.embedTokens([[(s * 131 + 17) % V]]);
        const logits = llm.forward(next, cache);
        next.dispose();
        steps.push((await logits.data()) as Float32Array);
        logits.dispose();
      }
      out.decodeLogits = Float32Array.from(steps.flatMap((a) => Array.from(a)));
    } finally {
      cache.dispose();
    }

    // A left-padded batch of two: the padding queries see nothing (every score masked).
    const pad = 5;
    const batchIds = [ids, [...new Array(pad).fill(config.llm.pad_token_id ?? 0), ...ids.slice(0, ids.length - pad)]];
    const batchCache = llm.newCache(2);
    try {
      const batchEmbeds = llm.embedTokens(batchIds);
      const logits = llm.forward(batchEmbeds, batchCache, { attentionMask: [ids.map(() => 1), batchIds[1].map((_, i) => (i < pad ? 0 : 1))] });
      batchEmbeds.dispose();
      out.paddedBatchLogits = (await logits.data()) as Float32Array;
      logits.dispose();
    } finally {
      batchCache.dispose();
    }
  } finally {
    weights.dispose();
  }
  return out;
}

function relativeMaxError(actual: Float32Array, ref: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(actual[i] - ref[i]);
    diff = Number.isNaN(d) ? Infinity : Math.max(diff, d);
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return diff / scale;
}

/**
 * Runs the self-check model on `backend` and on the reference backend (cpu, or wasm when `backend` is
 * cpu) and compares every output. Leaves `backend` active.
 */
export async function selfCheck(backend: BackendName): Promise<SelfCheck> {
  const reference: BackendName = backend === 'cpu' ? 'wasm' : 'cpu';
  const started = Date.now();
  const result: SelfCheck = { backend, reference, errors: {}, tolerance: SELF_CHECK_TOLERANCE, passed: false, seconds: 0 };
  try {
    await initBackend({ backend: reference, log: null });
    const expected = await runSelfCheckModel();
    await initBackend({ backend, log: null });
    const before = tf.memory().numTensors;
    const actual = await runSelfCheckModel();
    const leaked = tf.memory().numTensors - before;
    for (const name of Object.keys(expected)) result.errors[name] = relativeMaxError(actual[name], expected[name]);
    result.passed = Object.values(result.errors).every((e) => e <= SELF_CHECK_TOLERANCE);
    if (leaked !== 0) {
      result.passed = false;
      result.error = `${leaked} tensor(s) left behind on ${backend}`;
    }
  } catch (e) {
    result.error = (e as Error).message.split('\n')[0];
    // Leave the requested backend active where it can start (the check failed, not the backend choice).
    await initBackend({ backend, log: null }).catch(() => undefined);
  }
  result.seconds = (Date.now() - started) / 1000;
  return result;
}

function nvidiaDriver(): string | undefined {
  try {
    return fs.readFileSync('/proc/driver/nvidia/version', 'utf8').split('\n')[0].trim();
  } catch {
    return undefined;
  }
}

/** GPUs as nvidia-smi lists them (name, total and used memory), when it is installed. */
function nvidiaGpus(): string[] {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { execFileSync } = require('child_process') as typeof import('child_process');
    const out = execFileSync('nvidia-smi', ['--query-gpu=name,memory.total,memory.used', '--format=csv,noheader'], {
      encoding: 'utf8',
      timeout: 10000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    return out
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l);
  } catch {
    return [];
  }
}

/** Gathers the report: probes every backend, then leaves the requested (or automatic) one active and self-checks it. */
export async function doctor(options: { backend?: BackendName; selfCheck?: boolean } = {}): Promise<DoctorReport> {
  const report: DoctorReport = {
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    tfjs: tf.version_core,
    backends: [],
    webgpu: '',
    memory: { totalBytes: os.totalmem(), freeBytes: os.freemem(), rssBytes: process.memoryUsage().rss, gpus: nvidiaGpus() },
    cpu: { model: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, bf16: cpuHasBf16Instructions() },
  };
  // First the backend a model load would choose (--backend, PVC_BACKEND, else the automatic order), with
  // its reason; then every backend is probed; then the chosen one is made active again.
  let activeError: string | undefined;
  try {
    report.active = await initBackend({ backend: options.backend, log: null });
  } catch (e) {
    activeError = (e as Error).message;
  }
  for (const name of BACKEND_NAMES) {
    try {
      const info = await initBackend({ backend: name, log: null });
      const detail = info.adapter ? `${info.adapter.backend} adapter (below)` : [info.provider, info.device].filter((s) => s).join(', ');
      report.backends.push({ name, available: true, detail: detail || 'ready' });
      if (name === 'tensorflow') {
        const b = tf.backend() as unknown as { binding?: { TF_Version?: string }; isUsingGpuDevice?: boolean };
        report.tensorflow = {
          provider: info.provider,
          libtensorflow: b.binding?.TF_Version,
          cudaDevice: b.isUsingGpuDevice === true,
          nvidiaDriver: nvidiaDriver(),
        };
      }
    } catch (e) {
      const why = (e as Error).message.replace(/^backend '\w+' \(requested by the backend option\) is not available: /, '');
      report.backends.push({ name, available: false, detail: why });
    }
  }
  const adapter = await findWebGPUAdapter();
  report.webgpu = 'report' in adapter ? formatAdapter(adapter.report) : `none: ${adapter.why}`;
  if (report.active === undefined) {
    report.selfCheck = {
      backend: options.backend ?? ('' as BackendName),
      reference: 'cpu',
      errors: {},
      tolerance: SELF_CHECK_TOLERANCE,
      passed: false,
      seconds: 0,
      error: activeError,
    };
    return report;
  }
  await initBackend({ backend: report.active.name, log: null });
  if (options.selfCheck !== false) report.selfCheck = await selfCheck(report.active.name);
  return report;
}

export function formatReport(r: DoctorReport): string {
  const gib = (n: number) => `${(n / 2 ** 30).toFixed(1)} GiB`;
  const lines = [`node ${r.node} (${r.platform}), tfjs ${r.tfjs}`, 'backends:'];
  for (const b of r.backends) lines.push(`  ${b.name.padEnd(10)} ${b.available ? 'available' : 'unavailable'}: ${b.detail}`);
  if (r.tensorflow) {
    lines.push(
      `libtensorflow ${r.tensorflow.libtensorflow ?? '?'} (${r.tensorflow.provider}): ${r.tensorflow.cudaDevice ? 'sees a CUDA device' : 'sees no CUDA device, runs on the CPU'}` +
        `${r.tensorflow.nvidiaDriver ? `; ${r.tensorflow.nvidiaDriver}` : '; no NVIDIA driver loaded'}`,
    );
  } else {
    lines.push('libtensorflow: not loaded (build it with `npm run build:tensorflow`, or `-- --gpu` for CUDA)');
  }
  lines.push(`webgpu adapter: ${r.webgpu}`);
  lines.push(
    `memory: ${gib(r.memory.totalBytes)} total, ${gib(r.memory.freeBytes)} free; GPUs: ${r.memory.gpus.length ? r.memory.gpus.join('; ') : 'none listed by nvidia-smi'}`,
  );
  lines.push('  (PVC-InternVL2-8B in float32: about 32 GB of weights, plus the KV cache, 256 KiB per token, and activations; see the README)');
  const bf16 =
    r.cpu.bf16 === undefined
      ? 'bf16 instructions unknown (no /proc/cpuinfo)'
      : r.cpu.bf16
        ? 'AVX512-BF16 or AMX-BF16: --matmul fast has its bf16 kernels'
        : 'no AVX512-BF16 or AMX-BF16: on the CPU use --matmul exact, fast has no bf16 kernel here';
  lines.push(`cpu: ${r.cpu.model}, ${r.cpu.cores} cores; ${bf16}`);
  if (r.active) {
    const detail = [r.active.provider, r.active.device].filter((s) => s).join(', ');
    lines.push(`active backend: ${r.active.name}${detail ? ` (${detail})` : ''} (${r.active.reason})`);
  }
  const c = r.selfCheck;
  if (c) {
    const errs = Object.entries(c.errors)
      .map(([k, v]) => `${k} ${v.toExponential(1)}`)
      .join(', ');
    lines.push(
      `self-check (tiny InternVL2, random weights) on ${c.backend || '(none)'} against ${c.reference}: ${errs || '-'}` +
        ` (tolerance ${c.tolerance}, ${c.seconds.toFixed(1)} s)${c.error ? `: ${c.error}` : ''}`,
    );
    lines.push(`self-check: ${c.passed ? 'PASS' : 'FAIL'}`);
  }
  return lines.join('\n');
}

/** `pvc doctor [--backend B] [--json]`: returns the exit code. */
export async function doctorCommand(argv: string[]): Promise<number> {
  let args: Values<typeof DOCTOR_OPTIONS>;
  try {
    args = parseOptions(argv, DOCTOR_OPTIONS).values;
  } catch (e) {
    process.stderr.write(`pvc doctor: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const report = await doctor({ backend: args.backend });
  process.stdout.write((args.json ? JSON.stringify(report, null, 1) : formatReport(report)) + '\n');
  return report.selfCheck?.passed ? 0 : 1;
}

// Backend choice: tensorflow (libtensorflow through tfjs-node-gpu or tfjs-node) > wasm > cpu; webgpu
// (Dawn, see src/webgpu.ts) only on request.
//
// tfjs-node(-gpu) are optional dependencies: their install step downloads libtensorflow, which fails
// on machines without access to Google's host, and npm then leaves them out. So every candidate is
// tried, the reason each one was passed over is kept, and the choice is reported once.
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { formatAdapter, prepareWebGPUBackend, registerWebGPU, WebGPUAdapterReport } from './webgpu';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu' | 'webgpu';

export const BACKEND_NAMES: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu', 'webgpu'];

/**
 * The automatic choice, in order. webgpu is left out: in Node it is young, and on a machine without a
 * GPU Dawn's software adapter is slower than wasm, so it runs only when asked for.
 */
export const AUTO_BACKENDS: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

export interface BackendInfo {
  /** The tfjs backend now active. */
  name: BackendName;
  /** For `tensorflow`: which package provided it. */
  provider?: '@tensorflow/tfjs-node-gpu' | '@tensorflow/tfjs-node';
  /** Why this backend: requested explicitly, or the candidates passed over and why. */
  reason: string;
  /**
   * Where it computes, when that is not obvious from the name: for `tensorflow`, a CUDA GPU or the CPU
   * (a GPU build without a visible device runs on the CPU); for `webgpu`, the adapter.
   */
  device?: string;
  /** For `webgpu`: the adapter and its limits. */
  adapter?: WebGPUAdapterReport;
}

export interface BackendOptions {
  /** Overrides PVC_BACKEND and the automatic choice. */
  backend?: BackendName;
  /** Where the one-line report goes; defaults to stderr. Pass `null` to stay silent. */
  log?: ((line: string) => void) | null;
}

let active: BackendInfo | undefined;

function parseBackendName(value: string, source: string): BackendName {
  if ((BACKEND_NAMES as readonly string[]).includes(value)) return value as BackendName;
  throw new Error(`${source}: unknown backend '${value}'; expected one of ${BACKEND_NAMES.join(', ')}`);
}

function errorText(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.split('\n')[0];
}

/**
 * libtensorflow's settings, which it reads from the process environment when it loads (a worker
 * thread's process.env is a copy native code never sees, so a main thread starting one calls this first).
 */
export function setTensorflowEnvironment(): void {
  // libtensorflow logs its CPU feature notes at load unless told otherwise; our own report suffices.
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
  // libtensorflow's Eigen kernels by default, not oneDNN: in `npm run bench` (2 cores) Eigen keeps a
  // real-size InternLM2 layer's decode step and prefill within 1.4x of PyTorch, while oneDNN is faster at
  // prefill and vision (attention, softmax) but 1.6-1.7x slower than PyTorch at decode (its matVec is
  // ~20% slower) and needs the weights transposed at load. TF_ENABLE_ONEDNN_OPTS=1 chooses oneDNN.
  process.env.TF_ENABLE_ONEDNN_OPTS ??= '0';
  // Tensors from libtensorflow's BFC pool, not a malloc each: a freed temporary's pages are reused, not
  // returned and faulted in again. It matters for exact and int8 weights, whose every product widens the
  // weight to a fresh float32 copy (up to 1.5 GB): 6.3 M page faults per decode step of InternVL2-8B
  // without it. (With oneDNN on, libtensorflow pools by itself.) TF_CPU_ALLOCATOR_USE_BFC=false: malloc.
  process.env.TF_CPU_ALLOCATOR_USE_BFC ??= 'true';
}

/** Loads tfjs-node-gpu or tfjs-node (which register the `tensorflow` backend); null with the reasons if neither loads. */
function loadTensorflowProvider(): { provider: BackendInfo['provider']; failures: string[] } {
  const failures: string[] = [];
  setTensorflowEnvironment();
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      require(pkg);
      if (tf.findBackendFactory('tensorflow') != null) {
        return { provider: pkg, failures };
      }
      failures.push(`${pkg} loaded but registered no 'tensorflow' backend`);
    } catch (e) {
      const code = (e as { code?: string }).code;
      failures.push(code === 'MODULE_NOT_FOUND' ? `${pkg} is not installed` : `${pkg} failed to load: ${errorText(e)}`);
    }
  }
  return { provider: undefined, failures };
}

type Found = Pick<BackendInfo, 'provider' | 'device' | 'adapter'>;

async function tryBackend(name: BackendName): Promise<({ ok: true } & Found) | { ok: false; why: string }> {
  if (name === 'tensorflow') {
    const { provider, failures } = loadTensorflowProvider();
    if (provider === undefined) return { ok: false, why: failures.join('; ') };
    if (!(await tf.setBackend('tensorflow'))) return { ok: false, why: `${provider} loaded but the tensorflow backend failed to initialise` };
    const onGpu = (tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice === true;
    const device = onGpu ? 'CUDA GPU' : provider === '@tensorflow/tfjs-node-gpu' ? 'CPU: the GPU build sees no CUDA device' : 'CPU';
    return { ok: true, provider, device };
  }
  if (name === 'webgpu') {
    const found = await registerWebGPU();
    if (!('report' in found)) return { ok: false, why: found.why };
    if (!(await tf.setBackend('webgpu'))) return { ok: false, why: `the webgpu backend failed to initialise on ${formatAdapter(found.report)}` };
    prepareWebGPUBackend(found.report);
    return { ok: true, device: formatAdapter(found.report), adapter: found.report };
  }
  if (name === 'wasm') {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      require('@tensorflow/tfjs-backend-wasm');
    } catch (e) {
      return { ok: false, why: `@tensorflow/tfjs-backend-wasm failed to load: ${errorText(e)}` };
    }
    if (!(await tf.setBackend('wasm'))) return { ok: false, why: 'the wasm backend failed to initialise' };
    return { ok: true };
  }
  // tfjs prints a banner recommending tfjs-node on first use of cpu in Node; our report already says why.
  tf.env().set('PROD', true);
  if (!(await tf.setBackend('cpu'))) return { ok: false, why: 'the cpu backend failed to initialise' };
  return { ok: true };
}

/**
 * Selects and initialises the tfjs backend. Order of precedence: `options.backend`, the PVC_BACKEND
 * environment variable, then the first of tensorflow, wasm, cpu that works (webgpu only when asked
 * for). An explicitly requested backend that cannot start is an error (no silent fallback). Calling again with the same request
 * returns the active backend; a different request switches.
 */
export async function initBackend(options: BackendOptions = {}): Promise<BackendInfo> {
  const log = options.log === undefined ? (line: string) => process.stderr.write(line + '\n') : options.log;
  let requested: BackendName | undefined;
  let source = '';
  if (options.backend !== undefined) {
    requested = parseBackendName(options.backend, 'backend option');
    source = 'requested by the backend option';
  } else if (process.env.PVC_BACKEND) {
    requested = parseBackendName(process.env.PVC_BACKEND, 'PVC_BACKEND');
    source = 'requested by PVC_BACKEND';
  }
  if (active !== undefined && (requested === undefined || requested === active.name) && tf.getBackend() === active.name) {
    return active;
  }

  let info: BackendInfo;
  if (requested !== undefined) {
    const r = await tryBackend(requested);
    if (!r.ok) throw new Error(`backend '${requested}' (${source}) is not available: ${r.why}`);
    info = { name: requested, provider: r.provider, device: r.device, adapter: r.adapter, reason: source };
  } else {
    const passedOver: string[] = [];
    let chosen: BackendInfo | undefined;
    for (const name of AUTO_BACKENDS) {
      const r = await tryBackend(name);
      if (r.ok) {
        chosen = { name, provider: r.provider, device: r.device, adapter: r.adapter, reason: passedOver.length ? passedOver.join('; ') : 'first choice' };
        break;
      }
      passedOver.push(`${name}: ${r.why}`);
    }
    if (chosen === undefined) throw new Error(`no tfjs backend could be initialised: ${passedOver.join('; ')}`);
    info = chosen;
  }
  // Reported once per choice: on the first call and when a later request switches backends.
  if (active?.name !== info.name) {
    const detail = [info.provider, info.device].filter((s) => s).join(', ');
    log?.(`[pvc-tfjs] backend: ${info.name}${detail ? ` (${detail})` : ''} (${info.reason})`);
  }
  active = info;
  return info;
}

/**
 * Whether this CPU has the instructions libtensorflow's bf16 product runs on (oneDNN's AVX512-BF16 or AMX-BF16
 * code), from the flags in `cpuinfo` (default: /proc/cpuinfo); undefined where they cannot be read (not
 * Linux). Without them matmul 'fast' has no fast kernel: oneDNN falls back, and runs slower than 'exact'.
 */
export function cpuHasBf16Instructions(cpuinfo?: string): boolean | undefined {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return undefined;
    }
  }
  const flags = /^flags\s*:(.*)$/m.exec(text);
  if (!flags) return undefined;
  const set = new Set(flags[1].trim().split(/\s+/));
  return set.has('avx512_bf16') || set.has('amx_bf16');
}

/**
 * Whether libtensorflow runs its CPU kernels through oneDNN: its TF_ENABLE_ONEDNN_OPTS switch, read when
 * it loads (set to 0 by this module unless given; libtensorflow's own default is on for x86-64 Linux).
 * Linear picks the weight layout that is fast for the engine in use (see Linear in src/nn/layers.ts).
 */
export function tensorflowUsesOneDNN(): boolean {
  const value = process.env.TF_ENABLE_ONEDNN_OPTS?.toLowerCase();
  if (value === '0' || value === 'false') return false;
  if (value === '1' || value === 'true') return true;
  return process.platform === 'linux' && process.arch === 'x64';
}

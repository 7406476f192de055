// The webgpu backend in Node: @tensorflow/tfjs-backend-webgpu on Dawn, through the `webgpu` package's
// prebuilt dawn.node. Both are optional dependencies.
//
// tfjs-backend-webgpu registers itself only when `navigator.gpu` exists as it loads, and asks that object
// for an adapter. Node has no navigator.gpu, so a small one is put in place that hands out the adapter
// chosen here: Dawn's native backend first (Vulkan on Linux, Metal on macOS, D3D12 on Windows: real GPUs),
// else OpenGL ES in WebGPU's compatibility mode, which is what a machine without Vulkan (a container with
// Mesa's software rasteriser, an old driver) offers. PVC_WEBGPU_BACKEND=vulkan|metal|d3d12|opengles|d3d11
// forces one.
//
// The adapter's limits are the limits of one tensor: tfjs binds each tensor as one storage buffer, and a
// binding larger than maxStorageBufferBindingSize is a WebGPU validation error, which Dawn only logs
// (the shader then reads nothing and the result is garbage). So every buffer larger than the limits is
// refused here, with the tensor's shape when it is known, before WebGPU sees it.
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';

export interface WebGPUAdapterReport {
  /** The Dawn backend: vulkan, metal, d3d12 (feature level core) or opengles, d3d11 (compatibility). */
  backend: string;
  featureLevel: 'core' | 'compatibility';
  /** Vendor / architecture / device / description as the adapter gives them, joined. */
  description: string;
  /** A software or fallback adapter (e.g. Mesa's llvmpipe): works, but runs on the CPU. */
  software: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
}

const DAWN_BACKENDS = ['vulkan', 'metal', 'd3d12', 'opengles', 'd3d11'] as const;
const COMPAT_BACKENDS = new Set(['opengles', 'd3d11']);

type DawnModule = { create(options: string[]): GPU; globals: Record<string, unknown> };
interface GPU {
  requestAdapter(options?: Record<string, unknown>): Promise<GPUAdapter | null>;
}
interface GPUAdapter {
  readonly limits: Record<string, number>;
  readonly info?: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
  readonly isFallbackAdapter?: boolean;
}

/** The native backend Dawn uses when none is named. */
function nativeBackend(): string {
  if (process.platform === 'darwin') return 'metal';
  if (process.platform === 'win32') return 'd3d12';
  return 'vulkan';
}

let dawn: DawnModule | undefined;
/** Dawn instances by backend: an adapter must not outlive its instance, so they are kept. */
const instances = new Map<string, GPU>();
/** The adapter found first, by Dawn backend: every later request goes to the same backend. */
let chosen: { backend: string; report: WebGPUAdapterReport } | undefined;

function loadDawn(): DawnModule {
  if (dawn) return dawn;
  // The package's index.js is an ES module; its native module is plain CommonJS. Platform directories as
  // the package lays them out (macOS: one universal build).
  const root = path.dirname(require.resolve('webgpu/package.json'));
  const dir = process.platform === 'darwin' ? 'darwin-universal' : `${process.platform}-${process.arch}`;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  dawn = require(path.join(root, 'dist', dir, 'dawn.node')) as DawnModule;
  return dawn;
}

function instance(backend: string): GPU {
  let gpu = instances.get(backend);
  if (!gpu) {
    if (backend === 'opengles' && process.platform === 'linux') {
      // Headless: EGL on Mesa's (or NVIDIA's) surfaceless platform needs no display server.
      process.env.EGL_PLATFORM ??= 'surfaceless';
    }
    gpu = loadDawn().create([`backend=${backend}`]);
    instances.set(backend, gpu);
  }
  return gpu;
}

async function request(backend: string): Promise<GPUAdapter | null> {
  const featureLevel = COMPAT_BACKENDS.has(backend) ? 'compatibility' : 'core';
  try {
    return await instance(backend).requestAdapter({ featureLevel, powerPreference: 'high-performance' });
  } catch {
    return null;
  }
}

function describe(backend: string, adapter: GPUAdapter): WebGPUAdapterReport {
  const info = adapter.info ?? {};
  const description = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' / ') || 'unnamed adapter';
  return {
    backend,
    featureLevel: COMPAT_BACKENDS.has(backend) ? 'compatibility' : 'core',
    description,
    software:
      Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter) || /llvmpipe|swiftshader|lavapipe|softpipe|microsoft basic render/i.test(description),
    maxBufferSize: adapter.limits.maxBufferSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
  };
}

/**
 * Finds the adapter the webgpu backend would use (see the module comment for the order) and reports it;
 * `why` says what was missing when there is none. Loads dawn.node on first use.
 */
export async function findWebGPUAdapter(): Promise<{ report: WebGPUAdapterReport } | { why: string }> {
  if (chosen) return { report: chosen.report };
  try {
    loadDawn();
  } catch (e) {
    const code = (e as { code?: string }).code;
    return { why: code === 'MODULE_NOT_FOUND' ? 'the webgpu package (Dawn) is not installed' : `Dawn failed to load: ${(e as Error).message.split('\n')[0]}` };
  }
  const forced = process.env.PVC_WEBGPU_BACKEND;
  if (forced !== undefined && !(DAWN_BACKENDS as readonly string[]).includes(forced)) {
    return { why: `PVC_WEBGPU_BACKEND: unknown Dawn backend '${forced}'; expected one of ${DAWN_BACKENDS.join(', ')}` };
  }
  const order = forced ? [forced] : [nativeBackend(), 'opengles'];
  for (const backend of order) {
    const adapter = await request(backend);
    if (adapter) {
      const report = describe(backend, adapter);
      chosen = { backend, report };
      return { report };
    }
  }
  return { why: `Dawn found no adapter (tried ${order.join(', ')})` };
}

/** One line for logs: backend, feature level, device and the tensor limit. */
export function formatAdapter(r: WebGPUAdapterReport): string {
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
  return (
    `${r.backend} (${r.featureLevel}${r.software ? ', software: runs on the CPU' : ''}): ${r.description}; ` +
    `maxBufferSize ${mib(r.maxBufferSize)}, maxStorageBufferBindingSize ${mib(r.maxStorageBufferBindingSize)}`
  );
}

/** The largest tensor, in bytes, the adapter can bind. */
export function maxTensorBytes(r: WebGPUAdapterReport): number {
  return Math.min(r.maxBufferSize, r.maxStorageBufferBindingSize);
}

/**
 * Makes the `webgpu` tfjs backend available: finds the adapter, installs the navigator.gpu shim and loads
 * tfjs-backend-webgpu (which registers the backend). The caller then runs tf.setBackend('webgpu') and
 * `prepareWebGPUBackend()`.
 */
export async function registerWebGPU(): Promise<{ report: WebGPUAdapterReport } | { why: string }> {
  const found = await findWebGPUAdapter();
  if (!('report' in found)) return found;
  if (tf.findBackendFactory('webgpu') == null) {
    const { globals } = loadDawn();
    // The WebGPU constants (GPUBufferUsage, GPUMapMode, ...) the backend reads as globals.
    for (const [name, value] of Object.entries(globals)) {
      if (!(name in globalThis)) (globalThis as Record<string, unknown>)[name] = value;
    }
    const g = globalThis as { navigator?: Record<string, unknown> };
    // A fresh adapter for every request: an adapter gives out one device.
    const gpu = { requestAdapter: () => request(chosen!.backend) };
    if (g.navigator === undefined) g.navigator = {};
    Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      require('@tensorflow/tfjs-backend-webgpu');
    } catch (e) {
      const code = (e as { code?: string }).code;
      return {
        why:
          code === 'MODULE_NOT_FOUND'
            ? '@tensorflow/tfjs-backend-webgpu is not installed'
            : `@tensorflow/tfjs-backend-webgpu failed to load: ${(e as Error).message.split('\n')[0]}`,
      };
    }
    if (tf.findBackendFactory('webgpu') == null) return { why: '@tensorflow/tfjs-backend-webgpu loaded but registered no webgpu backend' };
    registerRankReducingTile();
    registerMaskSafeSoftmax();
  }
  return found;
}

/**
 * tfjs-backend-webgpu's Tile shader handles rank <= 4; above that it tiles on the CPU through a
 * synchronous read, which fails in Node once the data is on the GPU. A tile of rank >= 5 (the KV-group
 * mask repeat in InternLM2, PVC's frame repeat) is a tile of lower rank: a dimension repeated once
 * merges into the one before it (out[i, j] = x[i % s, j] is the same index arithmetic on the merged
 * axis). So the kernel is wrapped to reshape, tile at the reduced rank on the GPU, and reshape back.
 */
function registerRankReducingTile(): void {
  const tile = tf.getKernel('Tile', 'webgpu');
  const reshape = tf.getKernel('Reshape', 'webgpu');
  if (tile === undefined || reshape === undefined) return;
  tf.unregisterKernel('Tile', 'webgpu');
  tf.registerKernel({
    kernelName: 'Tile',
    backendName: 'webgpu',
    kernelFunc: (args) => {
      const x = (args.inputs as { x: tf.TensorInfo }).x;
      const reps = (args.attrs as unknown as { reps: number[] }).reps;
      const shape: number[] = [];
      const groupReps: number[] = [];
      x.shape.forEach((d, i) => {
        if (i === 0 || reps[i] !== 1) {
          shape.push(d);
          groupReps.push(reps[i]);
        } else {
          shape[shape.length - 1] *= d;
        }
      });
      if (x.shape.length < 5 || shape.length >= 5) return tile.kernelFunc(args);
      const backend = args.backend as unknown as { disposeData(id: object): void };
      const flat = reshape.kernelFunc({ inputs: { x }, backend: args.backend, attrs: { shape } }) as tf.TensorInfo;
      const tiled = tile.kernelFunc({ inputs: { x: flat }, backend: args.backend, attrs: { reps: groupReps } }) as tf.TensorInfo;
      const out = reshape.kernelFunc({ inputs: { x: tiled }, backend: args.backend, attrs: { shape: x.shape.map((d, i) => d * reps[i]) } });
      backend.disposeData(flat.dataId);
      backend.disposeData(tiled.dataId);
      return out;
    },
  });
}

/**
 * tfjs-backend-webgpu's softmax shader starts its row maximum at -3.402823e38, which is above float32's
 * lowest value -3.4028235e38 (PyTorch's finfo.min, the additive mask value InternLM2 uses as upstream
 * does). A row masked throughout (a left-padded batch's padding queries) then has every exp() underflow
 * to 0 and divides 0 by 0: NaN, which spreads to every row through the next layer's keys. Clamping the
 * logits at the shader's start value first changes nothing else (anything that low contributes
 * exp(-huge) = 0 beside any finite entry) and gives such a row PyTorch's result, uniform weights.
 */
function registerMaskSafeSoftmax(): void {
  const softmax = tf.getKernel('Softmax', 'webgpu');
  const maximum = tf.getKernel('Maximum', 'webgpu');
  if (softmax === undefined || maximum === undefined) return;
  const SHADER_ROW_MAX_START = -3.402823e38;
  tf.unregisterKernel('Softmax', 'webgpu');
  tf.registerKernel({
    kernelName: 'Softmax',
    backendName: 'webgpu',
    kernelFunc: (args) => {
      const backend = args.backend as unknown as {
        makeTensorInfo(shape: number[], dtype: string, values: Float32Array): tf.TensorInfo;
        disposeData(id: object): void;
      };
      const logits = (args.inputs as { logits: tf.TensorInfo }).logits;
      const floor = backend.makeTensorInfo([], 'float32', new Float32Array([SHADER_ROW_MAX_START]));
      const clamped = maximum.kernelFunc({ inputs: { a: logits, b: floor }, backend: args.backend, attrs: {} }) as tf.TensorInfo;
      const out = softmax.kernelFunc({ inputs: { logits: clamped }, backend: args.backend, attrs: args.attrs });
      backend.disposeData(floor.dataId);
      backend.disposeData(clamped.dataId);
      return out;
    },
  });
}

interface WebGPUBackendInternals {
  write(values: unknown, shape: number[], dtype: string): unknown;
  readSync(dataId: object): unknown;
  tensorMap: { get(dataId: object): { values: unknown; dtype: string } | undefined };
  bufferManager: { acquireBuffer(size: number, usage: number, ...rest: unknown[]): unknown };
  device: { addEventListener?(type: string, listener: (e: { error?: { message?: string } }) => void): void };
}

const guarded = new WeakSet<object>();

/**
 * Adapts the active webgpu backend to Node. It refuses tensors the adapter cannot bind: at creation
 * (tf.tensor, weight loading) with the shape, and at every buffer allocation (kernel outputs) with the
 * size. It reports WebGPU validation errors, which Dawn otherwise only logs, on stderr. And a synchronous
 * read of data that lives on the GPU (dataSync, arraySync) is a clear error: tfjs-backend-webgpu reads
 * synchronously through an OffscreenCanvas, which Node lacks, and Dawn's buffer mapping completes only
 * on the event loop; `await tensor.data()` works.
 */
export function prepareWebGPUBackend(report: WebGPUAdapterReport): void {
  const backend = tf.backend() as unknown as WebGPUBackendInternals;
  if (guarded.has(backend)) return;
  guarded.add(backend);
  const limit = maxTensorBytes(report);
  const adapter = `${report.backend} adapter "${report.description}"`;
  const advice = 'use a GPU whose WebGPU adapter allows larger buffers, or another backend (tensorflow)';
  const write = backend.write.bind(backend);
  backend.write = (values, shape, dtype) => {
    const bytes = shape.reduce((n, d) => n * d, 1) * (dtype === 'complex64' ? 8 : 4);
    if (bytes > limit) {
      throw new Error(
        `webgpu: a ${dtype} tensor of shape [${shape.join(', ')}] needs ${bytes} bytes, more than the ${limit} bytes ` +
          `one buffer can bind on the ${adapter} (maxStorageBufferBindingSize ${report.maxStorageBufferBindingSize}, maxBufferSize ${report.maxBufferSize}); ${advice}`,
      );
    }
    return write(values, shape, dtype);
  };
  const manager = backend.bufferManager;
  const acquire = manager.acquireBuffer.bind(manager);
  manager.acquireBuffer = (size, usage, ...rest) => {
    if (size > limit) {
      throw new Error(`webgpu: an operation needs a ${size} byte buffer, more than the ${limit} bytes one buffer can bind on the ${adapter}; ${advice}`);
    }
    return acquire(size, usage, ...rest);
  };
  const readSync = backend.readSync.bind(backend);
  backend.readSync = (dataId) => {
    const data = backend.tensorMap.get(dataId);
    if (
      data !== undefined &&
      data.values == null &&
      data.dtype !== 'string' &&
      typeof (globalThis as { OffscreenCanvas?: unknown }).OffscreenCanvas === 'undefined'
    ) {
      throw new Error('webgpu: dataSync() / arraySync() cannot read a tensor held on the GPU in Node; use await tensor.data() / tensor.array()');
    }
    return readSync(dataId);
  };
  backend.device.addEventListener?.('uncapturederror', (e) => {
    process.stderr.write(`[pvc-tfjs] webgpu error: ${e.error?.message ?? String(e)}\n`);
  });
}

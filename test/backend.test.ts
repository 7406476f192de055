import * as tf from '@tensorflow/tfjs';
import { initBackend, tensorflowUsesOneDNN } from '../src/backend';
import { findWebGPUAdapter, maxTensorBytes } from '../src/webgpu';
import { tensorflowInstalled } from './helpers';

describe('backend selection', () => {
  const saved = process.env.PVC_BACKEND;
  afterEach(() => {
    if (saved === undefined) delete process.env.PVC_BACKEND;
    else process.env.PVC_BACKEND = saved;
  });

  test('automatic choice takes the first working backend and says why, once', async () => {
    delete process.env.PVC_BACKEND;
    const lines: string[] = [];
    const info = await initBackend({ log: (l) => lines.push(l) });
    expect(tf.getBackend()).toBe(info.name);
    if (tensorflowInstalled()) {
      expect(info.name).toBe('tensorflow');
    } else {
      expect(info.name).toBe('wasm');
      expect(info.reason).toMatch(/tensorflow: @tensorflow\/tfjs-node-gpu is not installed; @tensorflow\/tfjs-node is not installed/);
    }
    expect(lines.length).toBeLessThanOrEqual(1);
    const again = await initBackend({ log: (l) => lines.push(l) });
    expect(again).toBe(info);
    expect(lines.length).toBeLessThanOrEqual(1);
  });

  test.each(['wasm', 'cpu'] as const)('%s computes a matmul', async (name) => {
    const info = await initBackend({ backend: name, log: null });
    expect(info.name).toBe(name);
    const y = tf.tidy(() =>
      tf.matMul(
        tf.tensor2d([
          [1, 2],
          [3, 4],
        ]),
        tf.tensor2d([[5], [6]]),
      ),
    );
    expect(Array.from(await y.data())).toEqual([17, 39]);
    y.dispose();
  });

  test('PVC_BACKEND is honoured and the option overrides it', async () => {
    process.env.PVC_BACKEND = 'cpu';
    expect((await initBackend({ log: null })).name).toBe('cpu');
    expect((await initBackend({ backend: 'wasm', log: null })).name).toBe('wasm');
  });

  test('bad names and unavailable backends are errors, not silent fallbacks', async () => {
    process.env.PVC_BACKEND = 'cuda';
    await expect(initBackend({ log: null })).rejects.toThrow("PVC_BACKEND: unknown backend 'cuda'; expected one of tensorflow, wasm, cpu, webgpu");
    delete process.env.PVC_BACKEND;
    await expect(initBackend({ backend: 'gpu' as never, log: null })).rejects.toThrow(/backend option: unknown backend 'gpu'/);
    if (!tensorflowInstalled()) {
      await expect(initBackend({ backend: 'tensorflow', log: null })).rejects.toThrow(
        /backend 'tensorflow' \(requested by the backend option\) is not available: @tensorflow\/tfjs-node-gpu is not installed/,
      );
    }
  });
});

describe('webgpu (Dawn)', () => {
  test('is never the automatic choice', async () => {
    const saved = process.env.PVC_BACKEND;
    delete process.env.PVC_BACKEND;
    try {
      expect((await initBackend({ log: null })).name).not.toBe('webgpu');
    } finally {
      if (saved !== undefined) process.env.PVC_BACKEND = saved;
    }
  });

  test('runs on the adapter it reports, or says why there is none', async () => {
    const found = await findWebGPUAdapter();
    if (!('report' in found)) {
      await expect(initBackend({ backend: 'webgpu', log: null })).rejects.toThrow(
        `backend 'webgpu' (requested by the backend option) is not available: ${found.why}`,
      );
      return;
    }
    const lines: string[] = [];
    await initBackend({ backend: 'cpu', log: null });
    const info = await initBackend({ backend: 'webgpu', log: (l) => lines.push(l) });
    expect(info.adapter).toEqual(found.report);
    expect(found.report.maxStorageBufferBindingSize).toBeGreaterThan(0);
    expect(lines).toEqual([expect.stringContaining(`backend: webgpu (${found.report.backend} (${found.report.featureLevel}`)]);
    const a = [
      [1, 2, 3],
      [4, 5, 6],
    ];
    const b = [[7], [8], [9]];
    const y = tf.matMul(tf.tensor2d(a), tf.tensor2d(b));
    expect(Array.from(await y.data())).toEqual([50, 122]);
    tf.dispose(y);
    // A synchronous read of GPU data is a clear error (Node has no OffscreenCanvas), not a ReferenceError.
    // (2048 elements: smaller tensors may be computed on the CPU, see WEBGPU_CPU_HANDOFF_SIZE_THRESHOLD.)
    const z = tf.tidy(() => tf.add(tf.ones([2048]), 1));
    expect(() => z.dataSync()).toThrow(/webgpu: dataSync\(\) \/ arraySync\(\) cannot read a tensor held on the GPU in Node; use await tensor.data\(\)/);
    z.dispose();
  });

  test('a tensor larger than the adapter can bind is refused, naming its shape and the limit', async () => {
    const found = await findWebGPUAdapter();
    if (!('report' in found)) return; // covered above: no adapter, no backend
    await initBackend({ backend: 'webgpu', log: null });
    const limit = maxTensorBytes(found.report);
    const rows = Math.floor(limit / 4 / 1024) + 1; // one row of 1024 float32 over the limit
    const before = tf.memory().numTensors;
    expect(() => tf.tensor2d(new Float32Array(rows * 1024), [rows, 1024])).toThrow(
      `webgpu: a float32 tensor of shape [${rows}, 1024] needs ${rows * 4096} bytes, more than the ${limit} bytes one buffer can bind`,
    );
    // Kernel outputs are checked too (no data is uploaded: fill's output is made on the GPU).
    expect(() => tf.fill([rows, 1024], 1).dataSync()).toThrow(/webgpu: (a float32 tensor of shape|an operation needs a)/);
    expect(tf.memory().numTensors).toBe(before);
    await initBackend({ backend: 'cpu', log: null });
  });

  test('a softmax row masked throughout (float32 lowest everywhere) is uniform, as in PyTorch, not NaN', async () => {
    const found = await findWebGPUAdapter();
    if (!('report' in found)) return;
    await initBackend({ backend: 'webgpu', log: null });
    const lowest = -3.4028234663852886e38; // torch.finfo(torch.float32).min, InternLM2's mask value
    const x = tf.tidy(() => tf.concat([tf.fill([1, 2048], lowest), tf.add(tf.fill([1, 2048], lowest), tf.linspace(-1, 1, 2048).reshape([1, 2048]))]));
    const p = tf.softmax(x, -1);
    const values = await p.data();
    expect(values.every((v) => Math.abs(v - 1 / 2048) < 1e-9)).toBe(true);
    tf.dispose([x, p]);
    await initBackend({ backend: 'cpu', log: null });
  });

  test('a rank-5 tile of GPU data runs (the shader handles rank 4; the CPU path would read synchronously)', async () => {
    const found = await findWebGPUAdapter();
    if (!('report' in found)) return;
    const make = () => tf.tidy(() => tf.tile(tf.add(tf.range(0, 2 * 3 * 4 * 100, 1, 'float32').reshape([2, 1, 3, 4, 100]), 0), [1, 3, 1, 1, 2]));
    await initBackend({ backend: 'cpu', log: null });
    const want = make();
    const expected = await want.data();
    want.dispose();
    await initBackend({ backend: 'webgpu', log: null });
    const got = make();
    expect(got.shape).toEqual([2, 3, 3, 4, 200]);
    expect(Array.from(await got.data())).toEqual(Array.from(expected));
    got.dispose();
    await initBackend({ backend: 'cpu', log: null });
  });

  test('PVC_WEBGPU_BACKEND names a Dawn backend or is an error', async () => {
    const saved = process.env.PVC_WEBGPU_BACKEND;
    process.env.PVC_WEBGPU_BACKEND = 'opengl';
    try {
      jest.isolateModules(() => {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const fresh = require('../src/webgpu') as typeof import('../src/webgpu');
        void expect(fresh.findWebGPUAdapter()).resolves.toEqual({
          why: expect.stringMatching(
            /PVC_WEBGPU_BACKEND: unknown Dawn backend 'opengl'; expected one of vulkan, metal, d3d12, opengles, d3d11|webgpu package \(Dawn\) is not installed/,
          ),
        });
      });
    } finally {
      if (saved === undefined) delete process.env.PVC_WEBGPU_BACKEND;
      else process.env.PVC_WEBGPU_BACKEND = saved;
    }
  });
});

test('the oneDNN switch is read as libtensorflow reads it (its own default: on for x86-64 Linux)', () => {
  const saved = process.env.TF_ENABLE_ONEDNN_OPTS;
  try {
    for (const [value, expected] of [
      ['0', false],
      ['false', false],
      ['FALSE', false],
      ['1', true],
      ['True', true],
    ] as const) {
      process.env.TF_ENABLE_ONEDNN_OPTS = value;
      expect(tensorflowUsesOneDNN()).toBe(expected);
    }
    delete process.env.TF_ENABLE_ONEDNN_OPTS;
    expect(tensorflowUsesOneDNN()).toBe(process.platform === 'linux' && process.arch === 'x64');
  } finally {
    if (saved === undefined) delete process.env.TF_ENABLE_ONEDNN_OPTS;
    else process.env.TF_ENABLE_ONEDNN_OPTS = saved;
  }
});

import * as tf from '@tensorflow/tfjs';
import { initBackend, tensorflowUsesOneDNN } from '../src/backend';

function hasTfjsNode(): boolean {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      require.resolve(pkg);
      return true;
    } catch {
      /* not installed */
    }
  }
  return false;
}

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
    if (hasTfjsNode()) {
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
    const y = tf.tidy(() => tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5], [6]])));
    expect(Array.from(await y.data())).toEqual([17, 39]);
    y.dispose();
  });

  test('PVC_BACKEND is honoured and the option overrides it', async () => {
    process.env.PVC_BACKEND = 'cpu';
    expect((await initBackend({ log: null })).name).toBe('cpu');
    expect((await initBackend({ backend: 'wasm', log: null })).name).toBe('wasm');
  });

  test('bad names and unavailable backends are errors, not silent fallbacks', async () => {
    process.env.PVC_BACKEND = 'webgpu';
    await expect(initBackend({ log: null })).rejects.toThrow("PVC_BACKEND: unknown backend 'webgpu'; expected one of tensorflow, wasm, cpu");
    delete process.env.PVC_BACKEND;
    await expect(initBackend({ backend: 'gpu' as never, log: null })).rejects.toThrow(/backend option: unknown backend 'gpu'/);
    if (!hasTfjsNode()) {
      await expect(initBackend({ backend: 'tensorflow', log: null })).rejects.toThrow(
        /backend 'tensorflow' \(requested by the backend option\) is not available: @tensorflow\/tfjs-node-gpu is not installed/);
    }
  });
});

test('the oneDNN switch is read as libtensorflow reads it (its own default: on for x86-64 Linux)', () => {
  const saved = process.env.TF_ENABLE_ONEDNN_OPTS;
  try {
    for (const [value, expected] of [['0', false], ['false', false], ['FALSE', false], ['1', true], ['True', true]] as const) {
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

// InternViT and the projector against the upstream model, layer by layer, on wasm and cpu.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { initBackend } from '../src/backend';
import { loadConfig, ModelConfig } from '../src/config';
import { SafetensorsFile } from '../src/io/safetensors';
import { Weights } from '../src/io/weights';
import { bicubicResizeGrid, InternVisionModel } from '../src/vision/intern_vit';
import { pixelShuffle, Projector } from '../src/vision/projector';
import { kernelsFor } from '../src/model/kernels';
import { convertFixture, expectParity, loadReference, PARITY_BACKENDS, PARITY_TOLERANCE, readAndDispose, relativeMaxError, tapRecorder } from './helpers';

const FIXTURES = ['tiny-internvl2', 'tiny-internvit-rms'];

describe.each(PARITY_BACKENDS)('on %s', (backend) => {
  describe.each(FIXTURES)('%s', (name) => {
    let dir: string;
    let config: ModelConfig;
    let weights: Weights;
    let vit: InternVisionModel;
    let projector: Projector;
    let ref: SafetensorsFile;

    beforeAll(async () => {
      await initBackend({ backend, log: null });
      dir = convertFixture(name);
      config = loadConfig(dir);
      weights = Weights.load(dir);
      vit = new InternVisionModel(weights, config, kernelsFor(backend));
      projector = new Projector(weights, config, kernelsFor(backend));
      ref = loadReference(name).tensors;
    });
    afterAll(() => {
      vit.dispose();
      weights.dispose();
      ref.close();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    });

    const refTensor = (n: string) => tf.tensor(ref.readFloat32(n), ref.info(n).shape);

    test('the state after every ViT layer and the projector output match the oracle', async () => {
      const recorder = tapRecorder();
      const before = tf.memory().numTensors;
      const pixels = refTensor('pixel_values') as tf.Tensor4D;
      const out = tf.tidy(() => {
        const h = vit.forward(pixels, { tap: recorder.tap });
        return projector.forward(h);
      });
      const captured = await recorder.values();
      captured.set('projector.out', await readAndDispose(out));
      pixels.dispose();
      expect(tf.memory().numTensors).toBe(before);

      const expected = ['vision.embeddings', ...Array.from({ length: config.vision.num_hidden_layers }, (_, i) => `vision.layers.${i}.out`), 'projector.out'];
      for (const n of expected) expectParity(captured.get(n)!, ref.readFloat32(n), `${backend} ${name} ${n}`);
    });

    test('a single call on N tiles equals N single-tile calls', async () => {
      const pixels = refTensor('pixel_values') as tf.Tensor4D;
      const N = pixels.shape[0];
      const whole = tf.tidy(() => projector.forward(vit.forward(pixels)));
      const single = tf.tidy(() =>
        tf.concat(Array.from({ length: N }, (_, i) => projector.forward(vit.forward(pixels.slice([i, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D)))),
      );
      expect(relativeMaxError(await whole.data(), await single.data())).toBeLessThan(1e-6);
      tf.dispose([pixels, whole, single]);
    });

    test('a wrongly shaped pixelValues is an error naming the shape', () => {
      const p = config.vision.patch_size;
      expect(() => tf.tidy(() => vit.forward(tf.zeros([1, 3, p + 1, p + 1]) as tf.Tensor4D))).toThrow(
        `pixelValues has shape [1,3,${p + 1},${p + 1}]; expected [N, 3, S, S] with S a multiple of ${p}`,
      );
    });

    test("an input smaller than the checkpoint's grid resizes the position embedding as upstream (bicubic)", async () => {
      const pixels = refTensor('resized.pixel_values') as tf.Tensor4D;
      const recorder = tapRecorder();
      const last = await readAndDispose(tf.tidy(() => vit.forward(pixels, { tap: (n, v) => n === 'vision.embeddings' && recorder.tap(n, v) })));
      const embeddings = (await recorder.values()).get('vision.embeddings');
      pixels.dispose();
      expect(relativeMaxError(embeddings!, ref.readFloat32('resized.vision.embeddings'))).toBeLessThanOrEqual(PARITY_TOLERANCE);
      expect(relativeMaxError(last, ref.readFloat32('resized.vision.out'))).toBeLessThanOrEqual(PARITY_TOLERANCE);
    });
  });
});

describe('building blocks', () => {
  beforeAll(() => initBackend({ backend: 'cpu', log: null }));

  test('pixel shuffle v2 concatenates TL, TR, BL, BR; v1 transposes the output grid', () => {
    // A 4x4 grid of 1-channel cells holding their own index r*4+c.
    const grid = tf.range(0, 16).reshape([1, 4, 4, 1]) as tf.Tensor4D;
    expect(Array.from(pixelShuffle(grid, 0.5, 'v2').dataSync())).toEqual([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
    expect(Array.from(pixelShuffle(grid, 0.5, 'v1').dataSync())).toEqual([0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15]);
    // r = 0.25 on a 4x4 grid: one token of all 16 cells in row-major order.
    expect(Array.from(pixelShuffle(grid, 0.25, 'v2').dataSync())).toEqual(Array.from({ length: 16 }, (_, i) => i));
    expect(() => pixelShuffle(tf.zeros([1, 6, 6, 1]) as tf.Tensor4D, 0.25, 'v2')).toThrow(/a 6x6 grid does not divide by 1\/downsample_ratio = 4/);
  });

  test('bicubic resize is the identity at the native size', () => {
    const g = 5;
    const grid = Float32Array.from({ length: g * g * 2 }, (_, i) => Math.sin(i));
    expect(Array.from(bicubicResizeGrid(grid, g, 2, g, g)).map((x) => +x.toFixed(6))).toEqual(Array.from(grid).map((x) => +x.toFixed(6)));
  });
});

// Layer inspection: tapped values against the oracle, glob patterns, generation steps, helpers.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { imageAttentionMap, renderHeatmap } from '../src/inspect/heatmap';
import { logitLens } from '../src/inspect/lens';
import { expandTaps, globToRegExp } from '../src/inspect/taps';
import { generateForRows } from '../src/chat/chat';
import { PVCModel } from '../src/pvc_model';
import { loadImage } from '../src/preprocess/image';
import { SafetensorsFile } from '../src/io/safetensors';
import { convertFixture, FIXTURES, loadReference, PARITY_TOLERANCE, ReferenceDoc, relativeMaxError } from './helpers';

describe('tiny-internvl2', () => {
  let dir: string;
  let model: PVCModel;
  let ref: SafetensorsFile;
  let doc: ReferenceDoc;
  let imageA: tf.Tensor4D;

  beforeAll(async () => {
    dir = convertFixture('tiny-internvl2');
    model = await PVCModel.load(dir, { backend: 'wasm' });
    ({ doc, tensors: ref } = loadReference('tiny-internvl2'));
    imageA = tf.tidy(() =>
      tf
        .tensor4d(ref.readFloat32('pixel_values'), ref.info('pixel_values').shape as [number, number, number, number])
        .slice([0, 0, 0, 0], [doc.pixel_values.image_a_tiles, -1, -1, -1]),
    );
  });
  afterAll(() => {
    imageA.dispose();
    model.dispose();
    ref.close();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  test("tapped states and attention probabilities equal the oracle's, and disposing returns every tensor", async () => {
    const before = tf.memory().numTensors;
    const single = doc.chat!.find((c) => c.name === 'single-image')!;
    const r = await model.inspect({
      pixelValues: imageA,
      question: single.question,
      taps: ['vision.layers.*.attn.probs', 'vision.layers.*.out', 'projector.out', 'llm.layers.*.attn.probs', 'llm.layers.*.out'],
    });
    expect(r.inputIds).toEqual(single.input_ids);
    const tiles = doc.pixel_values.image_a_tiles;
    const firstTiles = (name: string) => {
      const shape = ref.info(name).shape;
      const per = shape.slice(1).reduce((a, b) => a * b, 1);
      return ref.readFloat32(name).subarray(0, tiles * per);
    };
    for (const [name, t] of Object.entries(r.taps)) {
      const expected = name.startsWith('vision.') || name === 'projector.out' ? firstTiles(name) : ref.readFloat32(name);
      expect({ name, ok: relativeMaxError(t.dataSync(), expected) <= PARITY_TOLERANCE }).toEqual({ name, ok: true });
    }
    const V = model.config.vision.num_hidden_layers;
    const Ll = model.config.llm.num_hidden_layers;
    expect(Object.keys(r.taps).sort()).toEqual(
      [
        ...Array.from({ length: Ll }, (_, i) => [`llm.layers.${i}.attn.probs`, `llm.layers.${i}.out`]).flat(),
        'projector.out',
        ...Array.from({ length: V }, (_, i) => [`vision.layers.${i}.attn.probs`, `vision.layers.${i}.out`]).flat(),
      ].sort(),
    );
    expect(r.taps['llm.layers.0.attn.probs'].shape).toEqual([1, model.config.llm.num_attention_heads, single.input_ids.length, single.input_ids.length]);
    r.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  test('generation steps are captured per step', async () => {
    const before = tf.memory().numTensors;
    const r = await model.inspect({
      pixelValues: imageA,
      question: 'What is in the image?',
      taps: ['llm.layers.0.attn.probs', 'llm.logits'],
      generate: { maxNewTokens: 4 },
    });
    expect(r.outputIds).toHaveLength(4);
    expect(r.steps).toHaveLength(3); // the passes that read tokens 0..2 (the 4th token ends generation)
    const L = r.inputIds.length;
    r.steps.forEach((s, k) => {
      expect(s['llm.layers.0.attn.probs'].shape).toEqual([1, model.config.llm.num_attention_heads, 1, L + k + 1]);
      // each pass's logits chose the next generated token (greedy)
      const logits = s['llm.logits'].dataSync();
      expect(logits.indexOf(Math.max(...logits))).toBe(r.outputIds[k + 1]);
    });
    const prompt = r.taps['llm.logits'].dataSync();
    expect(prompt.indexOf(Math.max(...prompt))).toBe(r.outputIds[0]);
    r.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  test('plain arrays on request', async () => {
    const before = tf.memory().numTensors;
    const r = await model.inspect({ inputIds: [1, 5, 6, 7], taps: ['llm.norm'], asArrays: true });
    expect(r.taps['llm.norm'].shape).toEqual([1, 1, model.config.llm.hidden_size]);
    expect(r.taps['llm.norm'].data).toBeInstanceOf(Float32Array);
    expect(tf.memory().numTensors).toBe(before);
  });

  test("logit lens: the last layer through the final norm and head is the model's prediction", async () => {
    const r = await model.inspect({ inputIds: doc.chat!.find((c) => c.name === 'text-only')!.input_ids, taps: ['llm.layers.*.out', 'llm.logits'] });
    const states = new Map(
      Object.entries(r.taps)
        .filter(([n]) => n.endsWith('.out'))
        .map(([n, t]) => [Number(n.split('.')[2]), t]),
    );
    const lens = logitLens(model.llm, model.tokenizer, states, 3);
    expect(lens.map((l) => l.layer)).toEqual([0, 1]);
    const logits = r.taps['llm.logits'].dataSync();
    expect(lens[lens.length - 1].top[0].id).toBe(logits.indexOf(Math.max(...logits)));
    expect(lens[0].top).toHaveLength(3);
    r.dispose();
  });

  test("attention over the image renders as a heatmap of the image's size", async () => {
    const file = path.join(FIXTURES, 'images', 'odd-1000x747-max6.jpg');
    const img = await loadImage(file, { inputSize: model.config.image_size, maxNum: 12 });
    const r = await model.inspect({
      pixelValues: img.pixelValues,
      question: 'What is in the image?',
      taps: ['llm.layers.*.attn.probs'],
      generate: { maxNewTokens: 3 },
    });
    const probs = r.steps.flatMap((s) => Object.values(s));
    const map = imageAttentionMap(probs, r.imageTokenPositions, { grid: img.grid, tokensPerFrame: model.numImageToken, framesPerTile: 1 });
    expect(map.width).toBe(img.grid[0] * Math.sqrt(model.numImageToken));
    expect(map.map.some((v) => v > 0)).toBe(true);
    const png = await renderHeatmap(file, map);
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-heat-')), 'heatmap.png');
    fs.writeFileSync(out, png);
    const meta = await sharp(out).metadata();
    expect([meta.width, meta.height, meta.format]).toEqual([img.width, img.height, 'png']);
    r.dispose();
    img.pixelValues.dispose();
  });
});

test("tiny-pvc: temporal attention probabilities equal the spec implementation's", async () => {
  const dir = convertFixture('tiny-pvc');
  const model = await PVCModel.load(dir, { backend: 'wasm' });
  const { tensors: ref } = loadReference('tiny-pvc');
  const image = tf.tensor4d(ref.readFloat32('image_a'), ref.info('image_a').shape as [number, number, number, number]);
  const r = await model.inspect({ pixelValues: image, question: 'What is in the image?', dataFlag: 1, taps: ['vision.layers.*.temporal.probs'] });
  expect(Object.keys(r.taps).sort()).toEqual(['vision.layers.1.temporal.probs', 'vision.layers.2.temporal.probs']);
  for (const [name, t] of Object.entries(r.taps)) {
    expect(t.shape).toEqual(ref.info(`single.${name}`).shape);
    expect(relativeMaxError(t.dataSync(), ref.readFloat32(`single.${name}`))).toBeLessThanOrEqual(PARITY_TOLERANCE);
  }
  r.dispose();
  image.dispose();
  ref.close();
  model.dispose();
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
});

describe('tap names and globs', () => {
  const names = ['vision.embeddings', ...[0, 1, 2, 3].map((i) => `vision.layers.${i}.out`), 'llm.layers.0.attn.probs', 'llm.layers.1.attn.probs', 'llm.logits'];

  test('* is one segment, {a..b} a range, {x,y} alternatives', () => {
    expect([...expandTaps(['vision.layers.{1..2}.out'], names)]).toEqual(['vision.layers.1.out', 'vision.layers.2.out']);
    expect([...expandTaps(['llm.layers.*.attn.probs'], names)]).toEqual(['llm.layers.0.attn.probs', 'llm.layers.1.attn.probs']);
    expect([...expandTaps(['vision.layers.{0,3}.out', 'llm.logits'], names)]).toEqual(['vision.layers.0.out', 'vision.layers.3.out', 'llm.logits']);
    expect(globToRegExp('vision.*').test('vision.layers.0.out')).toBe(false); // * does not cross dots
  });

  test('a name that matches nothing is an error listing close matches', () => {
    expect(() => expandTaps(['vision.layer.1.out'], names)).toThrow(
      /tap 'vision\.layer\.1\.out' matches no tap of this model; close matches: vision\.layers\.1\.out/,
    );
    expect(() => expandTaps(['llm.layers.{5..7}.out'], names)).toThrow(/matches no tap/);
  });
});

describe.each(['tiny-internvl2', 'tiny-pvc'])('%s: the tap names the modules list are exactly the ones that fire', (name) => {
  test('a chat with pixels and two generated tokens fires every listed tap and no other', async () => {
    const dir = convertFixture(name);
    const model = await PVCModel.load(dir, { backend: 'wasm' });
    const tokenizer = model.tokenizer;
    const pixels = tf.randomUniform([2, 3, model.config.image_size, model.config.image_size], -1, 1, 'float32', 3) as tf.Tensor4D;
    const fired = new Set<string>();
    const before = tf.memory().numTensors;
    const turn = model.prepareChat(pixels, 'What is in the image?', { dataFlag: 1, generation: model.generationConfig({ maxNewTokens: 2 }) });
    const rows = { rows: [turn.inputIds], pixelValues: pixels, samples: turn.samples };
    for await (const step of generateForRows(model, tokenizer, rows, turn.generation, { tap: (n) => fired.add(n) })) void step;
    expect(tf.memory().numTensors).toBe(before);
    const listed = model.tapNames();
    expect(new Set(listed).size).toBe(listed.length);
    expect([...fired].sort()).toEqual([...listed].sort());
    if (name === 'tiny-pvc') expect(listed).toEqual(expect.arrayContaining(['vision.layers.1.temporal.probs', 'vision.layers.2.temporal.out']));
    pixels.dispose();
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });
});

// PVC (spec v0) against its PyTorch implementation on upstream's InternViT classes
// (test/reference/pvc_spec.py), and the properties that hold whatever the spec's guesses.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { initBackend } from '../src/backend';
import { loadConfig, ModelConfig } from '../src/config';
import { SafetensorsFile } from '../src/io/safetensors';
import { Weights } from '../src/io/weights';
import { kernelsFor } from '../src/model/kernels';
import { DataFlag } from '../src/model/samples';
import { VisionLanguageModel } from '../src/model/vlm';
import { PVCModel } from '../src/pvc_model';
import { PVCTokenizer } from '../src/tokenizer';
import { InternVisionModel } from '../src/vision/intern_vit';
import { FrameCache } from '../src/vision/temporal';
import { ChatRecord, convertFixture, expectParity, loadReference, PARITY_BACKENDS, PARITY_TOLERANCE, relativeMaxError, tapRecorder } from './helpers';

type PVCChat = ChatRecord & { data_flag: DataFlag };

describe.each(PARITY_BACKENDS)('tiny-pvc on %s', (backend) => {
  let dir: string;
  let model: PVCModel;
  let tokenizer: PVCTokenizer;
  let ref: SafetensorsFile;
  let chats: PVCChat[];
  const tensor = (n: string) => tf.tensor4d(ref.readFloat32(n), ref.info(n).shape as [number, number, number, number]);

  beforeAll(async () => {
    dir = convertFixture('tiny-pvc');
    model = await PVCModel.load(dir, { backend });
    tokenizer = PVCTokenizer.load(dir);
    const r = loadReference('tiny-pvc');
    ref = r.tensors;
    chats = (r.doc as unknown as { chat: PVCChat[] }).chat;
  });
  afterAll(() => {
    model.dispose();
    ref.close();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  test.each([
    ['single', 'image_a', 1, [3]],
    ['video', 'clip', 3, [1, 1, 1, 1, 1, 1]],
  ] as const)("%s: every frame's ViT state per layer, the projector output, embeddings and logits match", async (prefix, input, dataFlag, numPatchesList) => {
    const pixels = tensor(input);
    const recorder = tapRecorder();
    const visual = model.visualTokens(pixels, [{ dataFlag, firstTile: 0, tilesPerImage: [...numPatchesList] }], recorder.tap);
    visual.dispose();
    const captured = await recorder.values();
    const names = ['vision.embeddings', 'vision.layers.0.out', 'vision.layers.1.out', 'vision.layers.2.out', 'projector.out'];
    for (const n of names) expectParity(captured.get(n)!, ref.readFloat32(`${prefix}.${n}`), `${backend} ${prefix} ${n}`);

    const chat = chats.find((c) => c.name === (prefix === 'single' ? 'single-image' : 'video'))!;
    const prepared = model.prepareChat(pixels, chat.question, { dataFlag, numPatchesList: [...numPatchesList] });
    const embedsRef = ref.readFloat32(`${prefix}.llm.inputs_embeds`);
    const cache = model.llm.newCache(1);
    const vis = model.visualTokens(pixels, prepared.samples);
    // Merge as chat() does and compare the embeddings the LLM receives, then its logits.
    const imgContext = tokenizer.tokenToId('<IMG_CONTEXT>')!;
    const text = model.llm.embedTokens([prepared.inputIds]);
    const D = text.shape[2];
    const rows = (await text.data()).slice() as Float32Array;
    const visData = (await vis.data()) as Float32Array;
    let k = 0;
    prepared.inputIds.forEach((id, pos) => {
      if (id === imgContext) rows.set(visData.subarray(k * D, ++k * D), pos * D);
    });
    expect(k * D).toBe(visData.length);
    expect(relativeMaxError(rows, embedsRef)).toBeLessThanOrEqual(PARITY_TOLERANCE);
    const embeds = tf.tensor3d(rows, text.shape);
    const logits = model.llm.forward(embeds, cache);
    expect(relativeMaxError(await logits.data(), ref.readFloat32(`${prefix}.llm.logits`))).toBeLessThanOrEqual(PARITY_TOLERANCE);
    tf.dispose([pixels, vis, text, embeds, logits]);
    cache.dispose();
  });

  // The cpu backend runs a subset.
  test.each(backend === 'wasm' ? ['single-image', 'multi-image', 'video'] : ['single-image', 'video'])(
    "%s: greedy chat is the spec implementation's, token for token",
    async (name) => {
      const c = chats.find((x) => x.name === name)!;
      const pixels =
        name === 'video' ? tensor('clip') : name === 'multi-image' ? (tf.concat([tensor('image_a'), tensor('image_b')]) as tf.Tensor4D) : tensor('image_a');
      const out = await model.chatIds(
        pixels,
        c.question,
        { max_new_tokens: 16, do_sample: false },
        { dataFlag: c.data_flag, numPatchesList: c.num_patches_list! },
      );
      expect(out.prompt).toBe(c.prompt);
      expect(out.inputIds).toEqual(c.input_ids);
      expect(out.outputIds).toEqual(c.output_ids.slice(1));
      expect(
        await model.chat(pixels, c.question, { max_new_tokens: 16, do_sample: false }, { dataFlag: c.data_flag, numPatchesList: c.num_patches_list! }),
      ).toBe(c.answer);
      pixels.dispose();
    },
  );

  test('IMG_CONTEXT counts: num_image_token x tiles x image_repeat_time for images, x video_repeat_time for video', () => {
    const pvc = model.config.pvc!;
    expect(model.tokensPerTile(1)).toBe(model.numImageToken * pvc.image_repeat_time);
    expect(model.tokensPerTile(undefined)).toBe(model.numImageToken * pvc.image_repeat_time);
    expect(model.tokensPerTile(3)).toBe(model.numImageToken * pvc.video_repeat_time);
  });
});

describe("PVC properties (independent of the spec's guesses)", () => {
  let dir: string;
  let config: ModelConfig;
  let weights: Weights;
  let model: VisionLanguageModel;
  let clip: tf.Tensor4D;
  const kernels = kernelsFor('wasm');

  beforeAll(async () => {
    await initBackend({ backend: 'wasm', log: null });
    dir = convertFixture('tiny-pvc');
    config = loadConfig(dir);
    weights = Weights.load(dir);
    model = new VisionLanguageModel(dir, config, weights, kernels);
    const ref = loadReference('tiny-pvc').tensors;
    clip = tf.tensor4d(ref.readFloat32('clip'), ref.info('clip').shape as [number, number, number, number]);
    ref.close();
  });
  afterAll(() => {
    tf.dispose(clip);
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  /** The ViT's output for the clip as one sequence of frames. */
  const encodeClip = (vit: InternVisionModel, frames: tf.Tensor4D) =>
    tf.tidy(() => {
      const cache = new FrameCache();
      const out = vit.forward(frames, { sequences: 1, cache });
      cache.dispose();
      return out;
    });

  test("with every new parameter zero, each frame's output is plain InternViT on that frame", () => {
    const isPVC = (n: string) => /\.adaln\.|\.temporal\.|time_embedder/.test(n);
    const zeroed = new Map<string, tf.Tensor>();
    const plainWeights = new Map<string, tf.Tensor>();
    for (const n of weights.names) {
      const t = weights.get(n);
      const isNew = /\.adaln\.(weight|bias)$|\.temporal\.(proj\.(weight|bias)|ls)$/.test(n);
      zeroed.set(n, isNew ? tf.zerosLike(t) : t.clone());
      if (!isPVC(n)) plainWeights.set(n, t.clone());
    }
    expect([...zeroed.keys()].filter((n) => /adaln|temporal\.(proj|ls)/.test(n)).length).toBeGreaterThan(0);
    const w0 = Weights.fromTensors(dir, zeroed);
    const wPlain = Weights.fromTensors(dir, plainWeights);
    const vit0 = new InternVisionModel(w0, config, kernels);
    const plainVit = new InternVisionModel(wPlain, { ...config, pvc: null }, kernels);
    expect(plainVit.timeEmbedder).toBeNull();
    expect(plainVit.layers.every((l) => l.adaln === null && l.temporal === null)).toBe(true);
    const pvcOut = encodeClip(vit0, clip);
    const plain = tf.tidy(() => plainVit.forward(clip));
    expect(relativeMaxError(pvcOut.dataSync(), plain.dataSync())).toBeLessThan(1e-6);
    // ...and with the trained (random) parameters it is not: the test can tell the difference.
    const real = encodeClip(model.vision, clip);
    expect(relativeMaxError(real.dataSync(), plain.dataSync())).toBeGreaterThan(1e-2);
    tf.dispose([pvcOut, plain, real]);
    w0.dispose();
    wPlain.dispose();
  });

  test("causality: frame t's output does not change when frames after t change", () => {
    const T = clip.shape[0];
    const t = 2;
    const altered = tf.tidy(
      () =>
        tf.concat([
          clip.slice([0, 0, 0, 0], [t + 1, -1, -1, -1]),
          tf.randomNormal([T - t - 1, clip.shape[1], clip.shape[2], clip.shape[3]], 0, 1, 'float32', 7),
        ]) as tf.Tensor4D,
    );
    const a = encodeClip(model.vision, clip);
    const b = encodeClip(model.vision, altered);
    const frame = (x: tf.Tensor, i: number) => x.slice([i, 0, 0], [1, -1, -1]).dataSync();
    for (let i = 0; i <= t; i++) expect(relativeMaxError(frame(b, i), frame(a, i))).toBe(0);
    expect(relativeMaxError(frame(b, t + 1), frame(a, t + 1))).toBeGreaterThan(1e-3);
    tf.dispose([altered, a, b]);
  });

  test('frame-by-frame encoding with the frame cache equals encoding the clip at once', () => {
    const before = tf.memory().numTensors;
    const whole = model.visualTokens(clip, [{ dataFlag: 3, firstTile: 0, tilesPerImage: new Array(clip.shape[0]).fill(1) }]);
    const encoder = model.videoEncoder();
    const frames = (start: number, n: number) => tf.tidy(() => encoder.encode(clip.slice([start, 0, 0, 0], [n, -1, -1, -1]) as tf.Tensor4D));
    const pieces = [frames(0, 1), frames(1, 3)]; // one frame, then a chunk of three
    for (let i = 4; i < clip.shape[0]; i++) pieces.push(frames(i, 1));
    expect(encoder.framesSeen).toBe(clip.shape[0]);
    const streamed = tf.tidy(() => tf.concat(pieces.map((p) => p.reshape([-1, p.shape[2]]))));
    expect(relativeMaxError(streamed.dataSync(), whole.dataSync())).toBeLessThan(1e-5);
    encoder.dispose();
    tf.dispose([whole, streamed, ...pieces]);
    expect(tf.memory().numTensors).toBe(before);
  });

  test("a video in passes runs layer by layer: the frame cache's tokens, bit for bit, holding one temporal layer's keys and values at a time", () => {
    const before = tf.memory().numTensors;
    const T = clip.shape[0];
    const saved = model.limits.framesPerPass;
    model.limits.framesPerPass = 2;
    // How many temporal layers hold cached keys and values whenever one is read.
    const layerOf = FrameCache.prototype.layer;
    let held = 0;
    const spy = jest.spyOn(FrameCache.prototype, 'layer').mockImplementation(function (this: FrameCache, layer: number) {
      held = Math.max(held, [...this.blocks].filter(([l, b]) => l !== layer && b.length > 0).length + 1);
      return layerOf.call(this, layer);
    });
    const layerMajor = model.visualTokens(clip, [{ dataFlag: 3, firstTile: 0, tilesPerImage: new Array(T).fill(1) }]);
    const heldLayerMajor = held;
    held = 0;
    model.limits.framesPerPass = saved;
    // The same chunks of 2 frames, each through every layer before the next (the streaming encoder's order).
    const encoder = model.videoEncoder();
    const pieces = Array.from({ length: Math.ceil(T / 2) }, (_, i) =>
      tf.tidy(() => encoder.encode(clip.slice([2 * i, 0, 0, 0], [Math.min(2, T - 2 * i), -1, -1, -1]) as tf.Tensor4D)),
    );
    const frameMajor = tf.tidy(() => tf.concat(pieces.map((p) => p.reshape([-1, p.shape[2]]))));
    spy.mockRestore();
    expect(relativeMaxError(layerMajor.dataSync(), frameMajor.dataSync())).toBe(0);
    expect(config.pvc!.temporal_layers.length).toBeGreaterThan(1);
    expect(heldLayerMajor).toBe(1);
    expect(held).toBe(config.pvc!.temporal_layers.length); // the streaming encoder keeps every temporal layer's
    encoder.dispose();
    tf.dispose([layerMajor, frameMajor, ...pieces]);
    expect(tf.memory().numTensors).toBe(before);
  });

  test("extractFeature is chat's path: each tile as an image of image_repeat_time frames through the temporal layers", () => {
    const image = clip.slice([0, 0, 0, 0], [2, -1, -1, -1]) as tf.Tensor4D;
    const features = model.extractFeature(image);
    expect(features.shape).toEqual([2, model.tokensPerTile(1), config.llm.hidden_size]);
    const asChat = model.visualTokens(image, [{ dataFlag: 1, firstTile: 0, tilesPerImage: [2] }]);
    expect(relativeMaxError(features.dataSync(), asChat.dataSync())).toBe(0);
    // The old extractFeature ran InternViT alone: num_image_token tokens per tile, no AdaLN, no temporal layers.
    expect(model.tokensPerTile(1)).toBe(model.numImageToken * config.pvc!.image_repeat_time);
    tf.dispose([image, features, asChat]);
  });
});

// The runtime in a Node app: generation gives the event loop its turns, an AbortSignal ends it within one
// decode step, long prompts and videos run in bounded passes with the same results, context limits.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { visionLayersRun } from '../src/config';
import { InputError } from '../src/errors';
import { AbortError, runSync } from '../src/event_loop';
import { defaultFramesPerPass } from '../src/model/vlm';
import { PVCModel } from '../src/pvc_model';
import { normalizeHFConfig } from '../converter/hf_config';
import { syntheticConfig, syntheticPVCLayers } from './bench/synthetic-checkpoint';
import { ChatRecord, convertFixture, convertWithPositions, expectParity, loadReference, PARITY_BACKENDS, ReferenceDoc, referenceTensor4d } from './helpers';

const removeConverted = (dir: string) => fs.rmSync(path.dirname(dir), { recursive: true, force: true });

describe.each(PARITY_BACKENDS)('on %s', (backend) => {
  let dir: string;
  let model: PVCModel;
  let image: tf.Tensor4D;

  beforeAll(async () => {
    // maxNewTokens 1e9 needs a context that large (else it is refused before any compute, tested below).
    dir = convertWithPositions('tiny-internvl2', 1e9);
    model = await PVCModel.load(dir, { backend });
    const { doc, tensors } = loadReference('tiny-internvl2');
    image = tf.tidy(() =>
      tf
        .tensor4d(tensors.readFloat32('pixel_values'), tensors.info('pixel_values').shape as [number, number, number, number])
        .slice([0, 0, 0, 0], [doc.pixel_values.image_a_tiles, -1, -1, -1]),
    );
    tensors.close();
    await model.chat(image, 'Warm up.', { maxNewTokens: 2 }); // first-use costs out of the way
  });
  afterAll(() => {
    image.dispose();
    model.dispose();
    removeConverted(dir);
  });

  // min_new_tokens keeps <|im_end|> away: without the abort this chat would not end.
  const endless = { maxNewTokens: 1e9, minNewTokens: 1e9 };

  test('AbortSignal.timeout ends an endless chat within one decode step, with an AbortError and no leaked tensors', async () => {
    const before = tf.memory().numTensors;
    // Long enough for the prompt to be done on every backend (the cpu backend is plain JavaScript).
    const signal = AbortSignal.timeout(backend === 'cpu' ? 6000 : 1500);
    let tokens = 0;
    let tokensAtAbort = -1;
    signal.addEventListener('abort', () => (tokensAtAbort = tokens));
    const error = await model.chat(image, 'Describe the image.', endless, { signal, onToken: () => tokens++ }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortError);
    expect((error as AbortError).name).toBe('AbortError');
    expect(((error as AbortError).cause as Error).name).toBe('TimeoutError');
    expect(tokensAtAbort).toBeGreaterThan(0); // the timer fired while tokens were being generated
    expect(tokens - tokensAtAbort).toBeLessThanOrEqual(1);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('an abort during the prompt (vision and prefill) also ends it, freeing everything', async () => {
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    setImmediate(() => controller.abort());
    await expect(model.chat(image, 'Describe the image.', endless, { signal: controller.signal })).rejects.toBeInstanceOf(AbortError);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('stream() stops when its consumer breaks out of the loop, freeing everything', async () => {
    const before = tf.memory().numTensors;
    let pieces = 0;
    for await (const piece of model.stream(image, 'Describe the image.', endless)) {
      expect(typeof piece).toBe('string');
      if (++pieces === 5) break;
    }
    expect(pieces).toBe(5);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('tiny-internvl2 on wasm', () => {
  let dir: string;
  let model: PVCModel;
  let doc: ReferenceDoc;
  let pixels: tf.Tensor4D;

  beforeAll(async () => {
    dir = convertFixture('tiny-internvl2');
    model = await PVCModel.load(dir, { backend: 'wasm' });
    const ref = loadReference('tiny-internvl2');
    doc = ref.doc;
    pixels = referenceTensor4d(ref.tensors, 'pixel_values');
    ref.tensors.close();
  });
  afterAll(() => {
    pixels.dispose();
    model.dispose();
    removeConverted(dir);
  });

  test('the event loop gets a turn between every two decode steps and between the layers of the prompt', async () => {
    const question = 'Image-1: <image>\nImage-2: <image>\nDescribe both.';
    const options = { numPatchesList: [3, 1], dataFlag: 2 as const };
    // A callback that re-queues itself with setImmediate runs once per turn of the event loop: counting
    // its runs counts the turns the chat gave away (how long each pause was is the bench's business).
    let turns = 0;
    let ticking = true;
    const tick = () => {
      turns++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const seen: number[] = [];
    try {
      await model.chat(pixels, question, { maxNewTokens: 50, minNewTokens: 50 }, { ...options, onToken: () => seen.push(turns) });
    } finally {
      ticking = false;
    }
    expect(seen).toHaveLength(50);
    const stalls = seen.slice(1).filter((t, i) => t <= seen[i]);
    expect(stalls).toEqual([]); // no two tokens were made in one turn
    // Before the first token: the vision layers for both images and the LLM layers of the prefill each gave one.
    expect(seen[0]).toBeGreaterThanOrEqual(visionLayersRun(model.config) + model.config.llm.num_hidden_layers);
  });

  test('limits.maxContext, when set, refuses a request beyond it before any compute, naming both numbers', async () => {
    const before = tf.memory().numTensors;
    const c = doc.chat!.find((x) => x.name === 'text-only')!;
    model.limits.maxContext = 64;
    try {
      const refused = model.chat(null, c.question, { maxNewTokens: 1e9 });
      await expect(refused).rejects.toThrow(
        `the prompt's ${c.input_ids.length} tokens plus maxNewTokens 1000000000 (${c.input_ids.length + 1e9}) exceed limits.maxContext 64`,
      );
      await expect(model.chat(null, c.question, { maxNewTokens: 1e9 })).rejects.toBeInstanceOf(InputError);
    } finally {
      delete model.limits.maxContext;
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test("in small passes (prefill chunks of 5 positions, 1 frame per vision pass) chat and batchChat still give upstream's tokens", async () => {
    model.limits = { prefillChunk: 5, framesPerPass: 1 };
    try {
      for (const name of ['single-image', 'multi-image']) {
        const c = doc.chat!.find((x) => x.name === name) as ChatRecord;
        const input = name === 'multi-image' ? pixels : (pixels.slice([0, 0, 0, 0], [doc.pixel_values.image_a_tiles, -1, -1, -1]) as tf.Tensor4D);
        const out = await model.chatIds(input, c.question, { max_new_tokens: 16 }, { numPatchesList: c.num_patches_list ?? undefined });
        expect({ name, ids: out.outputIds }).toEqual({ name, ids: c.output_ids.slice(1) });
        if (input !== pixels) input.dispose();
      }
      const b = doc.batch_chat!;
      expect(await model.batchChat(pixels, b.questions, { max_new_tokens: 16 }, { numPatchesList: b.num_patches_list })).toEqual(b.answers);
    } finally {
      model.limits = { prefillChunk: 512, framesPerPass: 8 };
    }
  });

  test('prefill in chunks gives the logits of one pass (<= 1e-4 x max|ref|)', async () => {
    const tokenizer = model.tokenizer;
    const ids = tokenizer.encode('The quick brown fox jumps over the lazy dog. '.repeat(40));
    const embeds = model.llm.embedTokens([ids]);
    const wholeCache = model.llm.newCache(1);
    const whole = model.llm.forward(embeds, wholeCache, { lastOnly: true });
    const cache = model.llm.newCache(1);
    const chunked = runSync(model.llm.prefillSteps(embeds, cache, { chunkSize: 37 }));
    expectParity(chunked.dataSync(), whole.dataSync(), 'prefill in chunks of 37 vs one pass');
    [cache, wholeCache].forEach((c) => c.dispose());
    tf.dispose([embeds, whole, chunked]);
  });
});

test('an 8k-token prompt on the tiny model completes on wasm (context raised to 8192 positions)', async () => {
  const dir = convertWithPositions('tiny-internvl2', 8192);
  const model = await PVCModel.load(dir, { backend: 'wasm' });
  const question = 'The quick brown fox jumps over the lazy dog. '.repeat(310); // 27 tokens each in the tiny vocabulary
  const prompt = model.prepareChat(null, question);
  expect(prompt.inputIds.length).toBeGreaterThan(8000);
  const before = tf.memory().numTensors;
  const out = await model.chatIds(null, question, { maxNewTokens: 2, minNewTokens: 2 });
  expect(out.outputIds).toHaveLength(2);
  expect(tf.memory().numTensors).toBe(before);
  model.dispose();
  removeConverted(dir);
});

describe('tiny-pvc in small vision passes', () => {
  test.each([1, 2, 3])("framesPerPass %i: the image and video chats are the spec implementation's, token for token", async (framesPerPass) => {
    const dir = convertFixture('tiny-pvc');
    const model = await PVCModel.load(dir, { backend: 'wasm', limits: { framesPerPass } });
    const { doc, tensors } = loadReference('tiny-pvc');
    const chats = (doc as unknown as { chat: (ChatRecord & { data_flag: 1 | 2 | 3 })[] }).chat;
    const tensor = (n: string) => referenceTensor4d(tensors, n);
    for (const [name, input] of [
      ['single-image', 'image_a'],
      ['video', 'clip'],
    ] as const) {
      const c = chats.find((x) => x.name === name)!;
      const pixelValues = tensor(input);
      const out = await model.chatIds(pixelValues, c.question, { max_new_tokens: 16 }, { dataFlag: c.data_flag, numPatchesList: c.num_patches_list! });
      expect({ name, ids: out.outputIds }).toEqual({ name, ids: c.output_ids.slice(1) });
      pixelValues.dispose();
    }
    tensors.close();
    model.dispose();
    removeConverted(dir);
  });
});

test('frames per vision pass by default: 8 for small towers, 2 for InternViT-300M at 448 px (67 MB of scores a frame)', () => {
  const hf = syntheticConfig(1, true);
  expect(defaultFramesPerPass(normalizeHFConfig(hf, 'synthetic', syntheticPVCLayers(hf)))).toBe(2);
  const tiny = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'checkpoints', 'tiny-pvc', 'config.json'), 'utf8'));
  expect(defaultFramesPerPass(normalizeHFConfig(tiny, 'tiny-pvc', { adaln_layers: [], temporal_layers: [] }))).toBe(8);
});

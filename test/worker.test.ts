// WorkerModel: the model in a worker thread with the same async API; the main thread's event loop is free.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { initBackend } from '../src/backend';
import { AbortError } from '../src/event_loop';
import { WorkerModel } from '../src/runtime/worker';
import { convertWithPositions, loadReference, PARITY_BACKENDS, ReferenceDoc, referenceTensor4d } from './helpers';

let dir: string;
let doc: ReferenceDoc;
let pixels: tf.Tensor4D;

beforeAll(async () => {
  await initBackend({ backend: 'wasm', log: null }); // the main thread's own tensors (pixels)
  // Room for an endless chat (maxNewTokens 1e9 is refused before any compute on the tiny context).
  dir = convertWithPositions('tiny-internvl2', 1e9);
  const ref = loadReference('tiny-internvl2');
  doc = ref.doc;
  pixels = referenceTensor4d(ref.tensors, 'pixel_values');
  ref.tensors.close();
});
afterAll(() => {
  pixels.dispose();
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
});

// Every backend of the parity suites runs inside a worker thread (tfjs-node's binding included).
describe.each(PARITY_BACKENDS)('in a worker on %s', (backend) => {
  let model: WorkerModel;
  beforeAll(async () => {
    model = await WorkerModel.load(dir, { backend });
  });
  afterAll(() => model.dispose());

  test("chat and batchChat give upstream's tokens and answers", async () => {
    expect(model.backend).toBe(backend);
    const c = doc.chat!.find((x) => x.name === 'multi-image')!;
    const out = await model.chatIds(pixels, c.question, { max_new_tokens: 16 }, { numPatchesList: c.num_patches_list! });
    expect(out.outputIds).toEqual(c.output_ids.slice(1));
    const b = doc.batch_chat!;
    expect(await model.batchChat(pixels, b.questions, { max_new_tokens: 16 }, { numPatchesList: b.num_patches_list })).toEqual(b.answers);
  });

  test('an AbortSignal ends an endless chat with an AbortError; breaking out of stream() stops it; the worker goes on', async () => {
    const endless = { maxNewTokens: 1e9, minNewTokens: 1e9 };
    let tokens = 0;
    let tokensAtAbort = -1;
    const signal = AbortSignal.timeout(backend === 'cpu' ? 6000 : 1500);
    signal.addEventListener('abort', () => (tokensAtAbort = tokens));
    await expect(model.chat(null, 'Go on.', endless, { signal, onToken: () => tokens++ })).rejects.toBeInstanceOf(AbortError);
    expect(tokensAtAbort).toBeGreaterThan(0);
    // Tokens already in flight from the worker when the abort was posted: a step or two.
    expect(tokens - tokensAtAbort).toBeLessThanOrEqual(2);
    let pieces = 0;
    for await (const piece of model.stream(null, 'Go on.', endless)) {
      expect(typeof piece).toBe('string');
      if (++pieces === 3) break;
    }
    expect(pieces).toBe(3);
    const c = doc.chat!.find((x) => x.name === 'text-only')!;
    expect(await model.chat(null, c.question, { max_new_tokens: 16 })).toBe(c.answer);
  });
});

// How free the main thread stays (its event-loop delay against the same chat in the main thread) is
// measured by \`npm run runtime-bench\`; here: the chat's compute runs in the worker, none of it on this thread.
test('with the model in a worker, no kernel of a chat runs on the main thread', async () => {
  const model = await WorkerModel.load(dir, { backend: 'wasm' });
  let tokens = 0;
  try {
    const profile = await tf.profile(async () => {
      await model.chat(
        pixels,
        'Image-1: <image>\nImage-2: <image>\nDescribe both.',
        { maxNewTokens: 48, minNewTokens: 48 },
        { numPatchesList: [3, 1], dataFlag: 2, onToken: () => tokens++ },
      );
    });
    expect(tokens).toBe(48);
    expect(profile.kernelNames).toEqual([]);
  } finally {
    await model.dispose();
  }
});

test('inspect in a worker returns the taps as arrays', async () => {
  const model = await WorkerModel.load(dir, { backend: 'wasm' });
  const tile = pixels.slice([0, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
  try {
    const r = await model.inspect({ pixelValues: tile, question: 'What is it?', taps: ['llm.logits', 'projector.out'] });
    expect(r.taps['llm.logits'].shape).toEqual([1, 1, doc.vocab_size]);
    // Structured clone gives a Float32Array of this realm, not of Jest's sandbox: compare by tag.
    expect(Object.prototype.toString.call(r.taps['llm.logits'].data)).toBe('[object Float32Array]');
    expect(r.taps['llm.logits'].data.length).toBe(doc.vocab_size);
    expect(r.taps['projector.out'].shape[0]).toBe(1);
  } finally {
    tile.dispose();
    await model.dispose();
  }
});

test('a model that cannot load rejects load() with the reason', async () => {
  await expect(WorkerModel.load(path.join(dir, 'nope'))).rejects.toThrow(/nope\/config\.json is missing/);
});

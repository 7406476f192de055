// Stop strings (OpenAI's `stop`) in greedy, sampled and beam generation, on tiny-internvl2. The
// expected greedy answers come from upstream's chat() fixture (no stop) cut by hand; the sampled and
// beam ones from the same request without stop strings.
import * as tf from '@tensorflow/tfjs';
import { AbortError } from '../src/event_loop';
import * as fs from 'fs';
import * as path from 'path';
import { PVCModel } from '../src/pvc_model';
import { cutAtStop, decodeAnswer, PVCTokenizer, pythonStrip } from '../src/tokenizer';
import { convertFixture, loadReference, ReferenceDoc } from './helpers';

describe('stop strings on wasm', () => {
  let dir: string;
  let model: PVCModel;
  let tokenizer: PVCTokenizer;
  let doc: ReferenceDoc;
  let imageA: tf.Tensor4D;
  const text = (ids: number[]) => tokenizer.decode(ids, { skipSpecialTokens: true });

  beforeAll(async () => {
    dir = convertFixture('tiny-internvl2');
    model = await PVCModel.load(dir, { backend: 'wasm' });
    tokenizer = PVCTokenizer.load(dir);
    const ref = loadReference('tiny-internvl2');
    doc = ref.doc;
    const shape = ref.tensors.info('pixel_values').shape as [number, number, number, number];
    const size = shape[1] * shape[2] * shape[3];
    imageA = tf.tensor4d(ref.tensors.readFloat32('pixel_values').subarray(0, 3 * size), [3, shape[1], shape[2], shape[3]]);
    ref.tensors.close();
  });
  afterAll(() => {
    imageA.dispose();
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  /** The number of ids whose text first contains `stop`. */
  const firstReaching = (ids: number[], stop: string) => ids.findIndex((_, n) => text(ids.slice(0, n + 1)).includes(stop)) + 1;

  test('greedy: a stop string spanning several tokens ends generation and is cut from the answer', async () => {
    const c = doc.chat!.find((x) => x.name === 'single-image')!;
    const upstreamIds = c.output_ids.slice(1);
    const stop = '上is m';
    const n = firstReaching(upstreamIds, stop);
    expect(n).toBeGreaterThan(2);
    // It spans tokens: the text before the last of them already ends with a part of it.
    const before = text(upstreamIds.slice(0, n - 1));
    expect([...Array(stop.length - 1).keys()].some((k) => before.endsWith(stop.slice(0, k + 1)))).toBe(true);
    const gen = { max_new_tokens: 16, do_sample: false, stop: ['never there', stop] };
    const out = await model.chatIds(imageA, c.question, gen);
    expect(out.outputIds).toEqual(upstreamIds.slice(0, n));
    const answer = await model.chat(imageA, c.question, gen);
    expect(answer).toBe(c.answer.slice(0, c.answer.indexOf(stop)));
    const pieces: string[] = [];
    for await (const piece of model.stream(imageA, c.question, gen)) pieces.push(piece);
    expect(pieces.join('')).toBe(answer);
  });

  test('the earliest of several stop strings wins, and a stop string never met changes nothing', async () => {
    const c = doc.chat!.find((x) => x.name === 'single-image')!;
    const greedy = { max_new_tokens: 16, do_sample: false };
    expect(await model.chat(imageA, c.question, { ...greedy, stop: 'never there' })).toBe(c.answer);
    const answer = await model.chat(imageA, c.question, { ...greedy, stop: ['street', '四开'] });
    expect(answer).toBe(c.answer.slice(0, c.answer.indexOf('四开')));
  });

  test('sampling: the same seed without the stop string, cut', async () => {
    const gen = { maxNewTokens: 24, doSample: true, temperature: 1.3, topK: 0, seed: 7 };
    const free = await model.chatIds(imageA, 'Describe the image.', gen);
    const full = text(free.outputIds);
    const stop = full.slice(6, 9);
    const n = firstReaching(free.outputIds, stop);
    const out = await model.chatIds(imageA, 'Describe the image.', { ...gen, stop });
    expect(out.outputIds).toEqual(free.outputIds.slice(0, n));
    expect(await model.chat(imageA, 'Describe the image.', { ...gen, stop })).toBe(pythonStrip(cutAtStop(full, [stop])));
    const pieces: string[] = [];
    for await (const piece of model.stream(imageA, 'Describe the image.', { ...gen, stop })) pieces.push(piece);
    expect(pieces.join('')).toBe(pythonStrip(cutAtStop(full, [stop])));
  });

  test('beam search: a beam whose text reaches a stop string ends like one reaching eos', async () => {
    const gen = { max_new_tokens: 10, num_beams: 3 };
    const free = await model.chatIds(imageA, 'Describe the image.', gen);
    expect(free.outputIds).toHaveLength(10); // no beam ends by itself (random weights)
    const stop = text(free.outputIds.slice(2, 4));
    const before = tf.memory().numTensors;
    const out = await model.chatIds(imageA, 'Describe the image.', { ...gen, stop });
    expect(tf.memory().numTensors).toBe(before);
    // Every returned hypothesis ends with the token that completed a stop string (no eos after it).
    const ids = out.outputIds.filter((id) => id !== tokenizer.padTokenId);
    expect(ids.length).toBeLessThan(10);
    expect(text(ids)).toContain(stop);
    expect(text(ids.slice(0, -1))).not.toContain(stop);
    const answer = await model.chat(imageA, 'Describe the image.', { ...gen, stop });
    expect(answer).toBe(decodeAnswer(tokenizer, ids, '<|im_end|>', [stop]));
    expect(answer).not.toContain(stop);
    const pieces: string[] = [];
    for await (const piece of model.stream(imageA, 'Describe the image.', { ...gen, stop })) pieces.push(piece);
    expect(pieces.join('')).toBe(answer);
  });

  test('beam search stops on an abort signal and frees what it made', async () => {
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    let steps = 0;
    const onToken = () => steps++;
    const timer = setTimeout(() => controller.abort(new Error('stop now')), 50);
    // Within the tiny model's context (4096 positions), far more steps than 50 ms allow.
    const error = await model
      .chat(imageA, 'Describe the image.', { max_new_tokens: 3000, num_beams: 3 }, { signal: controller.signal, onToken })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortError);
    expect(((error as AbortError).cause as Error).message).toBe('stop now');
    clearTimeout(timer);
    expect(steps).toBe(0); // beams hand out tokens only at the end
    expect(tf.memory().numTensors).toBe(before);
  });

  test('batchChat: each row stops on its own', async () => {
    const b = doc.batch_chat!;
    const ref = loadReference('tiny-internvl2');
    const pixels = tf.tensor4d(ref.tensors.readFloat32('pixel_values'), ref.tensors.info('pixel_values').shape as [number, number, number, number]);
    ref.tensors.close();
    const stop = b.answers[0].slice(3, 6);
    const answers = await model.batchChat(pixels, b.questions, { max_new_tokens: 16, do_sample: false, stop }, { numPatchesList: b.num_patches_list });
    pixels.dispose();
    expect(answers).toEqual(b.answers.map((a) => pythonStrip(cutAtStop(a, [stop]))));
  });
});

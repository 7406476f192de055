// model.chat / stream / batchChat against upstream's chat() and batch_chat() on tiny-internvl2.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { contextLength } from '../src/config';
import { PVCModel } from '../src/pvc_model';
import { decodeAnswer, PVCTokenizer, StreamDecoder } from '../src/tokenizer';
import { ChatRecord, convertFixture, convertWithPositions, FIXTURES, loadReference, PARITY_BACKENDS, ReferenceDoc } from './helpers';

const GREEDY = { max_new_tokens: 16, do_sample: false };

describe.each(PARITY_BACKENDS)('on %s', (backend) => {
  let dir: string;
  let model: PVCModel;
  let doc: ReferenceDoc;
  let pixels: tf.Tensor4D;
  let imageA: tf.Tensor4D;

  beforeAll(async () => {
    dir = convertFixture('tiny-internvl2');
    model = await PVCModel.load(dir, { backend });
    const ref = loadReference('tiny-internvl2');
    doc = ref.doc;
    pixels = tf.tensor4d(ref.tensors.readFloat32('pixel_values'), ref.tensors.info('pixel_values').shape as [number, number, number, number]);
    imageA = pixels.slice([0, 0, 0, 0], [doc.pixel_values.image_a_tiles, -1, -1, -1]) as tf.Tensor4D;
    ref.tensors.close();
  });
  afterAll(() => {
    tf.dispose([pixels, imageA]);
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  const inputsOf = (c: ChatRecord) => ({
    pixelValues: c.name === 'text-only' ? null : c.name === 'multi-image' ? pixels : imageA,
    options: { numPatchesList: c.num_patches_list ?? undefined, history: c.history_in ?? undefined },
  });
  // The cpu backend runs one conversation of each kind that matters; wasm runs them all.
  const names = backend === 'wasm' ? ['single-image', 'multi-image', 'text-only', 'history-turn-1', 'history-turn-2'] : ['single-image', 'history-turn-2'];

  test.each(names)("%s: prompt, ids, generated tokens and answer are upstream's", async (name) => {
    const c = doc.chat!.find((x) => x.name === name)!;
    const { pixelValues, options } = inputsOf(c);
    const out = await model.chatIds(pixelValues, c.question, GREEDY, options);
    expect(out.prompt).toBe(c.prompt);
    expect(out.inputIds).toEqual(c.input_ids);
    expect(out.outputIds).toEqual(c.output_ids.slice(1)); // upstream's output starts with the <s> generate() seeds
    const result = await model.chat(pixelValues, c.question, GREEDY, { ...options, returnHistory: true });
    expect(result.response).toBe(c.answer);
    if (c.history_out) expect(result.history).toEqual(c.history_out);
  });

  test("past max_position_embeddings x the rope_scaling factor, chat() answers as upstream's (dynamic NTK, nothing refused)", async () => {
    const long = doc.long_context!;
    const longDir = convertWithPositions('tiny-internvl2', long.max_position_embeddings);
    try {
      for (const c of long.chat) {
        // A fresh model per call, as the oracle's: the rotary embedding's NTK state grows with what it has seen.
        const fresh = await PVCModel.load(longDir, { backend });
        try {
          expect(c.input_ids.length).toBeGreaterThan(contextLength(fresh.config.llm));
          const { pixelValues, options } = inputsOf(c);
          const out = await fresh.chatIds(pixelValues, c.question, GREEDY, options);
          expect(out.inputIds).toEqual(c.input_ids);
          expect({ name: c.name, ids: out.outputIds }).toEqual({ name: c.name, ids: c.output_ids.slice(1) });
          expect(decodeAnswer(fresh.tokenizer, out.outputIds)).toBe(c.answer);
        } finally {
          fresh.dispose();
        }
      }
    } finally {
      fs.rmSync(path.dirname(longDir), { recursive: true, force: true });
    }
  });

  test("batchChat equals upstream's batch_chat", async () => {
    const b = doc.batch_chat!;
    const answers = await model.batchChat(pixels, b.questions, GREEDY, { numPatchesList: b.num_patches_list });
    expect(answers).toEqual(b.answers);
  });

  test("stream() pieces concatenate to chat()'s answer", async () => {
    for (const seed of backend === 'wasm' ? [1, 2, 3] : [1]) {
      const gen = { maxNewTokens: 24, doSample: true, temperature: 1.3, topK: 0, seed };
      const expected = await model.chat(imageA, 'Describe the image.', gen);
      const pieces: string[] = [];
      for await (const piece of model.stream(imageA, 'Describe the image.', gen)) pieces.push(piece);
      expect(pieces.join('')).toBe(expected);
      expect(pieces.length).toBeGreaterThan(1);
    }
  });

  test('10 chats in a row leave tf.memory().numTensors unchanged', async () => {
    await model.chat(imageA, 'Warm up.', { maxNewTokens: 2 });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 10; i++) await model.chat(i % 2 ? imageA : null, `Question ${i}?`, { maxNewTokens: 3 });
    expect(tf.memory().numTensors).toBe(before);
  });

  if (backend === 'wasm') {
    test('bad input gives a clear error', async () => {
      await expect(model.chat(imageA, '<image>\nand <image>\ntwo images?', GREEDY)).rejects.toThrow(
        'the prompt has 2 <image> placeholder(s) but numPatchesList has 1 entry ([3])',
      );
      await expect(model.chat(imageA, 'x', GREEDY, { numPatchesList: [2] })).rejects.toThrow('numPatchesList [2] sums to 2, but pixelValues has 3 tiles');
      const wrong = tf.zeros([1, 3, 10, 10]) as tf.Tensor4D;
      await expect(model.chat(wrong, 'x', GREEDY)).rejects.toThrow(/pixelValues has shape \[1,3,10,10\]; expected \[tiles, 3, \d+, \d+\]/);
      wrong.dispose();
      await expect(model.chat(imageA, 'x', GREEDY, { dataFlag: 4 as never })).rejects.toThrow(
        'dataFlag 4: expected 1 (single image), 2 (multi-image) or 3 (video)',
      );
      await expect(model.chat(imageA, 'x', { max_tokens: 5 })).rejects.toThrow(/unknown generation option 'max_tokens'/);
      await expect(PVCModel.load(path.join(FIXTURES, 'checkpoints', 'tiny-internvl2'))).rejects.toThrow(
        /not a converted pvc-tfjs model .*convert the HuggingFace checkpoint with pvc-convert first/,
      );
      await expect(PVCModel.load(path.join(FIXTURES, 'nope'))).rejects.toThrow(/nope\/config\.json is missing: .*nope is not a converted model/);
    });
  }
});

describe('streaming decode', () => {
  let dir: string;
  let tokenizer: PVCTokenizer;
  beforeAll(async () => {
    dir = convertFixture('tiny-internvl2');
    tokenizer = PVCTokenizer.load(dir);
  });
  afterAll(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

  const corpus = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'reference', 'tokenizer-corpus.json'), 'utf8')) as {
    encode: { text: string; ids: number[] }[];
  };

  const streamed = (ids: number[]) => {
    const d = new StreamDecoder(tokenizer);
    const pieces = ids.map((id) => d.push(id));
    pieces.push(d.finish());
    return pieces;
  };

  test('multi-byte characters split over byte-fallback tokens are never emitted half-done', () => {
    const emoji = corpus.encode.find((r) => r.text.startsWith('emoji 😀🐼🎉'))!;
    const byteTokens = emoji.ids.filter((id) => /^<0x[0-9A-F]{2}>$/.test(tokenizer.idToToken(id)!));
    expect(byteTokens.length).toBeGreaterThan(8); // the emoji really are split into byte pieces
    const pieces = streamed(emoji.ids.slice(1));
    expect(pieces.join('')).toBe(decodeAnswer(tokenizer, emoji.ids));
    expect(pieces.some((p) => p.includes('\uFFFD'))).toBe(false);
    expect(pieces.filter((p) => p.includes('🐼'))).toHaveLength(1);
  });

  test('every corpus string streams to its decoded answer (clean-up and strip included)', () => {
    for (const r of corpus.encode) expect(streamed(r.ids).join('')).toBe(decodeAnswer(tokenizer, r.ids));
  });
});

// Continuous batching (src/generation/batch.ts) and what `pvc serve` builds on it: every row of a mixed
// batch equals the same turn run alone (model.chat from a freshly loaded model's rotary state); rows
// that are aborted or whose client leaves go without disturbing the others; tensors come back. Then the
// vision-feature cache (a second turn with the same image runs no vision layer), GET /metrics (parsed
// by a Prometheus text parser, its counters equal to what was sent), and the fields the evaluation
// harnesses send (max_dynamic_patch, <image> placeholders in the text, an assistant prefill, images as
// one video's frames).
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as http from 'http';
import OpenAI from 'openai';
import * as path from 'path';
import type { ChatOptions } from '../src/chat/chat';
import { withImagePlaceholders } from '../src/chat/prompt';
import { AbortError } from '../src/event_loop';
import { loadImage } from '../src/preprocess/image';
import { loadVideo } from '../src/preprocess/video';
import { PVCModel } from '../src/pvc_model';
import { FeatureCache } from '../src/server/features';
import { ChatServer } from '../src/server/server';
import { convertFixture, MEDIA } from './helpers';

// No types ship with it: the one function used.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const parsePrometheus = require('parse-prometheus-text-format') as (text: string) => {
  name: string;
  type: string;
  metrics: { value?: string; count?: string; labels?: Record<string, string>; buckets?: Record<string, string> }[];
}[];

type Part = OpenAI.Chat.Completions.ChatCompletionContentPart;
type Message = OpenAI.Chat.Completions.ChatCompletionMessageParam;
const dataUrl = (file: string, type: string) => `data:${type};base64,${fs.readFileSync(file).toString('base64')}`;
const imagePart = (file: string, extra: Record<string, unknown> = {}) =>
  ({ type: 'image_url', image_url: { url: dataUrl(file, 'image/jpeg'), ...extra } }) as unknown as Part;
const videoPart = (file: string, numFrames: number) =>
  ({ type: 'video_url', video_url: { url: dataUrl(file, 'video/mp4'), num_frames: numFrames } }) as unknown as Part;
const textPart = (text: string): Part => ({ type: 'text', text });
const removeConverted = (dir: string) => fs.rmSync(path.dirname(dir), { recursive: true, force: true });
const SCENES = path.join(__dirname, 'fixtures', 'scenes-eval');

let dir: string;
let model: PVCModel;
let baseline: number;

beforeAll(async () => {
  dir = convertFixture('tiny-internvl2');
  model = await PVCModel.load(dir);
  await model.chat(null, 'Warm up.', { maxNewTokens: 2 });
  baseline = tf.memory().numTensors;
});

afterAll(() => {
  model?.dispose();
  if (dir) removeConverted(dir);
});

/** model.chat alone, from the rotary state of a freshly loaded model (what every batch row gets). */
function alone(pixelValues: tf.Tensor4D | null, question: string, generation: Record<string, unknown>, options: ChatOptions = {}): Promise<string> {
  return model.chat(pixelValues, question, generation, { ...options, resetRotary: true });
}

describe('ContinuousBatcher', () => {
  test('turns decoded together equal each turn alone: greedy, sampling with a seed, a stop string, an image, one joining late, one aborted midway', async () => {
    const image = await loadImage(MEDIA.image1, { inputSize: model.config.image_size, maxNum: 2 });
    const turns: [tf.Tensor4D | null, string, Record<string, unknown>][] = [
      [null, 'Hello there, who are you?', { maxNewTokens: 30 }],
      [image.pixelValues, '<image>\nDescribe the image.', { maxNewTokens: 24 }],
      [null, 'Tell me a long story about a cat that went to the moon.', { maxNewTokens: 40, doSample: true, temperature: 0.9, seed: 7 }],
      [null, 'One.', { maxNewTokens: 5 }],
      [image.pixelValues, '<image>\nWhat colour?', { maxNewTokens: 30, stop: ['e'] }],
    ];
    const expected = [];
    for (const [p, q, g] of turns) expected.push(await alone(p, q, g));
    const before = tf.memory().numTensors;
    const batcher = model.createBatcher();
    let most = 0;
    const sizes = setInterval(() => (most = Math.max(most, batcher.size.decoding)), 1);
    const controller = new AbortController();
    let aborted = 0;
    try {
      const run = (i: number) => model.chat(turns[i][0], turns[i][1], turns[i][2], { batcher });
      const first = turns.slice(0, 4).map((_, i) => run(i));
      // Aborted after its third token, while the others go on.
      const leaving = model
        .chat(
          null,
          'Count from one to one hundred.',
          { maxNewTokens: 60 },
          { batcher, signal: controller.signal, onToken: () => ++aborted === 3 && controller.abort() },
        )
        .catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 50));
      const late = run(4); // joins the running batch
      expect(await Promise.all([...first, late])).toEqual(expected);
      expect(await leaving).toBeInstanceOf(AbortError);
    } finally {
      clearInterval(sizes);
      image.pixelValues.dispose();
    }
    expect(aborted).toBe(3);
    expect(most).toBeGreaterThan(1);
    expect(batcher.size).toEqual({ decoding: 0, prefilling: 0 });
    expect(tf.memory().numTensors).toBe(before - 1); // the image's pixel values, disposed above
  });

  test('beam search is refused by the batch itself; chat() with a batcher runs it on its own', async () => {
    const batcher = model.createBatcher();
    const beams = { maxNewTokens: 8, numBeams: 2 };
    expect(await model.chat(null, 'Hi', beams, { batcher })).toBe(await alone(null, 'Hi', beams));
    const embeds = tf.zeros([1, 2, model.config.llm.hidden_size]) as tf.Tensor3D;
    const steps = batcher.generate({ embeds, seenIds: [1] }, model.generationConfig(beams));
    await expect(steps.next()).rejects.toThrow(/beam search runs on its own/);
    embeds.dispose();
  });
});

describe('pvc serve with continuous batching', () => {
  let server: ChatServer;
  let client: OpenAI;
  const cached = () => server.features.size; // one kept tensor per cached media part

  beforeAll(async () => {
    server = await ChatServer.start({ model, modelName: 'tiny', port: 0, limits: { maxBatch: 8, maxQueue: 8 } });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
  });
  afterAll(async () => {
    await server?.close();
  });
  afterEach(() => expect(tf.memory().numTensors - cached()).toBe(baseline));

  test('a mixed batch (lengths, images, a video, stop strings, sampling, one aborted, one client gone): every answer equals model.chat', async () => {
    const S = model.config.image_size;
    const image = await loadImage(MEDIA.image1, { inputSize: S, maxNum: model.config.max_dynamic_patch });
    const two = [await loadImage(MEDIA.image1, { inputSize: S, maxNum: 2 }), await loadImage(MEDIA.image2, { inputSize: S, maxNum: 2 })];
    const twoPixels = tf.concat(two.map((i) => i.pixelValues)) as tf.Tensor4D;
    const video = await loadVideo(MEDIA.video, { numSegments: 4, maxNum: 1, inputSize: S });
    const cases: { messages: Message[]; extra?: Record<string, unknown>; expected: string }[] = [];
    try {
      const add = async (messages: Message[], expected: Promise<string>, extra?: Record<string, unknown>) =>
        cases.push({ messages, extra, expected: await expected });
      await add([{ role: 'user', content: 'Hello there, who are you?' }], alone(null, 'Hello there, who are you?', { maxNewTokens: 32 }), { max_tokens: 32 });
      await add([{ role: 'user', content: 'Hi' }], alone(null, 'Hi', { maxNewTokens: 3 }), { max_tokens: 3 });
      await add(
        [{ role: 'user', content: [imagePart(MEDIA.image1), textPart('What is in the image?')] }],
        alone(image.pixelValues, '<image>\nWhat is in the image?', { maxNewTokens: 20 }),
        { max_tokens: 20 },
      );
      await add(
        [{ role: 'user', content: [imagePart(MEDIA.image1, { max_num: 2 }), imagePart(MEDIA.image2, { max_num: 2 }), textPart('Compare them.')] }],
        alone(twoPixels, withImagePlaceholders('Compare them.', 2, 'images'), { maxNewTokens: 20 }, { numPatchesList: two.map((i) => i.numPatches) }),
        { max_tokens: 20 },
      );
      await add(
        [{ role: 'user', content: [videoPart(MEDIA.video, 4), textPart('What happens?')] }],
        alone(video.pixelValues, withImagePlaceholders('What happens?', 4, 'video'), { maxNewTokens: 20 }, { numPatchesList: video.numPatchesList }),
        { max_tokens: 20 },
      );
      await add([{ role: 'user', content: 'Say something.' }], alone(null, 'Say something.', { maxNewTokens: 24, stop: ['e', 'a'] }), {
        max_tokens: 24,
        stop: ['e', 'a'],
      });
      await add(
        [{ role: 'user', content: 'Tell me a story.' }],
        alone(null, 'Tell me a story.', { maxNewTokens: 24, doSample: true, temperature: 0.8, topP: 0.9, seed: 11 }),
        { max_tokens: 24, temperature: 0.8, top_p: 0.9, seed: 11 },
      );
    } finally {
      [image.pixelValues, twoPixels, video.pixelValues].forEach((t) => t.dispose());
      two.forEach((i) => i.pixelValues.dispose());
    }
    let most = 0;
    const sizes = setInterval(() => (most = Math.max(most, server.batching.decoding)), 1);
    try {
      const answers = cases.map(({ messages, extra }) => client.chat.completions.create({ model: 'tiny', messages, ...extra }));
      // Streamed, aborted by its client after two chunks.
      const controller = new AbortController();
      const aborted = (async () => {
        const stream = await client.chat.completions.create(
          { model: 'tiny', max_tokens: 200, stream: true, messages: [{ role: 'user', content: 'Count to a hundred.' }] },
          { signal: controller.signal },
        );
        let chunks = 0;
        try {
          for await (const chunk of stream) if (chunk && ++chunks === 2) controller.abort();
        } catch (e) {
          return e;
        }
        return chunks;
      })();
      // A raw client that goes away once the stream has started.
      const gone = new Promise<void>((resolve, reject) => {
        const body = JSON.stringify({ model: 'tiny', max_tokens: 200, stream: true, messages: [{ role: 'user', content: 'Write a long poem.' }] });
        const req = http.request(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', (e) => (e.message.includes('socket hang up') ? resolve() : reject(e)));
        req.end(body);
      });
      const completions = await Promise.all(answers);
      completions.forEach((c, i) => expect(c.choices[0].message.content).toBe(cases[i].expected));
      // The SDK ends the iteration (or throws its abort error) once the client aborts: no more chunks came.
      const end = await aborted;
      if (typeof end === 'number') expect(end).toBe(2);
      else expect(end).toBeInstanceOf(OpenAI.APIUserAbortError);
      await gone;
    } finally {
      clearInterval(sizes);
    }
    expect(most).toBeGreaterThan(2); // they did run together
    // The aborted and the abandoned rows leave; nothing is left running.
    const end = Date.now() + 10_000;
    while ((server.queue.depth.running > 0 || server.batching.decoding > 0) && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    expect(server.queue.depth).toEqual({ running: 0, waiting: 0 });
    expect(server.batching).toEqual({ decoding: 0, prefilling: 0 });
  });

  test('a second turn with the same image runs no vision layer (the feature cache), and answers as model.chat', async () => {
    server.features.clear();
    const image = await loadImage(MEDIA.image2, { inputSize: model.config.image_size, maxNum: 3 });
    const first = await alone(image.pixelValues, '<image>\nWhat is it?', { maxNewTokens: 12 });
    const second = await alone(image.pixelValues, 'And its colour?', { maxNewTokens: 12 }, { history: [['<image>\nWhat is it?', first]] });
    image.pixelValues.dispose();
    const vision = jest.spyOn(model.vision, 'passesSteps'); // every vision pass goes through it
    const part = imagePart(MEDIA.image2, { max_num: 3 });
    try {
      const hits = server.features.hits;
      const one = await client.chat.completions.create({
        model: 'tiny',
        max_tokens: 12,
        messages: [{ role: 'user', content: [part, textPart('What is it?')] }],
      });
      expect(one.choices[0].message.content).toBe(first);
      expect(vision).toHaveBeenCalled();
      vision.mockClear();
      const turn2: Message[] = [
        { role: 'user', content: [part, textPart('What is it?')] },
        { role: 'assistant', content: first },
        { role: 'user', content: 'And its colour?' },
      ];
      const two = await client.chat.completions.create({ model: 'tiny', max_tokens: 12, messages: turn2 });
      expect(two.choices[0].message.content).toBe(second);
      expect(vision).not.toHaveBeenCalled();
      expect(server.features.hits).toBe(hits + 1);
    } finally {
      vision.mockRestore();
    }
  });

  test('the feature cache is bounded in bytes, least recently used out', async () => {
    const small = await ChatServer.start({ model, modelName: 'tiny', port: 0, limits: { featureCacheBytes: 1 } });
    try {
      const c = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'none', maxRetries: 0 });
      await c.chat.completions.create({ model: 'tiny', max_tokens: 1, messages: [{ role: 'user', content: [imagePart(MEDIA.image1), textPart('Hi')] }] });
      expect(small.features.size).toBe(0); // larger than the bound: not kept
    } finally {
      await small.close();
    }
    const lru = new FeatureCache(3 * 16 * 4); // three entries of 16 floats
    const t = tf.zeros([4, 4]) as tf.Tensor2D;
    ['a', 'b', 'c'].forEach((k) => lru.put(k, t, [1]));
    lru.get('a'); // a is now the most recent: b goes first
    lru.put('d', t, [1]);
    expect([lru.get('a'), lru.get('b'), lru.get('c'), lru.get('d')].map(Boolean)).toEqual([true, false, true, true]);
    expect(lru.bytes).toBe(3 * 16 * 4);
    lru.clear();
    t.dispose();
  });

  test('GET /metrics parses as Prometheus text; its counters equal the requests sent', async () => {
    const fresh = await ChatServer.start({ model, modelName: 'tiny', port: 0 });
    try {
      const c = new OpenAI({ baseURL: `${fresh.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const sent = await Promise.all([
        c.chat.completions.create({ model: 'tiny', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }),
        c.chat.completions.create({ model: 'tiny', max_tokens: 7, messages: [{ role: 'user', content: [imagePart(MEDIA.image1), textPart('What?')] }] }),
        c.chat.completions.create({ model: 'tiny', max_tokens: 7, messages: [{ role: 'user', content: [imagePart(MEDIA.image1), textPart('Again?')] }] }),
      ]);
      const res = await fetch(`${fresh.url}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
      const families = new Map(parsePrometheus(await res.text()).map((f) => [f.name, f]));
      const value = (name: string) => families.get(name)!.metrics.reduce((n, m) => n + Number(m.value), 0);
      const sum = (key: 'prompt_tokens' | 'completion_tokens') => sent.reduce((n, s) => n + s.usage![key], 0);
      expect(value('pvc:prompt_tokens_total')).toBe(sum('prompt_tokens'));
      expect(value('pvc:generation_tokens_total')).toBe(sum('completion_tokens'));
      expect(value('pvc:request_success_total')).toBe(3);
      for (const h of ['pvc:time_to_first_token_seconds', 'pvc:e2e_request_latency_seconds', 'pvc:request_queue_time_seconds']) {
        expect(families.get(h)!.type).toBe('HISTOGRAM');
        expect(Number(families.get(h)!.metrics[0].count)).toBe(3);
      }
      // The same image twice: one encoded, one from the cache (or both encoded when they ran at once).
      expect(value('pvc:feature_cache_hits_total') + value('pvc:feature_cache_misses_total')).toBe(2);
      expect(value('pvc:feature_cache_misses_total')).toBeGreaterThanOrEqual(1);
      expect(value('pvc:num_requests_running')).toBe(0);
      expect(value('pvc:num_requests_waiting')).toBe(0);
      expect(value('pvc:feature_cache_entries')).toBe(fresh.features.size);
    } finally {
      await fresh.close();
    }
  });

  test('what the harnesses send: max_dynamic_patch as max_num, <image> placed in the text, a last assistant message continued', async () => {
    const S = model.config.image_size;
    const image = await loadImage(MEDIA.image1, { inputSize: S, maxNum: 2 });
    const two = [image, await loadImage(MEDIA.image2, { inputSize: S, maxNum: 2 })];
    const twoPixels = tf.concat(two.map((i) => i.pixelValues)) as tf.Tensor4D;
    const placed = 'Look at <image> and then at <image>: which is brighter?';
    const expectedTwo = await alone(twoPixels, placed, { maxNewTokens: 10 }, { numPatchesList: two.map((i) => i.numPatches) });
    const prefix = 'Best option:(';
    const expectedPrefill = await alone(image.pixelValues, '<image>\nWhich one?', { maxNewTokens: 10 }, { answerPrefix: prefix });
    const prompt = model.prepareChat(image.pixelValues, '<image>\nWhich one?', { answerPrefix: prefix }).prompt;
    const expectedOne = await alone(image.pixelValues, '<image>\nDescribe it.', { maxNewTokens: 10 });
    [image, ...two].forEach((i) => i.pixelValues.dispose());
    twoPixels.dispose();
    // The prompt ends with the assistant's role and the prefix (upstream's template, written out here).
    expect(prompt.endsWith('<|im_start|>assistant\nBest option:(')).toBe(true);

    const ask = async (messages: Message[]) => (await client.chat.completions.create({ model: 'tiny', max_tokens: 10, messages })).choices[0].message.content;
    expect(await ask([{ role: 'user', content: [imagePart(MEDIA.image1, { max_dynamic_patch: 2 }), textPart('Describe it.')] }])).toBe(expectedOne);
    expect(
      await ask([{ role: 'user', content: [textPart(placed), imagePart(MEDIA.image1, { max_dynamic_patch: 2 }), imagePart(MEDIA.image2, { max_num: 2 })] }]),
    ).toBe(expectedTwo);
    expect(
      await ask([
        { role: 'user', content: [imagePart(MEDIA.image1, { max_num: 2 }), textPart('Which one?')] },
        { role: 'assistant', content: prefix },
      ]),
    ).toBe(expectedPrefill);
    // Placeholders that do not match the images, or max_num and max_dynamic_patch that disagree: 400s naming them.
    const refused = async (messages: Message[]) => {
      try {
        await client.chat.completions.create({ model: 'tiny', max_tokens: 2, messages });
      } catch (e) {
        return e as InstanceType<typeof OpenAI.APIError>;
      }
      throw new Error('accepted');
    };
    const wrong = await refused([{ role: 'user', content: [textPart('<image> <image>'), imagePart(MEDIA.image1)] }]);
    expect(wrong.status).toBe(400);
    expect(wrong.param).toBe('messages[0].content');
    const disagree = await refused([{ role: 'user', content: [imagePart(MEDIA.image1, { max_num: 2, max_dynamic_patch: 3 }), textPart('Hi')] }]);
    expect(disagree.status).toBe(400);
    expect(disagree.param).toBe('messages[0].content[0].image_url.max_dynamic_patch');
    const inAssistant = await refused([
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'See <image>' },
    ]);
    expect(inAssistant.param).toBe('messages[1].content');
  });
});

describe('images as one video (a PVC model)', () => {
  let pvcDir: string;
  let pvc: PVCModel;
  let server: ChatServer;
  let outer: number;

  beforeAll(async () => {
    outer = baseline;
    pvcDir = convertFixture('tiny-pvc');
    pvc = await PVCModel.load(pvcDir);
    server = await ChatServer.start({ model: pvc, modelName: 'tiny-pvc', port: 0, imagesAsVideo: true });
    await pvc.chat(null, 'Warm up.', { maxNewTokens: 2 });
    baseline = tf.memory().numTensors;
  });
  afterAll(async () => {
    await server?.close();
    pvc?.dispose();
    if (pvcDir) removeConverted(pvcDir);
    baseline = outer;
  });

  test("--images-as-video: image_url frames run PVC's video path (data flag 3), as model.chat on the frames as a video; images_as_video: false opts out", async () => {
    // Three frames of a scenes-eval video (a moving shape).
    const files = [1, 2, 3].map((i) => path.join(SCENES, 'images', `video-000-${i}.png`));
    const S = pvc.config.image_size;
    const loaded = await Promise.all(files.map((f) => loadImage(f, { inputSize: S, maxNum: 1 })));
    const pixels = tf.concat(loaded.map((l) => l.pixelValues)) as tf.Tensor4D;
    loaded.forEach((l) => l.pixelValues.dispose());
    const question = withImagePlaceholders('Which way does it move?', 3, 'video');
    const asVideo = await pvc.chat(pixels, question, { maxNewTokens: 12 }, { numPatchesList: [1, 1, 1], dataFlag: 3, resetRotary: true });
    const asImages = await pvc.chat(
      pixels,
      withImagePlaceholders('Which way does it move?', 3, 'images'),
      { maxNewTokens: 12 },
      { numPatchesList: [1, 1, 1], dataFlag: 2, resetRotary: true },
    );
    expect(asVideo).not.toBe(asImages); // the two paths answer differently here: the test tells them apart
    const videoPrompt = pvc.prepareChat(pixels, question, { numPatchesList: [1, 1, 1], dataFlag: 3 }).inputIds.length;
    pixels.dispose();
    const type = (f: string) => (f.endsWith('.png') ? 'image/png' : 'image/jpeg');
    // lmms-eval's order: the text, then the frames.
    const content = [
      textPart('Which way does it move?'),
      ...files.map((f) => ({ type: 'image_url', image_url: { url: dataUrl(f, type(f)) } }) as unknown as Part),
    ];
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const video = await client.chat.completions.create({ model: 'tiny-pvc', max_tokens: 12, messages: [{ role: 'user', content }] });
    expect(video.choices[0].message.content).toBe(asVideo);
    expect(video.usage!.prompt_tokens).toBe(videoPrompt);
    const images = await client.chat.completions.create({
      model: 'tiny-pvc',
      max_tokens: 12,
      messages: [{ role: 'user', content: content.map((p) => (p.type === 'image_url' ? ({ ...p, image_url: { ...p.image_url, max_num: 1 } } as Part) : p)) }],
      images_as_video: false,
    } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
    expect(images.choices[0].message.content).toBe(asImages);
    expect(tf.memory().numTensors - server.features.size).toBe(baseline);
  });
});

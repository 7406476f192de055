// A live video session (model.liveVideo): frames added one at a time, questions at any time. After
// frames 1..t, ask() must give model.chat's greedy ids on those t frames (data flag 3, the same prompt),
// asking must not change later answers, an abort must leave the session as it was, and nothing may leak.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { withImagePlaceholders } from '../src/chat/prompt';
import { AbortError } from '../src/event_loop';
import { loadVideo } from '../src/preprocess/video';
import { PVCModel } from '../src/pvc_model';
import { convertFixture, MEDIA } from './helpers';

const QUESTION = 'What happens in the video?';
const MAX = 12;

describe.each(['tiny-pvc', 'scenes-pvc'])('%s', (fixture) => {
  let dir: string;
  let model: PVCModel;
  let clip: tf.Tensor4D;

  beforeAll(async () => {
    dir = convertFixture(fixture);
    model = await PVCModel.load(dir, { backend: 'wasm' });
    const video = await loadVideo(MEDIA.video, { numSegments: 8, maxNum: 1, inputSize: model.config.image_size, warn: () => {} });
    clip = video.pixelValues;
  });

  afterAll(() => {
    clip?.dispose();
    model?.dispose();
    if (dir) fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  const frame = (i: number) => clip.slice([i, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
  const first = (t: number) => clip.slice([0, 0, 0, 0], [t, -1, -1, -1]) as tf.Tensor4D;
  const generation = () => model.generationConfig({ maxNewTokens: MAX });

  /** model.chat's prompt ids and greedy ids on the first t frames. */
  async function chatOn(t: number, question = QUESTION) {
    const pixels = first(t);
    try {
      return await model.chatIds(
        pixels,
        withImagePlaceholders(question, t, 'video'),
        { maxNewTokens: MAX },
        { numPatchesList: new Array(t).fill(1), dataFlag: 3 },
      );
    } finally {
      pixels.dispose();
    }
  }

  async function add(live: ReturnType<PVCModel['liveVideo']>, from: number, to: number) {
    for (let i = from; i < to; i++) {
      const f = frame(i);
      try {
        await live.addFrame(f);
      } finally {
        f.dispose();
      }
    }
  }

  test("after frames 1..t, ask() gives chat()'s prompt and greedy ids on those t frames (t = 1, 2, 5, 8); asking changes no later answer", async () => {
    const before = tf.memory().numTensors;
    const live = model.liveVideo();
    try {
      let t = 0;
      for (const next of [1, 2, 5, 8]) {
        await add(live, t, next);
        t = next;
        const got = await live.ask(QUESTION, generation());
        const want = await chatOn(t);
        expect(live.frames).toBe(t);
        expect(got.inputIds).toEqual(want.inputIds);
        expect(got.outputIds).toEqual(want.outputIds);
        // A second question at the same point, then the first again: the frames' cache is untouched.
        const other = await live.ask('Which colours do you see?', generation());
        expect(other.outputIds).toEqual((await chatOn(t, 'Which colours do you see?')).outputIds);
        expect((await live.ask(QUESTION, generation())).outputIds).toEqual(want.outputIds);
      }
    } finally {
      live.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test('an aborted addFrame or ask leaves the session as it was', async () => {
    const before = tf.memory().numTensors;
    const live = model.liveVideo();
    try {
      await add(live, 0, 3);
      const f = frame(3);
      const aborted = new AbortController();
      aborted.abort();
      await expect(live.addFrame(f, { signal: aborted.signal })).rejects.toBeInstanceOf(AbortError);
      // Aborted part way through the vision layers.
      const later = new AbortController();
      const pending = live.addFrame(f, { signal: later.signal });
      setImmediate(() => later.abort());
      await expect(pending).rejects.toBeInstanceOf(AbortError);
      expect(live.frames).toBe(3);
      await expect(live.ask(QUESTION, generation(), { signal: aborted.signal })).rejects.toBeInstanceOf(AbortError);
      await live.addFrame(f);
      f.dispose();
      await add(live, 4, 5);
      expect((await live.ask(QUESTION, generation())).outputIds).toEqual((await chatOn(5)).outputIds);
    } finally {
      live.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test('limits and misuse are clear errors: maxFrames, asking before a frame, a second call at once, after dispose', async () => {
    const live = model.liveVideo({ maxFrames: 2 });
    try {
      await expect(live.ask(QUESTION, generation())).rejects.toThrow(/no frame yet/);
      await expect(live.addFrame(clip)).rejects.toThrow(/expected the pixel values of one frame \[1, 3, \d+, \d+\], got \[8,/);
      await add(live, 0, 2);
      const f = frame(2);
      await expect(live.addFrame(f)).rejects.toThrow(/holds its maxFrames 2 frames/);
      const running = live.ask(QUESTION, generation());
      await expect(live.addFrame(f)).rejects.toThrow(/another addFrame or ask of this session is running/);
      await running;
      f.dispose();
    } finally {
      live.dispose();
    }
    await expect(live.ask(QUESTION, generation())).rejects.toThrow(/disposed/);
  });
});

// A live video session (model.liveVideo): frames added one at a time, questions at any time. After
// frames 1..t, ask() must give model.chat's greedy ids on those t frames (data flag 3, the same prompt),
// asking must not change later answers, an abort must leave the session as it was, and nothing may leak.
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { withImagePlaceholders } from '../src/chat/prompt';
import { AbortError } from '../src/event_loop';
import { frameStream, StreamFrame } from '../src/preprocess/stream';
import { binary, decodeFrames, loadVideo, probeVideo } from '../src/preprocess/video';
import { PVCModel } from '../src/pvc_model';
import { convertFixture, loadReference, MEDIA, referenceTensor4d } from './helpers';

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

  test('calls made at once run in order; stream() gives the answer ask() gives, in pieces', async () => {
    const before = tf.memory().numTensors;
    const live = model.liveVideo();
    try {
      await add(live, 0, 2);
      const f = frame(2);
      const [atTwo, , atThree] = await Promise.all([live.ask(QUESTION, generation()), live.addFrame(f), live.ask(QUESTION, generation())]);
      f.dispose();
      expect(atTwo.outputIds).toEqual((await chatOn(2)).outputIds);
      expect(atThree.outputIds).toEqual((await chatOn(3)).outputIds);
      let streamed = '';
      for await (const piece of live.stream(QUESTION, generation())) streamed += piece;
      expect(streamed).toBe(atThree.answer);
      // A call waiting behind another leaves the line when aborted.
      const waiting = new AbortController();
      const running = live.ask(QUESTION, generation());
      const queued = live.ask(QUESTION, generation(), { signal: waiting.signal });
      waiting.abort();
      await expect(queued).rejects.toBeInstanceOf(AbortError);
      expect((await running).outputIds).toEqual(atThree.outputIds);
    } finally {
      live.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  test('limits and misuse are clear errors: maxFrames, the context, asking before a frame, after dispose', async () => {
    const live = model.liveVideo({ maxFrames: 2 });
    try {
      await expect(live.ask(QUESTION, generation())).rejects.toThrow(/no frame yet/);
      await expect(live.addFrame(clip)).rejects.toThrow(/expected the pixel values of one frame \[1, 3, \d+, \d+\], got \[8,/);
      await add(live, 0, 2);
      const f = frame(2);
      await expect(live.addFrame(f)).rejects.toThrow(/holds its maxFrames 2 frames/);
      f.dispose();
    } finally {
      live.dispose();
    }
    await expect(live.ask(QUESTION, generation())).rejects.toThrow(/disposed/);
    // The context: a frame that would take the prompt past max_position_embeddings is refused, and the session goes on.
    const llm = model.config.llm as { max_position_embeddings: number };
    const saved = llm.max_position_embeddings;
    const long = model.liveVideo();
    try {
      await add(long, 0, 2);
      llm.max_position_embeddings = long.positions + 1;
      const f = frame(2);
      await expect(long.addFrame(f)).rejects.toThrow(/frame 3 would take the prompt to \d+ positions, past max_position_embeddings/);
      f.dispose();
      llm.max_position_embeddings = saved;
      expect(long.frames).toBe(2);
      expect((await long.ask(QUESTION, generation())).outputIds).toEqual((await chatOn(2)).outputIds);
    } finally {
      llm.max_position_embeddings = saved;
      long.dispose();
    }
  });
});

describe('against the PVC spec implementation (upstream InternVL plus pvc.md, test/reference/pvc_spec.py)', () => {
  test("tiny-pvc: the reference's 6-frame clip added frame by frame, then its question: the reference's prompt and greedy ids", async () => {
    const dir = convertFixture('tiny-pvc');
    const model = await PVCModel.load(dir, { backend: 'wasm' });
    const { doc, tensors } = loadReference('tiny-pvc');
    const c = (doc as unknown as { chat: { name: string; question: string; input_ids: number[]; output_ids: number[] }[] }).chat.find(
      (x) => x.name === 'video',
    )!;
    const clip = referenceTensor4d(tensors, 'clip');
    const live = model.liveVideo();
    try {
      for (let i = 0; i < clip.shape[0]; i++) {
        const f = clip.slice([i, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
        await live.addFrame(f);
        f.dispose();
      }
      // The reference's question is the frames' placeholders, then the question itself.
      const prefix = withImagePlaceholders('', clip.shape[0], 'video');
      expect(c.question.startsWith(prefix)).toBe(true);
      const got = await live.ask(c.question.slice(prefix.length), model.generationConfig({ max_new_tokens: 16, do_sample: false }));
      expect(got.inputIds).toEqual(c.input_ids);
      expect(got.outputIds).toEqual(c.output_ids.slice(1));
    } finally {
      live.dispose();
      clip.dispose();
      tensors.close();
      model.dispose();
      fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });
});

// Frames from a live source: ffmpeg at a fixed rate; late frames dropped and counted from a live source.
describe('frameStream', () => {
  test('a file at its own rate: every frame, the bytes decodeFrames gives; at 2 fps, 2 frames a second', async () => {
    const info = await probeVideo(MEDIA.video);
    const want = new Map<number, Uint8Array>();
    await decodeFrames(MEDIA.video, info, [0, 7, 179], (k, f) => void want.set([0, 7, 179][k], f.data.slice()));
    const all: StreamFrame[] = [];
    for await (const f of frameStream(MEDIA.video, { fps: info.fps })) all.push(f);
    expect(all.length).toBe(info.frameCount);
    expect(all.map((f) => f.index)).toEqual(all.map((_, i) => i));
    for (const [i, data] of want) expect(Buffer.compare(all[i].image.data, data)).toBe(0);
    const stream = frameStream(MEDIA.video, { fps: 2 });
    const slow: StreamFrame[] = [];
    for await (const f of stream) slow.push(f);
    expect(slow.map((f) => f.time)).toEqual(Array.from({ length: 12 }, (_, i) => i / 2));
    expect([stream.received, stream.dropped, stream.dropLate]).toEqual([12, 0, false]);
  });

  test('a reader slower than a live source gets the newest frame; the frames it missed are dropped and counted', async () => {
    const stream = frameStream(MEDIA.video, { fps: 10, dropLate: true });
    const got: StreamFrame[] = [];
    for await (const f of stream) {
      got.push(f);
      // The first frame takes the reader until the source has sent all 60.
      while (got.length === 1 && stream.received < 60) await new Promise((r) => setTimeout(r, 5));
    }
    expect(got.map((f) => f.index)).toEqual([0, 59]);
    expect([stream.received, stream.dropped]).toEqual([60, 58]);
  });

  test('a 10-bit source: 8-bit frames, as decodeFrames gives them', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-10bit-')), 'clip.mkv');
    try {
      const made = spawnSync(binary('ffmpeg'), [
        ...['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=64x48:rate=5:duration=1'],
        ...['-pix_fmt', 'yuv420p10le', '-c:v', 'ffv1', file],
      ]);
      expect(made.status).toBe(0);
      const info = await probeVideo(file);
      const want: Uint8Array[] = [];
      await decodeFrames(file, info, [0, 4], (_, f) => void want.push(f.data.slice()));
      const got: StreamFrame[] = [];
      for await (const f of frameStream(file, { fps: 5 })) got.push(f);
      expect(got.length).toBe(5);
      expect([Buffer.compare(got[0].image.data, want[0]), Buffer.compare(got[4].image.data, want[1])]).toEqual([0, 0]);
    } finally {
      fs.rmSync(path.dirname(file), { recursive: true, force: true });
    }
  });

  test('abort, an early stop and bad input', async () => {
    const aborted = new AbortController();
    const stream = frameStream(MEDIA.video, { fps: 30, signal: aborted.signal });
    const after: number[] = [];
    const read = (async () => {
      for await (const f of stream) {
        if (aborted.signal.aborted) after.push(f.index);
        if (f.index === 3) aborted.abort();
      }
    })();
    await expect(read).rejects.toBeInstanceOf(AbortError);
    expect(after).toEqual([]); // no frame after the abort, not even one that was waiting
    for await (const f of frameStream(MEDIA.video, { fps: 30 })) if (f.index === 2) break; // kills ffmpeg, no error
    expect(() => frameStream(MEDIA.video, { fps: 0 })).toThrow(/fps 0: expected a number in \(0, 240\]/);
    expect(() => frameStream('/nonexistent.mp4', { fps: 1 })).toThrow(/no such video file/);
    const big = frameStream(MEDIA.video, { fps: 1, maxFramePixels: 320 * 240 - 1 });
    await expect(
      (async () => {
        for await (const _ of big);
      })(),
    ).rejects.toThrow(/frames of 320x240 are over maxFramePixels 76799/);
    const notVideo = frameStream(path.join(__dirname, '..', 'package.json'), { fps: 1 });
    await expect(
      (async () => {
        for await (const _ of notVideo);
      })(),
    ).rejects.toThrow(/package\.json: ffmpeg failed \(exit \d+\)/);
  });
});

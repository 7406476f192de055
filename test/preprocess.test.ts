// Image and video preprocessing against upstream's (PIL tiles, decord frames, get_index).
import ffmpegInstaller from '@ffmpeg-installer/ffmpeg';
import * as tf from '@tensorflow/tfjs';
import { createHash } from 'crypto';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { initBackend } from '../src/backend';
import { decodeRGB, loadImage } from '../src/preprocess/image';
import { candidateGrids, dynamicPreprocess, tile, tileImage } from '../src/preprocess/tiles';
import { binary, decodeFrames, getIndex, loadVideo, probeVideo, roundHalfEven } from '../src/preprocess/video';
import { SafetensorsFile } from '../src/io/safetensors';
import { FIXTURES, MEDIA, SHARED_ASSETS as ASSETS, SHARED_ASSETS_PRESENT, withSharedAssets } from './helpers';

// The tiles of the two real example images and decord's view of the real example video were recorded by
// the oracle from ../shared/assets: those tests need the files themselves. Everything else runs on the
// repository's own media (examples/media).
const sharedTest = withSharedAssets(
  'preprocess.test.ts',
  "the tests held to the oracle's tiles of example_image1/2.jpg and decord's frames of example_video.mp4 are",
);
const REF_DIR = path.join(FIXTURES, 'reference', 'preprocess');
const ref = JSON.parse(fs.readFileSync(path.join(REF_DIR, 'reference.json'), 'utf8')) as {
  images: { file: string; asset: boolean; max_num: number; num_tiles: number; tile_sha256: string[] }[];
  candidate_orders: Record<string, [number, number][]>;
  video: {
    file: string;
    frames: number;
    fps: number;
    settings: { num_segments: number; bound: [number, number] | null; frame_indices: number[] }[];
    frames_dir: string;
  };
};
const imagePath = (r: { file: string; asset: boolean }) => (r.asset ? path.join(ASSETS, r.file) : path.join(FIXTURES, 'images', r.file));
const sha = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

beforeAll(() => initBackend({ backend: 'wasm', log: null }));

// Under CI the real files must be there (a missing ../shared would otherwise skip their tests silently).
(SHARED_ASSETS_PRESENT || process.env.CI === 'true' ? test : test.skip)('the shared assets are where CI puts them', () => {
  expect(fs.existsSync(path.join(ASSETS, 'example_image1.jpg'))).toBe(true);
});

test("candidate grids come in upstream's order (a CPython set, then a stable sort), for 117 (min, max) pairs", () => {
  const mismatched = Object.entries(ref.candidate_orders).filter(([k, order]) => {
    const [minNum, maxNum] = k.split('-').map(Number);
    return JSON.stringify(candidateGrids(minNum, maxNum)) !== JSON.stringify(order);
  });
  expect(mismatched.map(([k]) => k)).toEqual([]);
  expect(Object.keys(ref.candidate_orders).length).toBeGreaterThanOrEqual(100);
});

describe("images: tiles identical, uint8 for uint8, to PIL's", () => {
  test('the cases the acceptance names are covered', () => {
    const names = ref.images.map((r) => r.file);
    for (const want of [
      'example_image1.jpg',
      'example_image2.jpg',
      'tiny-1x1.png',
      'tiny-13x7.png',
      'large-4000x3000.jpg',
      'tall-1-12.png',
      'wide-12-1.png',
      'tie-11.5-small.png',
      'tie-11.5-large.jpg',
      'gray.png',
      'rgba.png',
      'palette.png',
    ])
      expect(names).toContain(want);
    expect(new Set(ref.images.map((r) => r.max_num))).toEqual(new Set([1, 6, 12]));
    expect(ref.images.filter((r) => !r.asset).length).toBeGreaterThanOrEqual(12);
  });

  const tilesMatch = async (r: (typeof ref.images)[number]) => {
    const image = await decodeRGB(imagePath(r));
    const { tiles } = dynamicPreprocess(image, { minNum: 1, maxNum: r.max_num, imageSize: 448, useThumbnail: true });
    expect(tiles.length).toBe(r.num_tiles);
    expect(tiles.map((t) => sha(t.data))).toEqual(r.tile_sha256);
  };
  test.each(ref.images.filter((r) => !r.asset).map((r) => [r.file, r] as const))('%s', (_name, r) => tilesMatch(r));
  sharedTest.each(ref.images.filter((r) => r.asset).map((r) => [r.file, r] as const))('%s (../shared/assets)', (_name, r) => tilesMatch(r));
});

test("pixel_values after ToTensor + Normalize are upstream's within 1e-6", async () => {
  const st = SafetensorsFile.open(path.join(REF_DIR, 'tensors.safetensors'));
  const expected = st.readFloat32('small-13x7-max1.pixel_values');
  const shape = st.info('small-13x7-max1.pixel_values').shape;
  st.close();
  const { pixelValues, numPatches } = await loadImage(path.join(FIXTURES, 'images', 'small-13x7-max1.png'), { maxNum: 1 });
  expect(pixelValues.shape).toEqual(shape);
  expect(numPatches).toBe(1);
  const actual = pixelValues.dataSync();
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  expect(worst).toBeLessThanOrEqual(1e-6);
  pixelValues.dispose();
});

test('preprocessing a 12-tile image leaks no tensors', async () => {
  const before = tf.memory().numTensors;
  const img = await loadImage(MEDIA.image1, { maxNum: 12 });
  expect(img.pixelValues.shape).toEqual([13, 3, 448, 448]);
  expect(img.grid).toEqual([4, 3]);
  img.pixelValues.dispose();
  expect(tf.memory().numTensors).toBe(before);
});

describe('video', () => {
  const video = path.join(ASSETS, ref.video.file);

  sharedTest('frame count and fps as decord sees them', async () => {
    const info = await probeVideo(video);
    expect(info.frameCount).toBe(ref.video.frames);
    expect(info.fps).toBeCloseTo(ref.video.fps, 9);
  });

  test.each(ref.video.settings.map((s) => [`${s.num_segments} segments${s.bound ? `, bound ${s.bound}` : ''}`, s] as const))('get_index: %s', (_n, s) => {
    expect(getIndex(s.bound ?? undefined, ref.video.fps, ref.video.frames - 1, s.num_segments)).toEqual(s.frame_indices);
  });

  test('Python rounding: half to even', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001].map(roundHalfEven)).toEqual([0, 2, 2, -0, -2, 2, 3]);
  });

  sharedTest("decoded frames match decord's (at most 1 level on average)", async () => {
    const dir = path.join(REF_DIR, ref.video.frames_dir);
    const names = fs.readdirSync(dir).sort();
    const indices = names.map((n) => Number(/frame-(\d+)\.png/.exec(n)![1]));
    const frames: Uint8Array[] = [];
    await decodeFrames(video, await probeVideo(video), indices, (_, frame) => void frames.push(frame.data.slice()));
    for (let k = 0; k < names.length; k++) {
      const { data } = await sharp(path.join(dir, names[k])).raw().toBuffer({ resolveWithObject: true });
      let sum = 0;
      for (let i = 0; i < data.length; i++) sum += Math.abs(data[i] - frames[k][i]);
      expect(sum / data.length).toBeLessThanOrEqual(1);
    }
  });

  test("the repository's clip: the frame count and fps examples/media/make-media.ts wrote", async () => {
    expect(await probeVideo(MEDIA.video)).toEqual({ width: 320, height: 240, frameCount: 180, fps: 30 });
  });

  test('loadVideo: one tile per frame, and repeated frames said once', async () => {
    const messages: string[] = [];
    const v = await loadVideo(MEDIA.video, { numSegments: 12, bound: [0, 0.2], warn: (m) => messages.push(m) });
    expect(v.frameIndices).toEqual(getIndex([0, 0.2], v.fps, v.frameCount - 1, 12));
    expect(v.numPatchesList).toEqual(new Array(12).fill(1));
    expect(v.pixelValues.shape).toEqual([12, 3, 448, 448]);
    expect(messages).toHaveLength(1);
    expect(messages[0]).toMatch(/12 segments over \d+ distinct frames: some frames are repeated/);
    v.pixelValues.dispose();
  });
});

describe('media work off the event loop, in bounded buffers', () => {
  const opts = { minNum: 1, maxNum: 6, imageSize: 448, useThumbnail: true };
  const noise = (width: number, height: number) => {
    const data = new Uint8Array(width * height * 3);
    for (let i = 0, x = 12345; i < data.length; i++) data[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
    return { width, height, data };
  };

  test('tileImage gives what tile() gives, while the event loop keeps turning; a transferred buffer comes back', async () => {
    const image = noise(1920, 1080);
    const expected = tile(image, opts, true);
    let turns = 0;
    let done = false;
    const spin = () => !done && (turns++, setImmediate(spin));
    spin();
    const got = await tileImage(image, opts, { returnTiles: true });
    done = true;
    expect(turns).toBeGreaterThan(1); // run in this thread, it would have let the loop turn once at most
    expect(got.numTiles).toBe(expected.numTiles);
    expect(got.grid).toEqual(expected.grid);
    expect(Buffer.from(got.pixels.buffer).equals(Buffer.from(expected.pixels.buffer))).toBe(true);
    expect(got.tiles!.map((t) => sha(t.data))).toEqual(expected.tiles!.map((t) => sha(t.data)));
    // Moved there and back: no copy left behind.
    const moved = { ...image, data: image.data.slice() };
    const pending = tileImage(moved, opts, { transfer: true });
    expect(moved.data.byteLength).toBe(0);
    const back = await pending;
    expect(Buffer.from(back.source!).equals(Buffer.from(image.data))).toBe(true);
  });

  test('decodeFrames hands over one frame at a time, in one reused buffer (a spare once it was transferred away)', async () => {
    const info = await probeVideo(MEDIA.video);
    const seen: Uint8Array[] = [];
    const sums: string[] = [];
    await decodeFrames(MEDIA.video, info, [0, 60, 120], async (k, frame) => {
      seen.push(frame.data);
      sums.push(sha(frame.data));
      await new Promise((r) => setTimeout(r, 20)); // ffmpeg waits meanwhile
    });
    expect(new Set(seen).size).toBe(1);
    expect(new Set(sums).size).toBe(3);
    // A spare is used first; once it is transferred away, a new buffer serves the rest and is left in the spares.
    const spare = new Uint8Array(info.width * info.height * 3);
    const spares = [spare];
    const buffers: Uint8Array[] = [];
    await decodeFrames(
      MEDIA.video,
      info,
      [0, 60, 120],
      (k, frame) => {
        buffers.push(frame.data);
        if (k === 0) structuredClone(frame.data.buffer, { transfer: [frame.data.buffer as ArrayBuffer] });
      },
      undefined,
      spares,
    );
    expect(buffers[0]).toBe(spare);
    expect(spare.byteLength).toBe(0); // moved away
    expect(buffers[1]).not.toBe(spare);
    expect(buffers[2]).toBe(buffers[1]);
    expect(spares).toHaveLength(1);
    expect(spares[0]).toBe(buffers[1]);
  });

  test(`decodeFrames takes more than 100 frames (FFmpeg 5+ refuses a flat select chain of 101 terms; ffmpeg here: ${binary('ffmpeg')})`, async () => {
    const info = await probeVideo(MEDIA.video);
    const indices = Array.from({ length: 150 }, (_, k) => Math.floor((k * 179) / 149));
    const all: string[] = [];
    await decodeFrames(MEDIA.video, info, indices, (_, frame) => void all.push(sha(frame.data)));
    expect(all).toHaveLength(150);
    const picked = [0, 1, 74, 149];
    const few: string[] = [];
    await decodeFrames(
      MEDIA.video,
      info,
      picked.map((k) => indices[k]),
      (_, frame) => void few.push(sha(frame.data)),
    );
    expect(picked.map((k) => all[k])).toEqual(few);
  });
});

describe('bad inputs give errors naming the file and the problem', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-pre-'));
    fs.writeFileSync(path.join(tmp, 'empty.jpg'), '');
    fs.writeFileSync(path.join(tmp, 'text.jpg'), 'not an image at all');
    fs.writeFileSync(path.join(tmp, 'truncated.jpg'), fs.readFileSync(MEDIA.image1).subarray(0, 30000));
    const ffmpeg = ffmpegInstaller.path;
    spawnSync(ffmpeg, ['-v', 'error', '-f', 'lavfi', '-i', 'sine=frequency=440:duration=0.3', '-y', path.join(tmp, 'audio.wav')]);
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test.each([
    ['missing file', 'missing.jpg', /missing\.jpg: no such image file/],
    ['zero-length file', 'empty.jpg', /empty\.jpg: the file is empty \(0 bytes\)/],
    ['not an image', 'text.jpg', /text\.jpg: cannot decode the image \(.*unsupported image format/],
    ['truncated JPEG', 'truncated.jpg', /truncated\.jpg: cannot decode the image \(.*premature end of JPEG/],
  ])('image: %s', async (_w, file, message) => {
    await expect(loadImage(path.join(tmp, file))).rejects.toThrow(message);
  });

  test('video: missing file, and a file with no video stream', async () => {
    await expect(loadVideo(path.join(tmp, 'missing.mp4'))).rejects.toThrow(/missing\.mp4: no such video file/);
    expect(fs.existsSync(path.join(tmp, 'audio.wav'))).toBe(true);
    await expect(loadVideo(path.join(tmp, 'audio.wav'))).rejects.toThrow(/audio\.wav: no video stream/);
  });

  test('bad options', async () => {
    await expect(loadImage(MEDIA.image1, { maxNum: 0 })).rejects.toThrow(/minNum 1 \/ maxNum 0/);
    await expect(loadVideo(MEDIA.video, { numSegments: 0 })).rejects.toThrow(/numSegments 0: expected a positive integer/);
  });
});

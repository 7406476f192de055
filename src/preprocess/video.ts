// Video preprocessing as upstream's load_video (InternVL2 / PVC quick start, decord reader):
//   frame count and average fps of the first video stream -> get_index picks num_segments frames ->
//   each frame decoded to RGB, tiled by dynamic_preprocess (max_num 1: one tile, no thumbnail) ->
//   [frames * tiles, 3, S, S].
// Decoding uses ffmpeg/ffprobe: a system ffmpeg on PATH when present, else the binaries shipped in
// the @ffmpeg-installer / @ffprobe-installer npm packages. Only the chosen frames are converted and
// read back, one at a time, and each is tiled (in the tiling thread) before the next is read.
import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import { Readable } from 'stream';
import { initBackend } from '../backend';
import { throwIfAborted } from '../event_loop';
import { RGBImage } from './resample';
import { TiledImage, tileImage } from './tiles';

export interface VideoOptions {
  /** Frames sampled uniformly over the clip (or the bound). Default 32. */
  numSegments?: number;
  /** Tiles per frame (upstream uses 1). */
  maxNum?: number;
  /** [start, end] in seconds. */
  bound?: [number, number];
  inputSize?: number;
  /** Where "numSegments exceeds the frame count" goes; default stderr. */
  warn?: (message: string) => void;
  /** Aborting kills the running ffprobe / ffmpeg (SIGKILL) and rejects with an AbortError. */
  signal?: AbortSignal;
  /** Called once the video is probed and its frames chosen, before any is decoded: throw to refuse it. */
  check?: (info: VideoInfo, frameIndices: number[]) => void;
}

export interface LoadedVideo {
  /** [sum(numPatchesList), 3, S, S]; the caller owns it. */
  pixelValues: tf.Tensor4D;
  numPatchesList: number[];
  frameIndices: number[];
  fps: number;
  /** Frames in the stream, as decord counts them. */
  frameCount: number;
  /** The decoded frames' size (the tiles are squares of the model's input size). */
  width: number;
  height: number;
}

export interface VideoInfo {
  width: number;
  height: number;
  frameCount: number;
  fps: number;
}

const binaries = new Map<string, string>();

/** The ffmpeg / ffprobe to run (looked up once). */
export function binary(name: 'ffmpeg' | 'ffprobe'): string {
  if (!binaries.has(name)) binaries.set(name, findBinary(name));
  return binaries.get(name)!;
}

function findBinary(name: 'ffmpeg' | 'ffprobe'): string {
  const onPath = spawnSync(name, ['-version'], { stdio: 'ignore' });
  if (onPath.status === 0) return name;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pkg = require(name === 'ffmpeg' ? '@ffmpeg-installer/ffmpeg' : '@ffprobe-installer/ffprobe') as { path: string };
    try {
      fs.accessSync(pkg.path, fs.constants.X_OK);
    } catch {
      fs.chmodSync(pkg.path, 0o755); // npm may skip the package's own chmod step
    }
    return pkg.path;
  } catch (e) {
    throw new Error(`${name} not found: install it on PATH or reinstall the optional npm package (${(e as Error).message})`, { cause: e });
  }
}

/**
 * ffmpeg's select expression for the frames `indices`: a sum of `eq(n,i)`, nested as a balanced tree.
 * FFmpeg 5 and later refuse a flat chain of more than 100 terms (its parser's depth guard); the tree's
 * depth is log2 of the count.
 */
export function selectFrames(indices: number[]): string {
  if (indices.length === 0) throw new Error('selectFrames: no frame indices');
  if (indices.length === 1) return `eq(n\\,${indices[0]})`;
  const half = indices.length >> 1;
  return `(${selectFrames(indices.slice(0, half))}+${selectFrames(indices.slice(half))})`;
}

/**
 * A video by path, or by a descriptor already open on it (its `name` stands for it in messages).
 * ffprobe and ffmpeg get a descriptor as their fd 3 and read /proc/self/fd/3: the file that was opened
 * (and checked) is the one read, whatever its path names meanwhile; that needs Linux's /proc.
 */
export type VideoFile = string | { fd: number; name: string };

/** Whether descriptors can be handed to ffmpeg (see VideoFile). */
export const canReadDescriptors = process.platform === 'linux' && fs.existsSync('/proc/self/fd');

/** The input argument and stdio of an ffmpeg / ffprobe run reading `file`, and its name for messages. */
export function ffInput(file: VideoFile): { input: string; stdio: ('ignore' | 'pipe' | number)[]; name: string; clean: (text: string) => string } {
  if (typeof file === 'string') return { input: file, stdio: ['ignore', 'pipe', 'pipe'], name: file, clean: (t) => t };
  if (!canReadDescriptors) throw new Error(`${file.name}: reading a video by descriptor needs /proc/self/fd (Linux)`);
  const input = '/proc/self/fd/3';
  return { input, stdio: ['ignore', 'pipe', 'pipe', file.fd], name: file.name, clean: (t) => t.replaceAll(input, file.name) };
}

/** Python's round() on floats: half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Upstream's get_index: num_segments frame indices over [bound] (seconds) or the whole clip. */
export function getIndex(bound: [number, number] | undefined, fps: number, maxFrame: number, numSegments: number, firstIdx = 0): number[] {
  const [start, end] = bound ?? [-100000, 100000];
  const startIdx = Math.max(firstIdx, roundHalfEven(start * fps));
  const endIdx = Math.min(roundHalfEven(end * fps), maxFrame);
  const seg = (endIdx - startIdx) / numSegments;
  return Array.from({ length: numSegments }, (_, k) => Math.trunc(startIdx + seg / 2 + roundHalfEven(seg * k)));
}

/** Most stderr kept from a run (a broken stream can print a line per frame). */
const STDERR_CHARS = 64 * 1024;

/**
 * Runs a binary in the background, `consume` reading its stdout as it comes (the binary waits while
 * `consume` does not read). Aborting `signal` kills it (SIGKILL) and rejects with an AbortError; an
 * error thrown by `consume` kills it too and is rethrown.
 */
export async function run<T>(
  command: string,
  args: string[],
  stdio: ('ignore' | 'pipe' | number)[],
  signal: AbortSignal | undefined,
  consume: (stdout: Readable) => Promise<T>,
): Promise<{ code: number | null; out: T; stderr: string }> {
  throwIfAborted(signal);
  const proc = spawn(command, args, { stdio });
  const kill = () => proc.kill('SIGKILL');
  signal?.addEventListener('abort', kill, { once: true });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => {
    if (stderr.length < STDERR_CHARS) stderr += c.toString();
  });
  const closed = new Promise<number | null>((resolve, reject) => {
    proc.on('error', reject);
    proc.on('close', resolve);
  });
  closed.catch(() => {}); // awaited below; an early spawn error is not unhandled
  try {
    const out = await consume(proc.stdout!);
    const code = await closed;
    throwIfAborted(signal);
    return { code, out, stderr };
  } catch (e) {
    kill();
    await closed.catch(() => {});
    throwIfAborted(signal);
    throw e;
  } finally {
    signal?.removeEventListener('abort', kill);
  }
}

async function collect(stdout: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdout) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Frame count and average fps of the first video stream, as decord reports them. */
export async function probeVideo(file: VideoFile, signal?: AbortSignal): Promise<VideoInfo> {
  const { input, stdio, name, clean } = ffInput(file);
  if (typeof file === 'string' && !fs.existsSync(file)) throw new Error(`${name}: no such video file`);
  if ((typeof file === 'string' ? fs.statSync(file) : fs.fstatSync(file.fd)).size === 0) throw new Error(`${name}: the file is empty (0 bytes)`);
  const args = ['-v', 'error', '-select_streams', 'v:0', '-count_packets', '-show_entries', 'stream=width,height,avg_frame_rate,nb_frames,nb_read_packets'];
  const { code, out: stdout, stderr } = await run(binary('ffprobe'), [...args, '-of', 'json', input], stdio, signal, collect);
  if (code !== 0) throw new Error(`${name}: cannot read the video (${clean(stderr.trim().split('\n')[0]) || `ffprobe exit ${code}`})`);
  const streams = (JSON.parse(stdout.toString('utf8')) as { streams?: Record<string, string | number>[] }).streams ?? [];
  if (streams.length === 0) throw new Error(`${name}: no video stream`);
  const s = streams[0];
  const [num, den] = String(s.avg_frame_rate).split('/').map(Number);
  const frameCount = Number(s.nb_read_packets ?? s.nb_frames);
  if (!(den > 0 && num > 0) || !(frameCount > 0)) throw new Error(`${name}: the video stream reports no frames or no frame rate`);
  return { width: Number(s.width), height: Number(s.height), frameCount, fps: num / den };
}

/**
 * Decodes the frames with the given (ascending, distinct) indices to RGB, one at a time: `onFrame(k,
 * frame)` gets the k-th, in a buffer that is reused for the next frame once the promise it returns
 * resolves (copy what you keep), unless onFrame transferred it away (then the next buffer is taken
 * from `spare`, or allocated). Only the frames' buffers are held, whatever the count and size; the
 * last one is left in `spare`.
 */
export async function decodeFrames(
  file: VideoFile,
  info: VideoInfo,
  indices: number[],
  onFrame: (k: number, frame: RGBImage) => Promise<void> | void,
  signal?: AbortSignal,
  spare: Uint8Array[] = [],
): Promise<void> {
  const { input, stdio, name, clean } = ffInput(file);
  const select = selectFrames(indices);
  const args = [
    '-v',
    'error',
    '-noautorotate',
    '-i',
    input,
    '-map',
    '0:v:0',
    '-vf',
    `select='${select}'`,
    '-vsync',
    '0',
    '-f',
    'rawvideo',
    '-pix_fmt',
    'rgb24',
    'pipe:1',
  ];
  const frameBytes = info.width * info.height * 3;
  const frame: RGBImage = { width: info.width, height: info.height, data: spare.pop() ?? new Uint8Array(frameBytes) };
  const tooMany = () => new Error(`${name}: ffmpeg sent more than the ${indices.length} frames of ${info.width}x${info.height} asked for`);
  const { code, out, stderr } = await run(binary('ffmpeg'), args, stdio, signal, async (stdout) => {
    let k = 0;
    let filled = 0;
    for await (const chunk of stdout as AsyncIterable<Buffer>) {
      for (let at = 0; at < chunk.length;) {
        if (k === indices.length) throw tooMany();
        const n = Math.min(chunk.length - at, frameBytes - filled);
        frame.data.set(chunk.subarray(at, at + n), filled);
        at += n;
        filled += n;
        if (filled === frameBytes) {
          await onFrame(k++, frame);
          filled = 0;
          if (frame.data.byteLength === 0) frame.data = spare.pop() ?? new Uint8Array(frameBytes); // transferred
        }
      }
    }
    return { frames: k, partial: filled };
  });
  if (frame.data.byteLength === frameBytes) spare.push(frame.data); // for the caller's next video
  if (code !== 0) throw new Error(`${name}: ffmpeg failed (exit ${code}): ${clean(stderr.trim().split('\n')[0])}`);
  if (out.frames !== indices.length || out.partial !== 0) {
    throw new Error(`${name}: expected ${indices.length} frames of ${info.width}x${info.height} from ffmpeg, got ${out.frames + out.partial / frameBytes}`);
  }
}

/**
 * Frame buffers kept from one video to the next (two of the last frame size: one being filled, one
 * being tiled), dropped after a minute without video. A server decoding video after video reuses them
 * instead of leaving two buffers per video (25 MB each at 4K) for the garbage collector to free
 * whenever it runs.
 */
const framePool: Uint8Array[] = [];
let framePoolTimer: NodeJS.Timeout | undefined;

function takeFrameBuffers(frameBytes: number): Uint8Array[] {
  clearTimeout(framePoolTimer);
  const taken = framePool.filter((b) => b.byteLength === frameBytes);
  framePool.length = 0;
  return taken;
}

function keepFrameBuffers(buffers: Uint8Array[]): void {
  framePool.push(...buffers.slice(0, 2));
  framePool.splice(2);
  framePoolTimer = setTimeout(() => (framePool.length = 0), 60_000).unref();
}

/** Loads a video into model input, as upstream's load_video. */
export async function loadVideo(file: VideoFile, options: VideoOptions = {}): Promise<LoadedVideo> {
  const numSegments = options.numSegments ?? 32;
  const maxNum = options.maxNum ?? 1;
  const inputSize = options.inputSize ?? 448;
  if (!Number.isInteger(numSegments) || numSegments < 1) throw new Error(`numSegments ${numSegments}: expected a positive integer`);
  if (options.bound !== undefined && !(options.bound.length === 2 && options.bound[0] <= options.bound[1])) {
    throw new Error(`bound ${JSON.stringify(options.bound)}: expected [start, end] in seconds with start <= end`);
  }
  const info = await probeVideo(file, options.signal);
  const frameIndices = getIndex(options.bound, info.fps, info.frameCount - 1, numSegments);
  options.check?.(info, frameIndices);
  await initBackend(); // the tensor goes to the chosen backend (a no-op once one is active)
  const unique = [...new Set(frameIndices)].sort((a, b) => a - b);
  if (unique.length < frameIndices.length) {
    (options.warn ?? ((m: string) => process.stderr.write(m + '\n')))(
      `${typeof file === 'string' ? file : file.name}: ${numSegments} segments over ${unique.length} distinct frames: some frames are repeated (as upstream's get_index does)`,
    );
  }
  // Each frame is tiled in the tiling thread while ffmpeg decodes the next: two frame buffers go back
  // and forth (one there, one being filled), and only the tiles (at the model's size) are kept.
  const tiled = new Map<number, TiledImage>();
  const spare = takeFrameBuffers(info.width * info.height * 3);
  let tiling: Promise<void> = Promise.resolve();
  const tileOptions = { minNum: 1, maxNum, imageSize: inputSize, useThumbnail: true };
  await decodeFrames(
    file,
    info,
    unique,
    async (k, frame) => {
      await tiling;
      throwIfAborted(options.signal);
      tiling = tileImage(frame, tileOptions, { transfer: true }).then((t) => {
        spare.push(t.source!);
        tiled.set(unique[k], { ...t, source: undefined });
      });
      tiling.catch(() => {}); // awaited at the next frame or below
    },
    options.signal,
    spare,
  );
  await tiling;
  keepFrameBuffers(spare);
  const numPatchesList = frameIndices.map((i) => tiled.get(i)!.numTiles);
  const tileValues = 3 * inputSize * inputSize;
  const pixels = new Float32Array(numPatchesList.reduce((a, b) => a + b, 0) * tileValues);
  let at = 0;
  for (const i of frameIndices) {
    const t = tiled.get(i)!;
    pixels.set(t.pixels, at);
    at += t.pixels.length;
  }
  tiled.clear();
  const pixelValues = tf.tensor4d(pixels, [at / tileValues, 3, inputSize, inputSize]);
  return { pixelValues, numPatchesList, frameIndices, fps: info.fps, frameCount: info.frameCount, width: info.width, height: info.height };
}

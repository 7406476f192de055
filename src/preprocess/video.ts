// Video preprocessing as upstream's load_video (InternVL2 / PVC quick start, decord reader):
//   frame count and average fps of the first video stream -> get_index picks num_segments frames ->
//   each frame decoded to RGB, tiled by dynamic_preprocess (max_num 1: one tile, no thumbnail) ->
//   [frames * tiles, 3, S, S].
// Decoding uses ffmpeg/ffprobe: a system ffmpeg on PATH when present, else the binaries shipped in
// the @ffmpeg-installer / @ffprobe-installer npm packages. Only the chosen frames are converted and
// read back.
import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import { initBackend } from '../backend';
import { AbortError } from '../event_loop';
import { dynamicPreprocess, tilesToTensor } from './image';
import { RGBImage } from './resample';

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
}

export interface LoadedVideo {
  /** [sum(numPatchesList), 3, S, S]; the caller owns it. */
  pixelValues: tf.Tensor4D;
  numPatchesList: number[];
  frameIndices: number[];
  fps: number;
  /** Frames in the stream, as decord counts them. */
  frameCount: number;
}

export interface VideoInfo {
  width: number;
  height: number;
  frameCount: number;
  fps: number;
}

const binaries = new Map<string, string>();

/** The ffmpeg / ffprobe to run (looked up once). */
function binary(name: 'ffmpeg' | 'ffprobe'): string {
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
 * A video by path, or by a descriptor already open on it (its `name` stands for it in messages).
 * ffprobe and ffmpeg get a descriptor as their fd 3 and read /proc/self/fd/3: the file that was opened
 * (and checked) is the one read, whatever its path names meanwhile; that needs Linux's /proc.
 */
export type VideoFile = string | { fd: number; name: string };

/** Whether descriptors can be handed to ffmpeg (see VideoFile). */
export const canReadDescriptors = process.platform === 'linux' && fs.existsSync('/proc/self/fd');

/** The input argument and stdio of an ffmpeg / ffprobe run reading `file`, and its name for messages. */
function ffInput(file: VideoFile): { input: string; stdio: ('ignore' | 'pipe' | number)[]; name: string; clean: (text: string) => string } {
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

/** Runs a binary to its end, in the background; aborting `signal` kills it (SIGKILL) and rejects with an AbortError. */
function run(
  command: string,
  args: string[],
  stdio: ('ignore' | 'pipe' | number)[],
  signal?: AbortSignal,
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortError(signal.reason));
    const proc = spawn(command, args, { stdio });
    const chunks: Buffer[] = [];
    let stderr = '';
    const kill = () => proc.kill('SIGKILL');
    signal?.addEventListener('abort', kill, { once: true });
    proc.stdout!.on('data', (c: Buffer) => chunks.push(c));
    proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    proc.on('error', (e) => {
      signal?.removeEventListener('abort', kill);
      reject(e);
    });
    proc.on('close', (code) => {
      signal?.removeEventListener('abort', kill);
      if (signal?.aborted) reject(new AbortError(signal.reason));
      else resolve({ code, stdout: Buffer.concat(chunks), stderr });
    });
  });
}

/** Frame count and average fps of the first video stream, as decord reports them. */
export async function probeVideo(file: VideoFile, signal?: AbortSignal): Promise<VideoInfo> {
  const { input, stdio, name, clean } = ffInput(file);
  if (typeof file === 'string' && !fs.existsSync(file)) throw new Error(`${name}: no such video file`);
  if ((typeof file === 'string' ? fs.statSync(file) : fs.fstatSync(file.fd)).size === 0) throw new Error(`${name}: the file is empty (0 bytes)`);
  const args = ['-v', 'error', '-select_streams', 'v:0', '-count_packets', '-show_entries', 'stream=width,height,avg_frame_rate,nb_frames,nb_read_packets'];
  const { code, stdout, stderr } = await run(binary('ffprobe'), [...args, '-of', 'json', input], stdio, signal);
  if (code !== 0) throw new Error(`${name}: cannot read the video (${clean(stderr.trim().split('\n')[0]) || `ffprobe exit ${code}`})`);
  const streams = (JSON.parse(stdout.toString('utf8')) as { streams?: Record<string, string | number>[] }).streams ?? [];
  if (streams.length === 0) throw new Error(`${name}: no video stream`);
  const s = streams[0];
  const [num, den] = String(s.avg_frame_rate).split('/').map(Number);
  const frameCount = Number(s.nb_read_packets ?? s.nb_frames);
  if (!(den > 0 && num > 0) || !(frameCount > 0)) throw new Error(`${name}: the video stream reports no frames or no frame rate`);
  return { width: Number(s.width), height: Number(s.height), frameCount, fps: num / den };
}

/** Decodes the frames with the given (ascending, distinct) indices to RGB. */
export async function decodeFrames(file: VideoFile, info: VideoInfo, indices: number[], signal?: AbortSignal): Promise<RGBImage[]> {
  const { input, stdio, name, clean } = ffInput(file);
  const select = indices.map((i) => `eq(n\\,${i})`).join('+');
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
  const { code, stdout: all, stderr } = await run(binary('ffmpeg'), args, stdio, signal);
  if (code !== 0) throw new Error(`${name}: ffmpeg failed (exit ${code}): ${clean(stderr.trim().split('\n')[0])}`);
  if (all.length !== frameBytes * indices.length) {
    throw new Error(`${name}: expected ${indices.length} frames of ${info.width}x${info.height} from ffmpeg, got ${all.length / frameBytes}`);
  }
  return indices.map((_, k) => ({ width: info.width, height: info.height, data: new Uint8Array(all.buffer, all.byteOffset + k * frameBytes, frameBytes) }));
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
  await initBackend(); // the tensor goes to the chosen backend (a no-op once one is active)
  const frameIndices = getIndex(options.bound, info.fps, info.frameCount - 1, numSegments);
  const unique = [...new Set(frameIndices)].sort((a, b) => a - b);
  if (unique.length < frameIndices.length) {
    (options.warn ?? ((m: string) => process.stderr.write(m + '\n')))(
      `${typeof file === 'string' ? file : file.name}: ${numSegments} segments over ${unique.length} distinct frames: some frames are repeated (as upstream's get_index does)`,
    );
  }
  const decoded = await decodeFrames(file, info, unique, options.signal);
  const byIndex = new Map(unique.map((i, k) => [i, decoded[k]]));
  const tiles: RGBImage[] = [];
  const numPatchesList: number[] = [];
  for (const i of frameIndices) {
    const t = dynamicPreprocess(byIndex.get(i)!, { minNum: 1, maxNum, imageSize: inputSize, useThumbnail: true }).tiles;
    tiles.push(...t);
    numPatchesList.push(t.length);
  }
  return { pixelValues: tilesToTensor(tiles), numPatchesList, frameIndices, fps: info.fps, frameCount: info.frameCount };
}

// Images and videos of a request: where their bytes may come from (data URLs of allowed media types,
// files under --allowed-local-media-path; never the network), how large they may be, and their
// decoding into model input. Everything here treats the request as hostile: the media type is checked
// against an allow-list and the bytes against the formats' signatures (so that neither libvips nor
// ffmpeg is handed, say, an SVG or an HLS playlist that would make it read other files or URLs), sizes
// are bounded before decoding, and local paths are resolved with realpath and must stay in the root.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { fileURLToPath } from 'url';
import { AbortError } from '../event_loop';
import { headerSize, ImageFormat, sniffFormat } from '../preprocess/formats';
import { LoadedImage, loadImage } from '../preprocess/image';
import { tileGrid } from '../preprocess/tiles';
import { canReadDescriptors, LoadedVideo, loadVideo, VideoFile, VideoInfo } from '../preprocess/video';
import { ApiError, badRequest } from './errors';
import { ServerLimits } from './limits';

export type MediaKind = 'image' | 'video';

/** A media part after validation: its bytes (data URL, image file) or its open file (video file under the root). */
export interface MediaSource {
  kind: MediaKind;
  /** The request field it came from, for errors: messages[1].content[0].image_url. */
  param: string;
  bytes?: Buffer;
  /** A video file under the root, opened and checked once: it is read through this descriptor only (closeMedia closes it). */
  file?: fs.promises.FileHandle;
  /** Images: most tiles. Videos: frames sampled. */
  maxNum?: number;
  numFrames?: number;
}

const MEDIA_TYPES: Record<MediaKind, string[]> = {
  image: ['image/jpeg', 'image/jpg', 'image/png', 'image/webp', 'image/gif'],
  video: ['video/mp4', 'video/quicktime', 'video/webm', 'video/x-matroska'],
};

const ascii = (bytes: Buffer, start: number, end: number) => bytes.subarray(start, end).toString('latin1');

const IMAGE_FORMATS: ImageFormat[] = ['jpeg', 'png', 'gif', 'webp'];

/** Whether `head` starts like a file of one of the kind's formats (JPEG, PNG, GIF, WebP; MP4/QuickTime, Matroska/WebM). */
function hasSignature(head: Buffer, kind: MediaKind): boolean {
  if (kind === 'image') return IMAGE_FORMATS.includes(sniffFormat(head) as ImageFormat);
  return ['ftyp', 'moov', 'mdat', 'wide', 'free'].includes(ascii(head, 4, 8)) || (head[0] === 0x1a && head[1] === 0x45 && head[2] === 0xdf && head[3] === 0xa3);
}

export function checkSignature(head: Buffer, kind: MediaKind, param: string): void {
  if (!hasSignature(head, kind)) {
    const formats = kind === 'image' ? 'JPEG, PNG, GIF or WebP' : 'MP4, QuickTime, WebM or Matroska';
    throw badRequest(param, `the ${kind}'s bytes are not ${formats}`, `invalid_${kind}`);
  }
}

/** The payload of a base64 data URL whose media type is allowed for the kind, at most limits.maxMediaBytes. */
function decodeDataUrl(url: string, kind: MediaKind, param: string, limits: ServerLimits): Buffer {
  const comma = url.indexOf(',');
  if (comma < 0) throw badRequest(param, 'a data URL needs a comma before its data', `invalid_${kind}`);
  const [mediaType, ...params] = url.slice('data:'.length, comma).split(';');
  const type = mediaType.trim().toLowerCase();
  if (!MEDIA_TYPES[kind].includes(type)) {
    throw badRequest(param, `media type '${type}' is not accepted for ${kind}s (accepted: ${MEDIA_TYPES[kind].join(', ')})`, `invalid_${kind}`);
  }
  if (!params.map((p) => p.trim().toLowerCase()).includes('base64'))
    throw badRequest(param, 'only base64 data URLs are accepted (data:TYPE;base64,...)', `invalid_${kind}`);
  // Line breaks and other whitespace (MIME's 76-character lines) are not data.
  const data = url.slice(comma + 1).replace(/\s+/g, '');
  // Checked on the text's length before decoding anything: 4 characters are 3 bytes.
  if (Math.floor((data.length * 3) / 4) > limits.maxMediaBytes + 2)
    throw badRequest(param, `the ${kind} is larger than ${limits.maxMediaBytes} bytes`, 'media_too_large');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(data)) throw badRequest(param, 'the data URL is not valid base64', `invalid_${kind}`);
  const bytes = Buffer.from(data, 'base64');
  if (bytes.length === 0) throw badRequest(param, `the ${kind} is empty`, `invalid_${kind}`);
  if (bytes.length > limits.maxMediaBytes) throw badRequest(param, `the ${kind} is larger than ${limits.maxMediaBytes} bytes`, 'media_too_large');
  checkSignature(bytes, kind, param);
  return bytes;
}

/**
 * A file path or file:// URL resolved (symlinks and .. included) to a regular file inside `root`, opened
 * once: the descriptor is checked (where it points, what it is) and is then the only way the file is
 * read, so a path swapped for a symlink out of the root after the check reads nothing outside. Opened
 * with O_NONBLOCK, so a FIFO cannot block the open; only regular files pass. A missing file and a file
 * outside the root get the same answer: the server tells nothing about files outside the root.
 */
async function openLocal(url: string, kind: MediaKind, param: string, root: string | null, limits: ServerLimits): Promise<fs.promises.FileHandle> {
  if (root === null)
    throw badRequest(param, 'local files are not accepted (the server was started without --allowed-local-media-path)', 'local_media_not_allowed');
  let p: string;
  try {
    p = /^file:/i.test(url) ? fileURLToPath(url) : path.resolve(root, url);
  } catch (e) {
    throw badRequest(param, `bad file URL (${(e as Error).message})`, `invalid_${kind}`);
  }
  const unavailable = () => badRequest(param, 'no such file under the allowed media path', 'local_media_not_found');
  const inRoot = (real: string) => real === root || real.startsWith(root + path.sep);
  let real: string;
  try {
    real = await fs.promises.realpath(p);
  } catch {
    throw unavailable();
  }
  if (!inRoot(real)) throw unavailable();
  let handle: fs.promises.FileHandle;
  try {
    handle = await fs.promises.open(real, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Gone or made a symlink since realpath: as missing. A socket cannot be opened (ENXIO).
    if (code === 'ENOENT' || code === 'ELOOP' || code === 'ENOTDIR') throw unavailable();
    throw badRequest(param, code === 'ENXIO' ? 'not a regular file' : 'the file cannot be opened', `invalid_${kind}`);
  }
  try {
    // What was opened, whatever the path's directories name now (Linux).
    if (canReadDescriptors && !inRoot(await fs.promises.readlink(`/proc/self/fd/${handle.fd}`))) throw unavailable();
    const stat = await handle.stat();
    if (!stat.isFile()) throw badRequest(param, 'not a regular file', `invalid_${kind}`);
    if (stat.size > limits.maxMediaBytes) throw badRequest(param, `the ${kind} is larger than ${limits.maxMediaBytes} bytes`, 'media_too_large');
    return handle;
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** A local file's bytes (an image: whole; the file closed) or its open handle (a video: its signature checked). */
async function readLocal(
  handle: fs.promises.FileHandle,
  kind: MediaKind,
  param: string,
  limits: ServerLimits,
): Promise<{ bytes?: Buffer; file?: fs.promises.FileHandle }> {
  try {
    const bytes = kind === 'image' ? await handle.readFile() : (await handle.read(Buffer.alloc(16), 0, 16, 0)).buffer;
    if (bytes.length > limits.maxMediaBytes) throw badRequest(param, `the ${kind} is larger than ${limits.maxMediaBytes} bytes`, 'media_too_large');
    checkSignature(bytes, kind, param);
    if (kind === 'image') {
      await handle.close();
      return { bytes };
    }
    return { file: handle };
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** Closes the files of media sources (videos under the root); each once. */
export async function closeMedia(media: readonly MediaSource[]): Promise<void> {
  for (const m of media) {
    const file = m.file;
    m.file = undefined;
    await file?.close().catch(() => {});
  }
}

/**
 * Where a part's bytes come from: a data URL, or a file under `root` (an image is read whole, a video
 * stays open: see openLocal). http(s) and other schemes are refused: the server never reaches the network.
 * `root` is the realpath of --allowed-local-media-path, or null when local files are not accepted.
 */
export async function resolveMedia(
  url: string,
  kind: MediaKind,
  param: string,
  root: string | null,
  limits: ServerLimits,
): Promise<{ bytes?: Buffer; file?: fs.promises.FileHandle }> {
  if (/^data:/i.test(url)) return { bytes: decodeDataUrl(url, kind, param, limits) };
  if (/^https?:/i.test(url))
    throw badRequest(
      param,
      'http(s) URLs are not fetched: send the media as a data URL (or a file under --allowed-local-media-path)',
      'remote_media_not_allowed',
    );
  if (/^[a-z][a-z0-9+.-]*:/i.test(url) && !/^file:/i.test(url))
    throw badRequest(param, `URL scheme '${url.split(':')[0]}' is not accepted (data: or file:)`, `invalid_${kind}`);
  return readLocal(await openLocal(url, kind, param, root, limits), kind, param, limits);
}

/**
 * The tiles a part will be, known before decoding: an image's from the size in its header (0 when the
 * header cannot be read: decoding will say why), a video's one per sampled frame.
 */
export function tilesOf(source: MediaSource, inputSize: number): number {
  if (source.kind === 'video') return source.numFrames!;
  try {
    const { width, height } = headerSize(source.bytes!, sniffFormat(source.bytes!) as ImageFormat);
    return tileGrid(width, height, { minNum: 1, maxNum: source.maxNum!, imageSize: inputSize, useThumbnail: true }).numTiles;
  } catch {
    return 0;
  }
}

/** An image's bytes into model input, its pixel count checked from the header first (a hard limit, not Pillow's warning). */
export async function decodeImagePart(bytes: Buffer, options: { inputSize: number; maxNum: number; maxPixels: number }, param: string): Promise<LoadedImage> {
  let size: { width: number; height: number };
  try {
    size = headerSize(bytes, sniffFormat(bytes) as ImageFormat);
  } catch (e) {
    throw badRequest(param, `the image cannot be decoded (${(e as Error).message})`, 'invalid_image');
  }
  if (size.width * size.height > options.maxPixels) {
    throw badRequest(param, `the image has ${size.width}x${size.height} pixels, more than the ${options.maxPixels} accepted`, 'image_too_large');
  }
  try {
    return await loadImage(bytes, { inputSize: options.inputSize, maxNum: options.maxNum });
  } catch (e) {
    throw badRequest(param, `the image cannot be decoded (${(e as Error).message})`, 'invalid_image');
  }
}

/**
 * A video into model input. A file under the root is read through its open descriptor (see VideoFile);
 * data URL bytes, and a file where descriptors cannot be handed to ffmpeg, go through a private
 * temporary file (ffmpeg reads files), removed after.
 */
export async function decodeVideoPart(
  source: MediaSource,
  options: { inputSize: number; numFrames: number; maxFramePixels: number; maxDecodePixels: number },
  signal?: AbortSignal,
): Promise<LoadedVideo> {
  let tmp: string | null = null;
  let file: VideoFile | undefined = source.file && canReadDescriptors ? { fd: source.file.fd, name: '<video>' } : undefined;
  try {
    if (file === undefined) {
      const bytes = source.bytes ?? (await source.file!.readFile());
      tmp = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'pvc-serve-'));
      file = path.join(tmp, 'video');
      await fs.promises.writeFile(file, bytes, { mode: 0o600, flag: 'wx' });
    }
    // Refused from ffprobe's header numbers, before anything is decoded: the frame size, and the
    // pixels ffmpeg must decode to reach the last sampled frame (it decodes every frame up to there).
    const check = ({ width, height }: VideoInfo, frameIndices: number[]) => {
      if (width * height > options.maxFramePixels) {
        throw badRequest(
          source.param,
          `the video's frames have ${width}x${height} pixels, more than the ${options.maxFramePixels} accepted`,
          'video_too_large',
        );
      }
      const decoded = (Math.max(...frameIndices) + 1) * width * height;
      if (decoded > options.maxDecodePixels) {
        throw badRequest(
          source.param,
          `reaching the video's frame ${Math.max(...frameIndices)} means decoding ${decoded} pixels, more than the ${options.maxDecodePixels} accepted (fewer or smaller frames)`,
          'video_too_large',
        );
      }
    };
    try {
      return await loadVideo(file, { numSegments: options.numFrames, maxNum: 1, inputSize: options.inputSize, warn: () => {}, signal, check });
    } catch (e) {
      if (e instanceof AbortError || e instanceof ApiError) throw e;
      throw badRequest(source.param, `the video cannot be read (${firstLine(e)})`, 'invalid_video');
    }
  } finally {
    if (tmp !== null) await fs.promises.rm(tmp, { recursive: true, force: true });
  }
}

/** An error's first line, without the temporary file's path. */
function firstLine(e: unknown): string {
  return String((e as Error).message ?? e)
    .split('\n')[0]
    .replace(/\/[^\s:]*pvc-serve-[^\s:]*/g, '<video>');
}

// Frames from a live source for a live video session: ffmpeg (as in video.ts) reads a file, a growing
// file, a pipe or a URL and hands out frames at a fixed rate (its fps filter), each a full-size RGB
// image. Sampling here is by time (one frame every 1/fps seconds of the source), not upstream's
// load_video, which spreads num_segments frames over a clip of known length.
//
// Backpressure: from a regular file read as fast as ffmpeg decodes, every frame is delivered (ffmpeg
// waits for the reader). From a live source (a pipe, a URL, or a file read at its own rate with
// `realtime`), frames come whether or not the reader is ready: the stream keeps the newest undelivered
// frame and drops the one it replaces, counting it (`dropped`).
import * as fs from 'fs';
import { AbortError, throwIfAborted } from '../event_loop';
import { RGBImage } from './resample';
import { binary, ffInput, run, VideoFile } from './video';

export interface FrameStreamOptions {
  /** Frames per second taken from the source (ffmpeg's fps filter). */
  fps: number;
  /** Read a file at its own frame rate, as a camera would send it (ffmpeg -re); frames the reader misses are dropped. */
  realtime?: boolean;
  /** Keep reading a file that is still being written (ffmpeg's -follow 1): the stream ends only when aborted. */
  follow?: boolean;
  /** Drop the frames the reader is not ready for. Default: for a pipe, a URL or `realtime`; not for a file read at ffmpeg's pace. */
  dropLate?: boolean;
  /** Frames above this many pixels are refused. Default 2^25 (8K UHD is 2^24.9). */
  maxFramePixels?: number;
  /** Aborting kills ffmpeg; the iterator then rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface StreamFrame {
  image: RGBImage;
  /** Frames the source has given so far, minus one: this frame's number at the stream's fps (dropped ones counted). */
  index: number;
  /** index / fps: the frame's time in the stream, in seconds. */
  time: number;
}

/** The default maxFramePixels. */
export const MAX_FRAME_PIXELS = 2 ** 25;

/** A frame parsed from ffmpeg's PPM stream: "P6\n<width> <height>\n255\n" then width * height * 3 bytes. */
const PPM_HEADER = /^P6\s+(\d+)\s+(\d+)\s+(\d+)\s/;

/**
 * The frames of `source` at `options.fps`, as an async iterable (one reader). Each frame handed out
 * is the reader's own. Stopping early (break, return) or aborting kills ffmpeg. ffmpeg starts with the
 * stream: one that is never iterated must be closed (close()).
 */
export class FrameStream implements AsyncIterable<StreamFrame> {
  /** Frames dropped because the reader was busy when a newer one came. */
  dropped = 0;
  /** Frames ffmpeg has given (delivered, waiting or dropped). */
  received = 0;
  readonly fps: number;
  readonly dropLate: boolean;
  private pending: StreamFrame | null = null;
  private waiter: (() => void) | null = null;
  private taken: (() => void) | null = null;
  private ended = false;
  private failure: unknown = null;
  private readonly stop = new AbortController();
  private readonly name: string;
  private readonly signal: AbortSignal | undefined;

  constructor(source: VideoFile, options: FrameStreamOptions) {
    const { fps, realtime = false, follow = false, maxFramePixels = MAX_FRAME_PIXELS } = options;
    if (!(Number.isFinite(fps) && fps > 0 && fps <= 240)) throw new Error(`fps ${fps}: expected a number in (0, 240]`);
    if (!(Number.isInteger(maxFramePixels) && maxFramePixels > 0)) throw new Error(`maxFramePixels ${maxFramePixels}: expected a positive integer`);
    const { input, stdio, name, clean } = ffInput(source);
    const url = typeof source === 'string' && /^[a-z][a-z0-9+.-]*:\/\//i.test(source);
    if (typeof source === 'string' && !url && !fs.existsSync(source)) throw new Error(`${source}: no such video file`);
    const regularFile = typeof source === 'string' ? !url && fs.statSync(source).isFile() : fs.fstatSync(source.fd).isFile();
    this.fps = fps;
    this.dropLate = options.dropLate ?? (realtime || !regularFile);
    this.name = name;
    this.signal = options.signal;
    const signal = options.signal ? AbortSignal.any([options.signal, this.stop.signal]) : this.stop.signal;
    const args = [
      '-v',
      'error',
      '-noautorotate',
      ...(realtime ? ['-re'] : []),
      ...(follow ? ['-follow', '1'] : []),
      '-i',
      input,
      '-map',
      '0:v:0',
      '-vf',
      `fps=${fps}`,
      '-f',
      'image2pipe',
      '-c:v',
      'ppm',
      // 8 bits per channel whatever the source (ffmpeg's ppm picks rgb48be for a 10-bit one).
      '-pix_fmt',
      'rgb24',
      'pipe:1',
    ];
    run(binary('ffmpeg'), args, stdio, signal, (stdout) => this.parse(stdout as AsyncIterable<Buffer>, maxFramePixels))
      .then(({ code, stderr }) => {
        if (code !== 0) throw new Error(`${name}: ffmpeg failed (exit ${code}): ${clean(stderr.trim().split('\n')[0])}`);
      })
      .catch((e) => {
        // Stopped by the reader (break / return): not a failure.
        if (!(this.stop.signal.aborted && !options.signal?.aborted)) this.failure = e;
      })
      .finally(() => {
        this.ended = true;
        this.wake();
      });
  }

  /** Stops reading: kills ffmpeg (the frames not yet handed out are dropped, uncounted). */
  close(): void {
    this.stop.abort(new AbortError());
    this.taken?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<StreamFrame> {
    try {
      for (;;) {
        throwIfAborted(this.signal);
        while (this.pending === null && !this.ended) await new Promise<void>((resolve) => (this.waiter = resolve));
        throwIfAborted(this.signal); // the caller's abort: no frame after it, even one already waiting
        if (this.pending !== null) {
          const frame = this.pending;
          this.pending = null;
          this.taken?.();
          yield frame;
        } else if (this.failure !== null) {
          throw this.failure;
        } else {
          return;
        }
      }
    } finally {
      this.close();
    }
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private async parse(stdout: AsyncIterable<Buffer>, maxFramePixels: number): Promise<void> {
    let head = Buffer.alloc(0);
    let frame: RGBImage | null = null;
    let filled = 0;
    for await (const chunk of stdout) {
      for (let at = 0; at < chunk.length;) {
        if (frame === null) {
          const [start, before] = [at, head.length];
          head = Buffer.concat([head, chunk.subarray(at, at + 64)]);
          const m = PPM_HEADER.exec(head.toString('latin1'));
          if (m === null) {
            if (head.length >= 64) throw new Error(`${this.name}: unexpected output from ffmpeg (not a PPM frame)`);
            at = chunk.length;
            continue;
          }
          const [width, height] = [Number(m[1]), Number(m[2])];
          if (m[3] !== '255') throw new Error(`${this.name}: ffmpeg sent ${m[3]}-level samples (expected 8-bit)`);
          if (width * height > maxFramePixels) throw new Error(`${this.name}: frames of ${width}x${height} are over maxFramePixels ${maxFramePixels}`);
          at = start + m[0].length - before; // the first data byte in this chunk
          head = Buffer.alloc(0);
          frame = { width, height, data: new Uint8Array(width * height * 3) };
          filled = 0;
        }
        const n = Math.min(chunk.length - at, frame.data.length - filled);
        frame.data.set(chunk.subarray(at, at + n), filled);
        at += n;
        filled += n;
        if (filled === frame.data.length) {
          await this.offer(frame);
          frame = null;
        }
      }
    }
    if (frame !== null || head.length > 0) throw new Error(`${this.name}: ffmpeg's output ended inside a frame`);
  }

  /** Hands a frame on: dropping the undelivered one (dropLate), or waiting until the reader takes it. */
  private async offer(image: RGBImage): Promise<void> {
    const index = this.received++;
    if (this.pending !== null) {
      if (this.dropLate) this.dropped++;
      else await new Promise<void>((resolve) => (this.taken = resolve));
      if (this.stop.signal.aborted) throw new AbortError();
    }
    this.taken = null;
    this.pending = { image, index, time: index / this.fps };
    this.wake();
  }
}

/** The frames of a video file, a growing file, a pipe (a descriptor) or a URL ffmpeg reads, at a fixed rate. */
export function frameStream(source: VideoFile, options: FrameStreamOptions): FrameStream {
  return new FrameStream(source, options);
}

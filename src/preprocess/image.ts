// Image preprocessing as upstream's load_image (InternVL2 and PVC): decode to 8-bit RGB as PIL's
// convert('RGB') -> the tiles of dynamic_preprocess, normalised (tiles.ts, in the tiling thread) ->
// [N, 3, S, S] float32.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import { initBackend } from '../backend';
import { checkHeader, decodePillowRGB } from './decode';
import { PILLOW_MAX_IMAGE_PIXELS } from './formats';
import { RGBImage } from './resample';
import { tileImage } from './tiles';

export interface ImageOptions extends DecodeOptions {
  /** Tile size (the model's image_size). Default 448. */
  inputSize?: number;
  /** Most tiles (excluding the thumbnail). Default 12. */
  maxNum?: number;
  minNum?: number;
  /** Append a whole-image thumbnail when there is more than one tile. Default true. */
  useThumbnail?: boolean;
  /** Also return the 8-bit tiles. */
  returnTiles?: boolean;
}

export interface LoadedImage {
  /** [numPatches, 3, inputSize, inputSize], normalised. The caller owns (disposes) it. */
  pixelValues: tf.Tensor4D;
  numPatches: number;
  /** The chosen grid, columns x rows. */
  grid: [number, number];
  /** Decoded size of the source image. */
  width: number;
  height: number;
  tiles?: RGBImage[];
}

/** Where an image comes from, for error messages. */
function describe(source: string | Buffer): string {
  return typeof source === 'string' ? source : `<Buffer of ${source.length} bytes>`;
}

/** Options of decoding: Pillow's decompression-bomb limits. */
export interface DecodeOptions {
  /**
   * Pillow's Image.MAX_IMAGE_PIXELS: above it a warning, above twice it an error, both checked on the
   * size in the header before anything is decoded. Default 89,478,485 (Pillow's); null for no limit.
   */
  maxPixels?: number | null;
  /** Where the warning goes. Default: stderr. */
  warn?: (message: string) => void;
}

/**
 * Decodes a file or encoded bytes to 8-bit RGB exactly as upstream's `Image.open(f).convert('RGB')`
 * with Pillow 13 (see decode.ts for the formats and Pillow's conversions): grayscale replicated,
 * palettes expanded, alpha dropped without compositing, CMYK by Pillow's formula, no ICC transform,
 * no EXIF orientation applied.
 */
export async function decodeRGB(source: string | Buffer, options: DecodeOptions = {}): Promise<RGBImage> {
  if (typeof source !== 'string' && !((source as unknown) instanceof Uint8Array)) {
    throw new Error(`image source: expected a file path or a Buffer, got ${source === null ? 'null' : typeof source}`);
  }
  const what = describe(source);
  const maxPixels = options.maxPixels === undefined ? PILLOW_MAX_IMAGE_PIXELS : options.maxPixels;
  if (maxPixels !== null && !(Number.isInteger(maxPixels) && maxPixels > 0)) {
    throw new Error(`maxPixels ${maxPixels}: expected a positive integer, or null for no limit`);
  }
  const limit = { maxPixels, warn: options.warn ?? ((m: string) => process.stderr.write(m + '\n')) };
  if (typeof source === 'string') {
    let stat: fs.Stats;
    try {
      stat = await fs.promises.stat(source);
    } catch {
      throw new Error(`${what}: no such image file`);
    }
    if (!stat.isFile()) throw new Error(`${what}: not a file`);
    if (stat.size === 0) throw new Error(`${what}: the file is empty (0 bytes)`);
    // The limits are checked on the header before the whole file is read: only as much of the start
    // as the header needs (headers of JPEG with large metadata segments reach further).
    const fh = await fs.promises.open(source, 'r');
    try {
      for (let want = 64 * 1024; ; want *= 4) {
        const n = Math.min(want, stat.size);
        let head = Buffer.alloc(n);
        const { bytesRead } = await fh.read(head, 0, n, 0);
        head = head.subarray(0, bytesRead);
        const complete = bytesRead === stat.size;
        const format = checkHeader(head, what, limit, complete);
        if (format !== null) {
          const bytes = complete
            ? head
            : await fs.promises.readFile(source).catch((e: Error) => {
                throw new Error(`${what}: cannot read the file (${e.message})`, { cause: e });
              });
          return await decodePillowRGB(bytes, format, what, limit);
        }
        if (complete) throw new Error(`${what}: cannot decode the image (truncated header)`);
      }
    } finally {
      await fh.close();
    }
  }
  if (source.length === 0) throw new Error(`${what}: the buffer is empty`);
  const u8 = source as Uint8Array;
  const bytes = Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.length);
  const format = checkHeader(bytes, what, limit, true)!;
  return decodePillowRGB(bytes, format, what, limit);
}

function checkOptions(o: { inputSize: number; minNum: number; maxNum: number }): void {
  if (!Number.isInteger(o.inputSize) || o.inputSize <= 0) throw new Error(`inputSize ${o.inputSize}: expected a positive integer`);
  if (!Number.isInteger(o.minNum) || !Number.isInteger(o.maxNum) || o.minNum < 1 || o.maxNum < o.minNum) {
    throw new Error(`minNum ${o.minNum} / maxNum ${o.maxNum}: expected integers with 1 <= minNum <= maxNum`);
  }
}

/** Loads an image file (or encoded bytes, e.g. a request body) into model input, as upstream's load_image. */
export async function loadImage(source: string | Buffer, options: ImageOptions = {}): Promise<LoadedImage> {
  const o = { inputSize: options.inputSize ?? 448, maxNum: options.maxNum ?? 12, minNum: options.minNum ?? 1, useThumbnail: options.useThumbnail ?? true };
  checkOptions(o);
  const image = await decodeRGB(source, { maxPixels: options.maxPixels, warn: options.warn }); // limits checked before the backend starts
  await initBackend(); // the tensor goes to the chosen backend (a no-op once one is active)
  const { pixels, numTiles, grid, tiles } = await tileImage(
    image,
    { minNum: o.minNum, maxNum: o.maxNum, imageSize: o.inputSize, useThumbnail: o.useThumbnail },
    { returnTiles: options.returnTiles },
  );
  return {
    pixelValues: tf.tensor4d(pixels, [numTiles, 3, o.inputSize, o.inputSize]),
    numPatches: numTiles,
    grid,
    width: image.width,
    height: image.height,
    ...(options.returnTiles ? { tiles } : {}),
  };
}

// Image preprocessing as upstream's load_image / dynamic_preprocess (InternVL2 and PVC):
//   decode to 8-bit RGB as PIL's convert('RGB') -> choose a grid of tiles by aspect ratio -> resize
//   (Pillow bicubic) to the grid -> crop tiles row-major -> thumbnail of the whole image last (when
//   more than one tile) -> ToTensor + Normalize (ImageNet mean / std) -> [N, 3, S, S] float32.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import { initBackend } from '../backend';
import { checkHeader, decodePillowRGB } from './decode';
import { PILLOW_MAX_IMAGE_PIXELS } from './formats';
import { cropRGB, resizeRGB, RGBImage } from './resample';

export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

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

// ---- the tile grid ---------------------------------------------------------------------------------

const M64 = (1n << 64n) - 1n;
const XXPRIME_1 = 11400714785074694791n;
const XXPRIME_2 = 14029467366897019727n;
const XXPRIME_5 = 2870177450012600261n;

/** CPython's hash of a tuple of small non-negative ints (3.8+, xxHash-based), as an unsigned 64-bit value. */
function tupleHash(items: number[]): bigint {
  let acc = XXPRIME_5;
  for (const item of items) {
    acc = (acc + BigInt(item) * XXPRIME_2) & M64;
    acc = ((acc << 31n) | (acc >> 33n)) & M64;
    acc = (acc * XXPRIME_1) & M64;
  }
  acc = (acc + (BigInt(items.length) ^ (XXPRIME_5 ^ 3527539n))) & M64;
  return acc === M64 ? 1546275796n : acc;
}

/**
 * The iteration order of a CPython set built by adding `items` in order (open addressing with 9
 * linear probes then perturbed jumps; resized to 4x the used count when 3/5 full).
 */
function cpythonSetOrder(items: [number, number][]): [number, number][] {
  const LINEAR_PROBES = 9;
  let mask = 7;
  let table: ({ key: [number, number]; hash: bigint } | null)[] = new Array(8).fill(null);
  let used = 0;
  const probe = (tbl: typeof table, m: number, hash: bigint, isMatch: (i: number) => boolean): number => {
    let perturb = hash;
    let i = Number(hash & BigInt(m));
    for (;;) {
      const probes = i + LINEAR_PROBES <= m ? LINEAR_PROBES : 0;
      for (let j = 0; j <= probes; j++) if (tbl[i + j] === null || isMatch(i + j)) return i + j;
      perturb >>= 5n;
      i = Number((BigInt(i) * 5n + 1n + perturb) & BigInt(m));
    }
  };
  for (const key of items) {
    const hash = tupleHash(key);
    const slot = probe(table, mask, hash, (s) => table[s]!.hash === hash && table[s]!.key[0] === key[0] && table[s]!.key[1] === key[1]);
    if (table[slot] !== null) continue; // already present
    table[slot] = { key, hash };
    used++;
    if (used * 5 >= mask * 3) {
      let size = 8;
      while (size <= used * 4) size *= 2;
      const old = table;
      table = new Array(size).fill(null);
      mask = size - 1;
      for (const e of old) if (e !== null) table[probe(table, mask, e.hash, () => false)] = e;
    }
  }
  return table.filter((e) => e !== null).map((e) => e!.key);
}

/** Upstream's candidate grids (columns, rows): a Python set of (i, j) with min <= i*j <= max, sorted by i*j (stable). */
export function candidateGrids(minNum: number, maxNum: number): [number, number][] {
  const items: [number, number][] = [];
  for (let n = minNum; n <= maxNum; n++) {
    for (let i = 1; i <= n; i++) for (let j = 1; j <= n; j++) if (i * j <= maxNum && i * j >= minNum) items.push([i, j]);
  }
  return cpythonSetOrder(items).sort((a, b) => a[0] * a[1] - b[0] * b[1]);
}

/** Upstream's find_closest_aspect_ratio, ties to the later candidate when the image is large enough. */
export function chooseGrid(width: number, height: number, candidates: [number, number][], imageSize: number): [number, number] {
  const aspect = width / height;
  let bestDiff = Infinity;
  let best: [number, number] = [1, 1];
  const area = width * height;
  for (const r of candidates) {
    const diff = Math.abs(aspect - r[0] / r[1]);
    if (diff < bestDiff) {
      bestDiff = diff;
      best = r;
    } else if (diff === bestDiff && area > 0.5 * imageSize * imageSize * r[0] * r[1]) {
      best = r;
    }
  }
  return best;
}

/** Upstream's dynamic_preprocess on a decoded image: the 8-bit tiles, thumbnail last. */
export function dynamicPreprocess(
  image: RGBImage,
  options: { minNum: number; maxNum: number; imageSize: number; useThumbnail: boolean },
): { tiles: RGBImage[]; grid: [number, number] } {
  const { minNum, maxNum, imageSize, useThumbnail } = options;
  const grid = chooseGrid(image.width, image.height, candidateGrids(minNum, maxNum), imageSize);
  const [cols, rows] = grid;
  const resized = resizeRGB(image, imageSize * cols, imageSize * rows);
  const tiles: RGBImage[] = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) tiles.push(cropRGB(resized, c * imageSize, r * imageSize, imageSize, imageSize));
  if (useThumbnail && tiles.length !== 1) tiles.push(resizeRGB(image, imageSize, imageSize));
  return { tiles, grid };
}

/** ToTensor + Normalize of square tiles: [N, 3, S, S] float32, computed as torchvision does in float32. */
export function tilesToTensor(tiles: RGBImage[]): tf.Tensor4D {
  const S = tiles[0].width;
  const plane = S * S;
  const out = new Float32Array(tiles.length * 3 * plane);
  const f = Math.fround;
  const mean = IMAGENET_MEAN.map(f);
  const std = IMAGENET_STD.map(f);
  tiles.forEach((tile, n) => {
    for (let c = 0; c < 3; c++) {
      const base = (n * 3 + c) * plane;
      for (let p = 0; p < plane; p++) out[base + p] = f(f(f(tile.data[p * 3 + c] / 255) - mean[c]) / std[c]);
    }
  });
  return tf.tensor4d(out, [tiles.length, 3, S, S]);
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
  const { tiles, grid } = dynamicPreprocess(image, { minNum: o.minNum, maxNum: o.maxNum, imageSize: o.inputSize, useThumbnail: o.useThumbnail });
  return {
    pixelValues: tilesToTensor(tiles),
    numPatches: tiles.length,
    grid,
    width: image.width,
    height: image.height,
    ...(options.returnTiles ? { tiles } : {}),
  };
}

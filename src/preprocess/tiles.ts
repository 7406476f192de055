// The tiles of an image, as upstream's dynamic_preprocess and its transform: a grid of tiles chosen by
// aspect ratio, the image resized to it (Pillow bicubic) and cut row-major, a thumbnail last (when more
// than one tile), then ToTensor + Normalize (ImageNet mean / std) to float32 [N, 3, S, S] values.
// Resizing a 4K frame takes 110-190 ms of JavaScript, so `tileImage` runs all of it in a worker thread
// (tile_worker.ts): the event loop stays free while images and video frames are tiled.
import * as path from 'path';
import type { Worker } from 'worker_threads';
import { startThread } from '../event_loop';
import { cropRGB, resizeRGB, RGBImage } from './resample';

export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

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

/** The grid upstream's dynamic_preprocess picks for an image of this size, and its tile count (thumbnail included). */
export function tileGrid(width: number, height: number, options: TileOptions): { grid: [number, number]; numTiles: number } {
  const grid = chooseGrid(width, height, candidateGrids(options.minNum, options.maxNum), options.imageSize);
  const n = grid[0] * grid[1];
  return { grid, numTiles: n + (options.useThumbnail && n !== 1 ? 1 : 0) };
}

/** Upstream's dynamic_preprocess on a decoded image: the 8-bit tiles, thumbnail last. */
export function dynamicPreprocess(image: RGBImage, options: TileOptions): { tiles: RGBImage[]; grid: [number, number] } {
  const { imageSize, useThumbnail } = options;
  const { grid } = tileGrid(image.width, image.height, options);
  const [cols, rows] = grid;
  const resized = resizeRGB(image, imageSize * cols, imageSize * rows);
  const tiles: RGBImage[] = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) tiles.push(cropRGB(resized, c * imageSize, r * imageSize, imageSize, imageSize));
  if (useThumbnail && tiles.length !== 1) tiles.push(resizeRGB(image, imageSize, imageSize));
  return { tiles, grid };
}

/** ToTensor + Normalize of square tiles: [N, 3, S, S] float32 values, computed as torchvision does in float32. */
export function normalizeTiles(tiles: RGBImage[]): Float32Array {
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
  return out;
}

export interface TileOptions {
  minNum: number;
  maxNum: number;
  imageSize: number;
  useThumbnail: boolean;
}

/** An image's tiles: their normalised values [numTiles, 3, S, S], the grid, and the 8-bit tiles when asked for. */
export interface TiledImage {
  pixels: Float32Array;
  numTiles: number;
  grid: [number, number];
  tiles?: RGBImage[];
  /** The image's own pixels, given back when they were transferred (TileCall.transfer). */
  source?: Uint8Array;
}

export interface TileCall {
  /** Also return the 8-bit tiles. */
  returnTiles?: boolean;
  /**
   * Move the image's buffer to the tiling thread instead of copying it (the caller's view is empty
   * until `source` brings it back): a video's frame buffers go back and forth, no copy and no garbage.
   */
  transfer?: boolean;
}

/** What the main thread and tile_worker.ts say to each other. */
export interface TileRequest {
  id: number;
  image: RGBImage;
  options: TileOptions;
  call: TileCall;
}
export type TileReply = { id: number; tiled: TiledImage } | { id: number; error: string; source?: Uint8Array };

/** dynamicPreprocess then normalizeTiles (what the worker runs). */
export function tile(image: RGBImage, options: TileOptions, returnTiles = false): TiledImage {
  const { tiles, grid } = dynamicPreprocess(image, options);
  return { pixels: normalizeTiles(tiles), numTiles: tiles.length, grid, ...(returnTiles ? { tiles } : {}) };
}

interface Tiler {
  worker: Worker;
  pending: Map<number, { resolve: (t: TiledImage) => void; reject: (e: Error) => void }>;
}

let tiler: Tiler | null = null;
let nextId = 0;

/** The one tiling thread, started on first use; it keeps the process alive only while it has work. */
function startTiler(): Tiler {
  const worker = startThread(path.join(__dirname, `tile_worker${path.extname(__filename)}`));
  const t: Tiler = { worker, pending: new Map() };
  const failAll = (e: Error) => {
    if (tiler === t) tiler = null;
    for (const p of t.pending.values()) p.reject(e);
    t.pending.clear();
  };
  worker.on('message', (reply: TileReply) => {
    const p = t.pending.get(reply.id);
    t.pending.delete(reply.id);
    if (t.pending.size === 0) worker.unref();
    if ('error' in reply) p?.reject(new Error(reply.error));
    else p?.resolve(reply.tiled);
  });
  worker.on('error', failAll);
  worker.on('exit', (code) => failAll(new Error(`the tiling thread exited (code ${code})`)));
  worker.unref();
  return t;
}

/**
 * `tile` in the tiling thread. The image's pixels are copied to it at the call (the caller may reuse
 * its buffer as soon as this returns), or moved (`call.transfer`); the tiles come back without a copy.
 */
export function tileImage(image: RGBImage, options: TileOptions, call: TileCall = {}): Promise<TiledImage> {
  tiler ??= startTiler();
  const t = tiler;
  const id = nextId++;
  // A view of a larger buffer would carry all of it: only the image's bytes are sent.
  const whole = image.data.byteOffset === 0 && image.data.byteLength === image.data.buffer.byteLength;
  const data = whole ? image.data : image.data.slice();
  const request: TileRequest = { id, image: { width: image.width, height: image.height, data }, options, call };
  return new Promise((resolve, reject) => {
    t.pending.set(id, { resolve, reject });
    t.worker.ref();
    t.worker.postMessage(request, call.transfer ? [data.buffer as ArrayBuffer] : []);
  });
}

// The first frame of a GIF as Pillow 13 opens it and converts it to RGB. libvips composites the
// frame over a transparent canvas; Pillow keeps palette indices, so:
//   - the canvas is the logical screen, grown to hold the first frame when that reaches past it;
//   - outside the frame it holds the frame's transparent index when it has one, else index 0;
//   - transparent pixels keep their palette colour (convert('RGB') drops transparency);
//   - the frame's local palette, else the global one, each unless it equals the gray ramp (no palette
//     left: an "L" image whose values are the indices); indices past the palette are black.
import type { RGBImage } from './resample';

const u16 = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8);

/** Large images take seconds to decode in JavaScript: the decoders yield to the event loop this often. */
const PIXELS_PER_TURN = 1 << 20;
const CODES_PER_TURN = 1 << 16; // a code stands for up to 4096 pixels
export const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function decodeGIF(b: Uint8Array): Promise<RGBImage> {
  const fail = (m: string): never => {
    throw new Error(m);
  };
  if (b.length < 13) fail('truncated GIF header');
  let width = u16(b, 6);
  let height = u16(b, 8);
  let i = 13;
  let globalPalette: Uint8Array | null = null;
  if (b[10] & 0x80) {
    const n = 3 << ((b[10] & 7) + 1);
    if (b.length < i + n) fail('truncated GIF palette');
    globalPalette = b.subarray(i, i + n);
    i += n;
  }
  let transparency: number | null = null;
  for (;;) {
    if (i >= b.length || b[i] === 0x3b) return fail('GIF without an image');
    if (b[i] === 0x21) {
      const label = b[i + 1];
      i += 2;
      if (label === 0xf9 && b[i] >= 4 && i + 4 < b.length) transparency = b[i + 1] & 1 ? b[i + 4] : null;
      while (i < b.length && b[i] !== 0) i += b[i] + 1;
      i++;
    } else if (b[i] === 0x2c) {
      break;
    } else {
      i++; // Pillow reads on past unknown bytes
    }
  }
  if (i + 10 > b.length) fail('truncated GIF image descriptor');
  const x0 = u16(b, i + 1),
    y0 = u16(b, i + 3),
    fw = u16(b, i + 5),
    fh = u16(b, i + 7);
  const flags = b[i + 9];
  i += 10;
  width = Math.max(width, x0 + fw);
  height = Math.max(height, y0 + fh);
  // Pillow drops a palette equal to the gray ramp; when the local one is dropped, the image is "L"
  // but still carries the global palette, which its conversion to RGB then applies.
  if (globalPalette && isGrayRamp(globalPalette)) globalPalette = null;
  let palette = globalPalette;
  if (flags & 0x80) {
    const n = 3 << ((flags & 7) + 1);
    if (b.length < i + n) fail('truncated GIF local palette');
    const local = b.subarray(i, i + n);
    if (!isGrayRamp(local)) palette = local;
    i += n;
  }
  const canvas = new Uint8Array(width * height).fill(transparency ?? 0);
  if (i >= b.length) fail('truncated GIF image data');
  const minCodeSize = b[i++];
  if (minCodeSize < 1 || minCodeSize > 11) fail(`GIF LZW code size ${minCodeSize}`);
  // The sub-blocks, joined.
  const chunks: Uint8Array[] = [];
  while (i < b.length && b[i] !== 0) {
    chunks.push(b.subarray(i + 1, Math.min(b.length, i + 1 + b[i])));
    i += b[i] + 1;
  }
  const data = Buffer.concat(chunks);
  const rows = interlacedRows(fh, (flags & 0x40) !== 0);
  let px = 0;
  const total = fw * fh;
  const emit = (v: number) => {
    if (px >= total) return;
    const y = rows[Math.floor(px / fw)];
    canvas[(y0 + y) * width + x0 + (px % fw)] = v;
    px++;
  };
  await lzwDecode(data, minCodeSize, emit, () => px >= total);
  // Pillow refuses a frame that ends early, by its end code or its data ("image file is truncated").
  if (px < total) fail(`truncated GIF image data (${px} of ${total} pixels)`);
  const out = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    if (p % PIXELS_PER_TURN === PIXELS_PER_TURN - 1) await nextTurn();
    const v = canvas[p];
    if (palette) {
      if (v * 3 + 2 < palette.length) {
        out[p * 3] = palette[v * 3];
        out[p * 3 + 1] = palette[v * 3 + 1];
        out[p * 3 + 2] = palette[v * 3 + 2];
      }
    } else {
      out[p * 3] = out[p * 3 + 1] = out[p * 3 + 2] = v;
    }
  }
  return { width, height, data: out };
}

/** Pillow's _is_palette_needed, negated: entry k is (k, k, k) for every entry. */
function isGrayRamp(p: Uint8Array): boolean {
  for (let k = 0; k * 3 + 2 < p.length; k++) if (p[k * 3] !== k || p[k * 3 + 1] !== k || p[k * 3 + 2] !== k) return false;
  return true;
}

function interlacedRows(h: number, interlaced: boolean): number[] {
  if (!interlaced) return Array.from({ length: h }, (_, k) => k);
  const rows: number[] = [];
  for (const [start, step] of [
    [0, 8],
    [4, 8],
    [2, 4],
    [1, 2],
  ])
    for (let y = start; y < h; y += step) rows.push(y);
  return rows;
}

/** GIF's variable-width LZW (LSB-first codes, clear and end codes, at most 12 bits). */
async function lzwDecode(data: Uint8Array, minCodeSize: number, emit: (v: number) => void, done: () => boolean): Promise<void> {
  const clear = 1 << minCodeSize;
  const end = clear + 1;
  const prefix = new Int16Array(4096);
  const suffix = new Uint8Array(4096);
  const first = new Uint8Array(4096);
  const stack = new Uint8Array(4097);
  for (let k = 0; k < clear; k++) {
    suffix[k] = k;
    first[k] = k;
    prefix[k] = -1;
  }
  let size = minCodeSize + 1;
  let next = clear + 2;
  let prev = -1;
  let acc = 0;
  let bits = 0;
  let pos = 0;
  const out = (code: number) => {
    let n = 0;
    for (let c = code; c !== -1; c = prefix[c]) stack[n++] = suffix[c];
    while (n > 0) emit(stack[--n]);
  };
  for (let n = 1; !done(); n++) {
    if (n % CODES_PER_TURN === 0) await nextTurn();
    while (bits < size && pos < data.length) {
      acc |= data[pos++] << bits;
      bits += 8;
    }
    if (bits < size) return; // the data ran out
    const code = acc & ((1 << size) - 1);
    acc >>>= size;
    bits -= size;
    if (code === clear) {
      size = minCodeSize + 1;
      next = clear + 2;
      prev = -1;
      continue;
    }
    if (code === end) return;
    if (prev === -1) {
      if (code >= clear) throw new Error(`GIF LZW: code ${code} before any string`);
      out(code);
      prev = code;
      continue;
    }
    if (code > next || (code === next && next >= 4096)) throw new Error(`GIF LZW: code ${code} past the table (${next})`);
    if (next < 4096) {
      prefix[next] = prev;
      suffix[next] = code < next ? first[code] : first[prev];
      first[next] = first[prev];
      next++;
      if (next === 1 << size && size < 12) size++;
    }
    out(code);
    prev = code;
  }
}

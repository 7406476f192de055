// BMP decoding as Pillow 13's BmpImagePlugin + convert('RGB') (sharp has no BMP loader). Written from
// Pillow's documented behaviour and held to it by the format fixtures:
//   - headers: OS/2 (12 bytes; 16-bit size, 3-byte palette entries) and Windows 40/52/56/64/108/124;
//     a height with its top byte 0xff means top-down rows;
//   - 1/4/8-bit palettes (a palette equal to Pillow's grayscale ramp makes the image "1" or "L", whose
//     raw modes read the pixel data as 1-bit or 8-bit values), 16-bit 5-5-5, 24-bit, 32-bit BGRX;
//   - BI_BITFIELDS only with the masks Pillow knows; RLE8 / RLE4 as Pillow's BmpRleDecoder (pixels a
//     delta skips stay 0, a bitmap that ends before its last row is an error);
//   - alpha is dropped, as convert('RGB') does.
import type { RGBImage } from './resample';
import { nextTurn } from './gif';

const ROWS_PER_TURN = 256; // rows decoded between yields to the event loop (a large image takes seconds)

const u16 = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8);
const u32 = (b: Uint8Array, i: number) => b[i] + (b[i + 1] << 8) + (b[i + 2] << 16) + ((b[i + 3] << 24) >>> 0);

type RawMode = 'P;1' | 'P;4' | 'P' | '1' | 'L' | 'BGR;15' | 'BGR;16' | 'BGR' | 'BGRX' | 'XBGR' | 'BGXR' | 'ABGR' | 'RGBA' | 'BGRA' | 'BGAR';
const RAW_BITS: Record<RawMode, number> = {
  'P;1': 1,
  'P;4': 4,
  P: 8,
  '1': 1,
  L: 8,
  'BGR;15': 16,
  'BGR;16': 16,
  BGR: 24,
  BGRX: 32,
  XBGR: 32,
  BGXR: 32,
  ABGR: 32,
  RGBA: 32,
  BGRA: 32,
  BGAR: 32,
};
// Byte offsets of R, G, B within a 4-byte pixel for each 32-bit raw mode.
const RGB_AT: Partial<Record<RawMode, [number, number, number]>> = {
  BGRX: [2, 1, 0],
  XBGR: [3, 2, 1],
  BGXR: [3, 1, 0],
  ABGR: [3, 2, 1],
  RGBA: [0, 1, 2],
  BGRA: [2, 1, 0],
  BGAR: [3, 1, 0],
};
const MASKS32: [number[], RawMode][] = [
  [[0xff0000, 0xff00, 0xff, 0], 'BGRX'],
  [[0xff000000, 0xff0000, 0xff00, 0], 'XBGR'],
  [[0xff000000, 0xff00, 0xff, 0], 'BGXR'],
  [[0xff000000, 0xff0000, 0xff00, 0xff], 'ABGR'],
  [[0xff, 0xff00, 0xff0000, 0xff000000], 'RGBA'],
  [[0xff0000, 0xff00, 0xff, 0xff000000], 'BGRA'],
  [[0xff000000, 0xff00, 0xff, 0xff0000], 'BGAR'],
  [[0, 0, 0, 0], 'BGRA'],
];

export async function decodeBMP(b: Uint8Array): Promise<RGBImage> {
  const fail = (m: string): never => {
    throw new Error(m);
  };
  if (b.length < 18) fail('truncated BMP header');
  const offset = u32(b, 10);
  const headerSize = u32(b, 14);
  if (b.length < 14 + headerSize) fail('truncated BMP header');
  let width: number,
    height: number,
    bits: number,
    compression: number,
    colors = 0,
    paletteEntry: number;
  let topDown = false;
  let masks: number[] | null = null;
  if (headerSize === 12) {
    width = u16(b, 18);
    height = u16(b, 20);
    bits = u16(b, 24);
    compression = 0;
    paletteEntry = 3;
  } else if ([40, 52, 56, 64, 108, 124].includes(headerSize)) {
    topDown = b[25] === 0xff;
    width = u32(b, 18);
    height = topDown ? 2 ** 32 - u32(b, 22) : u32(b, 22);
    bits = u16(b, 28);
    compression = u32(b, 30);
    colors = u32(b, 46);
    paletteEntry = 4;
    if (compression === 3) {
      if (headerSize >= 52) masks = [u32(b, 54), u32(b, 58), u32(b, 62), headerSize >= 56 ? u32(b, 66) : 0];
      else {
        if (b.length < 66) fail('truncated BMP bitfields');
        masks = [u32(b, 54), u32(b, 58), u32(b, 62), 0];
      }
    }
  } else {
    return fail(`unsupported BMP header type (${headerSize})`);
  }
  const p = 14 + headerSize + (headerSize === 40 && compression === 3 ? 12 : 0); // the palette follows (Pillow reads on)
  if (!colors) colors = 2 ** bits;
  let mode: 'P' | '1' | 'L' | 'RGB';
  let raw: RawMode;
  switch (bits) {
    case 1:
      mode = 'P';
      raw = 'P;1';
      break;
    case 4:
      mode = 'P';
      raw = 'P;4';
      break;
    case 8:
      mode = 'P';
      raw = 'P';
      break;
    case 16:
      mode = 'RGB';
      raw = 'BGR;15';
      break;
    case 24:
      mode = 'RGB';
      raw = 'BGR';
      break;
    case 32:
      mode = 'RGB';
      raw = 'BGRX';
      break;
    default:
      return fail(`unsupported BMP pixel depth (${bits})`);
  }
  let rle = false;
  if (compression === 3) {
    const m = masks!;
    const found =
      bits === 32
        ? MASKS32.find(([k]) => k.every((v, i) => v === m[i]))?.[1]
        : bits === 24 && m[0] === 0xff0000 && m[1] === 0xff00 && m[2] === 0xff
          ? 'BGR'
          : bits === 16 && m[0] === 0xf800 && m[1] === 0x7e0 && m[2] === 0x1f
            ? 'BGR;16'
            : bits === 16 && m[0] === 0x7c00 && m[1] === 0x3e0 && m[2] === 0x1f
              ? 'BGR;15'
              : undefined;
    raw = found ?? fail('unsupported BMP bitfields layout');
  } else if (compression === 1 || compression === 2) {
    rle = true;
  } else if (compression !== 0) {
    return fail(`unsupported BMP compression (${compression})`);
  }
  let palette: Uint8Array | null = null;
  if (mode === 'P') {
    if (!(colors > 0 && colors <= 65536)) fail(`unsupported BMP palette size (${colors})`);
    if (colors > 256) fail(`BMP palette of ${colors} colours (Pillow refuses more than 256)`);
    if (b.length < p + colors * paletteEntry) fail('truncated BMP palette');
    let gray = true;
    for (let i = 0; i < colors && gray; i++) {
      const v = colors === 2 ? (i === 0 ? 0 : 255) : i;
      const e = p + i * paletteEntry;
      if (b[e] !== v || b[e + 1] !== v || b[e + 2] !== v) gray = false;
    }
    if (gray) {
      mode = colors <= 2 ? '1' : 'L';
      raw = mode;
    } else {
      palette = new Uint8Array(256 * 3); // entries past the palette are black (a zeroed palette in Pillow)
      for (let i = 0; i < colors; i++) {
        const e = p + i * paletteEntry;
        palette[i * 3] = b[e + 2];
        palette[i * 3 + 1] = b[e + 1];
        palette[i * 3 + 2] = b[e];
      }
    }
  }
  let dataAt = offset;
  if (offset === 14 + headerSize && bits <= 8) dataAt += paletteEntry * colors; // Pillow: an offset that points at the palette
  if (!dataAt) dataAt = p + (mode === 'P' || mode === '1' || mode === 'L' ? colors * paletteEntry : 0);
  // Rows are as wide as the file's depth makes them, whatever the raw mode reads of each.
  const stride = ((width * bits + 31) >> 3) & ~3;
  if (!rle && height > 0) {
    // Pillow needs the last row's pixels, not its padding.
    const needed = stride * (height - 1) + ((width * RAW_BITS[raw] + 7) >> 3);
    if (b.length < dataAt + needed) fail(`truncated BMP pixel data (${Math.max(0, b.length - dataAt)} of ${needed} bytes)`);
  }
  const out = new Uint8Array(width * height * 3);
  const put = (x: number, row: number, r: number, g: number, bl: number) => {
    const y = topDown ? row : height - 1 - row; // row counts stored rows
    const o = (y * width + x) * 3;
    out[o] = r;
    out[o + 1] = g;
    out[o + 2] = bl;
  };
  const putIndex = (x: number, row: number, v: number, asMode: string) => {
    if (asMode === 'P') put(x, row, palette![v * 3], palette![v * 3 + 1], palette![v * 3 + 2]);
    else put(x, row, v, v, v);
  };
  if (rle) {
    // Pillow's RLE decoder gives indices; its raw mode is "L" for "1" / "L" images, "P" otherwise.
    // Into a "1" image those values are stored as they are, and its conversion makes nonzero white.
    const indices = decodeRLE(b, dataAt, width, height, compression === 2);
    for (let row = 0; row < height; row++) {
      if (row % ROWS_PER_TURN === ROWS_PER_TURN - 1) await nextTurn();
      for (let x = 0; x < width; x++) {
        const v = indices[row * width + x];
        putIndex(x, row, mode === '1' ? (v ? 255 : 0) : v, mode === 'P' ? 'P' : 'L');
      }
    }
    return { width, height, data: out };
  }
  const rgbAt = RGB_AT[raw];
  for (let row = 0; row < height; row++) {
    if (row % ROWS_PER_TURN === ROWS_PER_TURN - 1) await nextTurn();
    const s = dataAt + row * stride;
    for (let x = 0; x < width; x++) {
      switch (raw) {
        case 'P;1':
          putIndex(x, row, (b[s + (x >> 3)] >> (7 - (x & 7))) & 1, 'P');
          break;
        case 'P;4':
          putIndex(x, row, (b[s + (x >> 1)] >> (x & 1 ? 0 : 4)) & 15, 'P');
          break;
        case 'P':
          putIndex(x, row, b[s + x], 'P');
          break;
        case '1':
          putIndex(x, row, (b[s + (x >> 3)] >> (7 - (x & 7))) & 1 ? 255 : 0, 'L');
          break;
        case 'L':
          putIndex(x, row, b[s + x], 'L');
          break;
        case 'BGR;15':
        case 'BGR;16': {
          const v = u16(b, s + 2 * x);
          if (raw === 'BGR;15') put(x, row, ((((v >> 10) & 31) * 255) / 31) | 0, ((((v >> 5) & 31) * 255) / 31) | 0, (((v & 31) * 255) / 31) | 0);
          else put(x, row, ((((v >> 11) & 31) * 255) / 31) | 0, ((((v >> 5) & 63) * 255) / 63) | 0, (((v & 31) * 255) / 31) | 0);
          break;
        }
        case 'BGR':
          put(x, row, b[s + 3 * x + 2], b[s + 3 * x + 1], b[s + 3 * x]);
          break;
        default: {
          const o = s + 4 * x;
          put(x, row, b[o + rgbAt![0]], b[o + rgbAt![1]], b[o + rgbAt![2]]);
        }
      }
    }
  }
  return { width, height, data: out };
}

/** Pillow's BmpRleDecoder: palette indices in stored row order; fd.tell() parity is the file offset's. */
function decodeRLE(b: Uint8Array, start: number, width: number, height: number, rle4: boolean): Uint8Array {
  const total = width * height;
  const data = new Uint8Array(total);
  let n = 0; // pixels written
  let x = 0;
  let i = start;
  while (n < total) {
    if (i + 1 >= b.length) break;
    let count = b[i];
    const byte = b[i + 1];
    i += 2;
    if (count) {
      if (x + count > width) count = Math.max(0, width - x);
      count = Math.min(count, total - n);
      for (let k = 0; k < count; k++) data[n++] = rle4 ? (k % 2 === 0 ? byte >> 4 : byte & 15) : byte;
      x += count;
    } else if (byte === 0) {
      // end of line
      while (n % width !== 0) data[n++] = 0;
      x = 0;
    } else if (byte === 1) {
      // end of bitmap
      break;
    } else if (byte === 2) {
      // delta
      if (i + 1 >= b.length) break;
      n += Math.min(total - n, b[i] + b[i + 1] * width);
      i += 2;
      x = n % width;
    } else {
      // absolute run
      const dataCount = Math.min(total - n, byte);
      const byteCount = rle4 ? (dataCount + 1) >> 1 : dataCount;
      const avail = Math.min(byteCount, b.length - i);
      for (let k = 0; k < avail; k++) {
        if (rle4) {
          data[n++] = b[i + k] >> 4;
          if (k * 2 + 1 < dataCount) data[n++] = b[i + k] & 15;
        } else {
          data[n++] = b[i + k];
        }
      }
      i += avail;
      if (avail < byteCount || n === total) break;
      x += byte;
      if (i % 2 !== 0) i++;
    }
  }
  if (n < total) throw new Error(`BMP RLE data ends after ${n} of ${total} pixels (Pillow: not enough image data)`);
  return data;
}

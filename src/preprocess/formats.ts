// Which image formats are read, how each is recognised, and its size as Pillow reads it from the
// header, so that Pillow's decompression-bomb limits can be checked before anything is decoded.
// Only formats whose decoding is held byte for byte to Pillow 13's (test/preprocess-formats.test.ts)
// are accepted; everything else is refused by name rather than decoded differently from upstream.

export type ImageFormat = 'jpeg' | 'png' | 'gif' | 'webp' | 'bmp' | 'tiff' | 'ppm';

export const SUPPORTED_FORMATS = 'JPEG, PNG, GIF, WebP, BMP, TIFF, PPM/PGM';

/** Pillow's Image.MAX_IMAGE_PIXELS: a warning above it, an error above twice it. */
export const PILLOW_MAX_IMAGE_PIXELS = Math.floor((1024 * 1024 * 1024) / 4 / 3); // 89,478,485

const startsWith = (b: Uint8Array, s: string, at = 0) => b.length >= at + s.length && [...s].every((c, i) => b[at + i] === c.charCodeAt(0));

/** The format from the first bytes, or a description of what it is when it is not one we read. */
export function sniffFormat(b: Uint8Array): ImageFormat | { unsupported: string } {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (startsWith(b, '\x89PNG\r\n\x1a\n')) return 'png';
  if (startsWith(b, 'GIF87a') || startsWith(b, 'GIF89a')) return 'gif';
  if (startsWith(b, 'RIFF') && startsWith(b, 'WEBP', 8)) return 'webp';
  if (startsWith(b, 'BM')) return 'bmp';
  if (startsWith(b, 'II*\0') || startsWith(b, 'MM\0*')) return 'tiff';
  if (b.length >= 3 && b[0] === 0x50 && (b[1] === 0x35 || b[1] === 0x36) && /\s/.test(String.fromCharCode(b[2]))) return 'ppm';
  if (b.length >= 2 && b[0] === 0x50 && b[1] >= 0x31 && b[1] <= 0x37)
    return { unsupported: `Netpbm P${String.fromCharCode(b[1])} (only binary P5 / P6 are read)` };
  if (startsWith(b, 'II+\0') || startsWith(b, 'MM\0+')) return { unsupported: 'BigTIFF' };
  if (startsWith(b, 'ftyp', 4)) return { unsupported: `ISO media (${String.fromCharCode(...b.subarray(8, 12))}: AVIF / HEIF)` };
  if (startsWith(b, '\0\0\0\x0cjP  ') || startsWith(b, '\xff\x4f\xff\x51')) return { unsupported: 'JPEG 2000' };
  if (startsWith(b, '\0\0\x01\0')) return { unsupported: 'ICO' };
  if (startsWith(b, '8BPS')) return { unsupported: 'PSD' };
  if (startsWith(b, '<?xml') || startsWith(b, '<svg')) return { unsupported: 'SVG (Pillow does not open it)' };
  if (startsWith(b, '%PDF')) return { unsupported: 'PDF (Pillow does not open it)' };
  return { unsupported: 'an unknown format' };
}

/** A header that cannot be read; `truncated` when more bytes might make it readable. */
class HeaderError extends Error {
  constructor(
    message: string,
    readonly truncated = false,
  ) {
    super(message);
  }
}
const need = (b: Uint8Array, end: number, what: string) => {
  if (end > b.length) throw new HeaderError(`truncated ${what} header`, true);
};
const u16be = (b: Uint8Array, i: number) => (b[i] << 8) | b[i + 1];
const u16le = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8);
const u32be = (b: Uint8Array, i: number) => ((b[i] << 24) >>> 0) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3];
const u32le = (b: Uint8Array, i: number) => b[i] + (b[i + 1] << 8) + (b[i + 2] << 16) + ((b[i + 3] << 24) >>> 0);

/** The image size Pillow's Image.open reports (and bomb-checks), read from the header alone. */
export function headerSize(b: Uint8Array, format: ImageFormat): { width: number; height: number } {
  switch (format) {
    case 'png':
      need(b, 24, 'PNG');
      if (!startsWith(b, 'IHDR', 12)) throw new HeaderError('PNG without IHDR first');
      return { width: u32be(b, 16), height: u32be(b, 20) };
    case 'jpeg':
      return jpegSize(b);
    case 'gif':
      return gifSize(b);
    case 'webp':
      return webpSize(b);
    case 'bmp': {
      need(b, 30, 'BMP');
      const headerSize = u32le(b, 14);
      if (headerSize === 12) return { width: u16le(b, 18), height: u16le(b, 20) };
      need(b, 26, 'BMP');
      const h = u32le(b, 22);
      // Pillow: a top-down bitmap (height's top byte 0xff) has height 2^32 - h.
      return { width: u32le(b, 18), height: b[25] === 0xff ? 2 ** 32 - h : h };
    }
    case 'tiff':
      return tiffSize(b);
    case 'ppm': {
      const tokens: number[] = [];
      let i = 2;
      while (tokens.length < 2 && i < b.length) {
        if (b[i] === 0x23) {
          while (i < b.length && b[i] !== 0x0a && b[i] !== 0x0d) i++;
          continue;
        } // comment
        if (/\s/.test(String.fromCharCode(b[i]))) {
          i++;
          continue;
        }
        let s = '';
        while (i < b.length && b[i] >= 0x30 && b[i] <= 0x39 && s.length < 10) s += String.fromCharCode(b[i++]);
        if (s === '') throw new HeaderError('bad PPM header');
        tokens.push(Number(s));
      }
      if (tokens.length < 2) throw new HeaderError('truncated PPM header', true);
      return { width: tokens[0], height: tokens[1] };
    }
  }
}

function jpegSize(b: Uint8Array): { width: number; height: number } {
  let i = 2;
  while (i + 1 < b.length) {
    if (b[i] !== 0xff) {
      i++;
      continue;
    } // junk between segments, skipped as Pillow does
    const m = b[i + 1];
    if (m === 0xff || m === 0x00) {
      i++;
      continue;
    }
    if (m === 0x01 || m === 0xd8 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2;
      continue;
    }
    need(b, i + 4, 'JPEG');
    const len = u16be(b, i + 2);
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      need(b, i + 10, 'JPEG');
      // Pillow opens only 8-bit samples in 1, 3 or 4 components (libjpeg-turbo would decode more).
      if (b[i + 4] !== 8) throw new HeaderError(`JPEG with ${b[i + 4]}-bit samples (Pillow reads 8-bit only)`);
      if (![1, 3, 4].includes(b[i + 9])) throw new HeaderError(`JPEG with ${b[i + 9]} components (Pillow reads 1, 3 or 4)`);
      return { width: u16be(b, i + 7), height: u16be(b, i + 5) };
    }
    if (m === 0xda || m === 0xd9) break;
    i += 2 + len;
  }
  throw new HeaderError('JPEG without a frame header (SOF) before the scan', i + 1 >= b.length);
}

/** Pillow's GIF size: the logical screen, grown to hold the first frame when it reaches past it. */
function gifSize(b: Uint8Array): { width: number; height: number } {
  need(b, 13, 'GIF');
  let width = u16le(b, 6);
  let height = u16le(b, 8);
  let i = 13;
  if (b[10] & 0x80) i += 3 << ((b[10] & 7) + 1);
  while (i < b.length) {
    const t = b[i];
    if (t === 0x21) {
      // extension: label, then sub-blocks
      i += 2;
      while (i < b.length && b[i] !== 0) i += b[i] + 1;
      i++;
    } else if (t === 0x2c) {
      need(b, i + 10, 'GIF image descriptor');
      width = Math.max(width, u16le(b, i + 1) + u16le(b, i + 5));
      height = Math.max(height, u16le(b, i + 3) + u16le(b, i + 7));
      break;
    } else {
      i++; // Pillow reads on past unknown bytes
      continue;
    }
  }
  if (i >= b.length) throw new HeaderError('GIF without an image', true);
  return { width, height };
}

function webpSize(b: Uint8Array): { width: number; height: number } {
  need(b, 30, 'WebP');
  if (startsWith(b, 'VP8X', 12)) return { width: 1 + b[24] + (b[25] << 8) + (b[26] << 16), height: 1 + b[27] + (b[28] << 8) + (b[29] << 16) };
  if (startsWith(b, 'VP8 ', 12)) return { width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
  if (startsWith(b, 'VP8L', 12)) {
    const bits = u32le(b, 21);
    return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
  }
  throw new HeaderError('WebP without a VP8 / VP8L / VP8X chunk first');
}

/** Short / long values of the first IFD's tags (the first value of each), read from the header. */
function tiffTags(b: Uint8Array): Map<number, number> {
  const le = b[0] === 0x49;
  const u16 = le ? u16le : u16be;
  const u32 = le ? u32le : u32be;
  need(b, 8, 'TIFF');
  const ifd = u32(b, 4);
  need(b, ifd + 2, 'TIFF');
  const n = u16(b, ifd);
  need(b, ifd + 2 + 12 * n, 'TIFF');
  const tags = new Map<number, number>();
  for (let k = 0; k < n; k++) {
    const e = ifd + 2 + 12 * k;
    const type = u16(b, e + 2);
    if (type === 3)
      tags.set(u16(b, e), u16(b, e + 8)); // SHORT: the first value is inline whatever the count
    else if (type === 4 && u32(b, e + 4) === 1) tags.set(u16(b, e), u32(b, e + 8));
  }
  return tags;
}

function tiffSize(b: Uint8Array): { width: number; height: number } {
  const tags = tiffTags(b);
  const width = tags.get(256);
  const height = tags.get(257);
  if (width === undefined || height === undefined) throw new HeaderError('TIFF without ImageWidth / ImageLength');
  return { width, height };
}

/** A TIFF's first page holds associated (premultiplied) alpha: ExtraSamples = 1, Pillow's "RGBa" raw mode. */
export function tiffAssociatedAlpha(b: Uint8Array): boolean {
  return tiffTags(b).get(338) === 1;
}

export { HeaderError };

export interface PixelLimit {
  /** Pillow's MAX_IMAGE_PIXELS: warn above it, refuse above twice it; null for no limit. */
  maxPixels: number | null;
  warn: (message: string) => void;
}

/** Pillow's _decompression_bomb_check, on the header's size, with the option named in the messages. */
export function checkPixelLimit(what: string, size: { width: number; height: number }, limit: PixelLimit): void {
  if (limit.maxPixels === null) return;
  const pixels = Math.max(1, size.width) * Math.max(1, size.height);
  const dims = `${size.width}x${size.height} (${pixels} pixels)`;
  if (pixels > 2 * limit.maxPixels) {
    throw new Error(
      `${what}: image size ${dims} exceeds the limit of ${2 * limit.maxPixels} pixels (twice maxPixels = ${limit.maxPixels}; ` +
        'CLI --max-pixels), could be a decompression bomb; refused before decoding',
    );
  }
  if (pixels > limit.maxPixels) {
    limit.warn(
      `${what}: image size ${dims} exceeds maxPixels = ${limit.maxPixels} (CLI --max-pixels), could be a decompression bomb; ` +
        `decoding it anyway, as Pillow does below twice the limit`,
    );
  }
}

// Decoding to 8-bit RGB exactly as Pillow 13's Image.open(f).convert('RGB') (upstream's load_image),
// after checking Pillow's decompression-bomb limits on the size in the header.
//   - JPEG, PNG, WebP, TIFF: sharp (libjpeg-turbo, libpng, libwebp, libtiff, as Pillow), with no colour
//     management (Pillow ignores ICC profiles) and these Pillow conversions done here:
//       CMYK (JPEG: Adobe-inverted or not, YCCK; TIFF): Pillow's cmyk2rgb formula, not an ICC transform
//       (libvips's raw CMYK values are Pillow's: both read every 4-component JPEG as Adobe-inverted);
//       16-bit grayscale (Pillow's "I;16"): values clipped to 255, not scaled;
//   - GIF (first frame, Pillow's canvas and palette rules) and BMP: our decoders (gif.ts, bmp.ts);
//   - binary PGM / PPM with maxval 255: read directly.
// Anything else is refused by name (see formats.ts).
import sharp from 'sharp';
import { decodeBMP } from './bmp';
import { checkPixelLimit, headerSize, HeaderError, ImageFormat, PixelLimit, sniffFormat, SUPPORTED_FORMATS, tiffAssociatedAlpha } from './formats';
import { decodeGIF } from './gif';
import type { RGBImage } from './resample';

/** Pillow's MULDIV255 (Convert.c): a * b / 255, rounded, in integers. */
const mulDiv255 = (a: number, b: number) => {
  const t = a * b + 128;
  return ((t >> 8) + t) >> 8;
};

/** Pillow's cmyk2rgb: each of R, G, B is (255 - K) - C * (255 - K) / 255, clipped. */
export function cmykToRGB(cmyk: Uint8Array, channels: number, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let p = 0; p < pixels; p++) {
    const s = p * channels;
    const nk = 255 - cmyk[s + 3];
    for (let c = 0; c < 3; c++) out[p * 3 + c] = Math.max(0, nk - mulDiv255(cmyk[s + c], nk));
  }
  return out;
}

/**
 * Recognises the format and checks Pillow's pixel limits on the header's size. `head` is the start of
 * the file (`complete` when it is all of it); returns null when more of it is needed to read the size.
 */
export function checkHeader(head: Buffer, what: string, limit: PixelLimit, complete: boolean): ImageFormat | null {
  const format = sniffFormat(head);
  if (typeof format !== 'string') {
    if (!complete && head.length < 16) return null;
    throw new Error(`${what}: cannot decode the image (unsupported image format: ${format.unsupported}; supported: ${SUPPORTED_FORMATS})`);
  }
  let size: { width: number; height: number };
  try {
    size = headerSize(head, format);
  } catch (e) {
    if (!(e instanceof HeaderError)) throw e;
    if (e.truncated && !complete) return null;
    throw new Error(`${what}: cannot decode the image (${e.message})`, { cause: e });
  }
  checkPixelLimit(what, size, limit);
  return format;
}

/** Decodes a whole file's bytes, of a format checkHeader accepted, as Pillow's open + convert('RGB'). */
export async function decodePillowRGB(bytes: Buffer, format: ImageFormat, what: string, limit: PixelLimit): Promise<RGBImage> {
  try {
    const image =
      format === 'gif'
        ? await decodeGIF(bytes)
        : format === 'bmp'
          ? await decodeBMP(bytes)
          : format === 'ppm'
            ? decodePPM(bytes)
            : await decodeWithSharp(bytes, format, limit);
    // Pillow opens such an image; upstream's dynamic_preprocess then divides by zero.
    if (image.width === 0 || image.height === 0) throw new Error(`the image is ${image.width}x${image.height} pixels`);
    return image;
  } catch (e) {
    const message = (e as Error).message.split('\n')[0];
    throw new Error(`${what}: cannot decode the image (${message})`, { cause: e });
  }
}

async function decodeWithSharp(bytes: Buffer, format: ImageFormat, limit: PixelLimit): Promise<RGBImage> {
  // The header check above is the limit; sharp's own is a second line at the same error threshold.
  const input = { failOn: 'error' as const, limitInputPixels: limit.maxPixels === null ? false : Math.floor(2 * limit.maxPixels), ignoreIcc: true };
  const meta = await sharp(bytes, input).metadata();
  if (meta.space === 'cmyk') {
    const { data, info } = await sharp(bytes, input)
      .pipelineColourspace('cmyk')
      .toColourspace('cmyk')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels < 4) throw new Error(`CMYK decoded to ${info.channels} channels`);
    return { width: info.width, height: info.height, data: cmykToRGB(data, info.channels, info.width * info.height) };
  }
  // Pillow opens 16-bit grayscale as "I;16" (a PNG's tRNS colour, which libvips makes an alpha
  // channel, is only metadata to Pillow), and its "I;16" -> RGB keeps values up to 255 and clips the
  // rest (Convert.c I16_RGB). 16-bit gray + alpha PNGs are "RGBA" from the high bytes, as libvips does.
  if (meta.space === 'grey16' && (!meta.hasAlpha || (format === 'png' && bytes[25] === 0))) {
    const { data, info } = await sharp(bytes, input).toColourspace('grey16').raw({ depth: 'ushort' }).toBuffer({ resolveWithObject: true });
    const v = new Uint16Array(data.buffer, data.byteOffset, data.length / 2);
    const pixels = info.width * info.height;
    const out = new Uint8Array(pixels * 3);
    for (let p = 0; p < pixels; p++) out[p * 3] = out[p * 3 + 1] = out[p * 3 + 2] = Math.min(255, v[p * info.channels]);
    return { width: info.width, height: info.height, data: out };
  }
  if (format === 'tiff' && meta.hasAlpha && tiffAssociatedAlpha(bytes)) {
    // libvips unpremultiplies associated alpha as it loads, in floating point; Pillow's "RGBa" unpacker
    // divides in integers, and 0.2% of a test image's values come out one lower. Not decoded, then.
    throw new Error('TIFF with associated (premultiplied) alpha is not supported (libvips unpremultiplies it otherwise than Pillow)');
  }
  const { data, info } = await sharp(bytes, input).toColourspace('srgb').removeAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/** Binary PGM (P5) / PPM (P6) with maxval 255, which Pillow reads raw. */
function decodePPM(b: Uint8Array): RGBImage {
  const rgb = b[1] === 0x36;
  const tokens: number[] = [];
  let i = 2;
  while (tokens.length < 3) {
    if (i >= b.length) throw new Error('truncated PPM header');
    if (b[i] === 0x23) {
      while (i < b.length && b[i] !== 0x0a && b[i] !== 0x0d) i++;
      continue;
    }
    if (/\s/.test(String.fromCharCode(b[i]))) {
      i++;
      continue;
    }
    let s = '';
    while (i < b.length && b[i] >= 0x30 && b[i] <= 0x39) s += String.fromCharCode(b[i++]);
    if (s === '') throw new Error('bad PPM header');
    tokens.push(Number(s));
  }
  i++; // the one whitespace byte after maxval
  const [width, height, maxval] = tokens;
  if (maxval !== 255) throw new Error(`PPM with maxval ${maxval} (only 255 is read)`);
  const n = width * height * (rgb ? 3 : 1);
  if (b.length < i + n) throw new Error(`truncated PPM pixel data (${b.length - i} of ${n} bytes)`);
  if (rgb) return { width, height, data: Uint8Array.from(b.subarray(i, i + n)) };
  const out = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) out[p * 3] = out[p * 3 + 1] = out[p * 3 + 2] = b[i + p];
  return { width, height, data: out };
}

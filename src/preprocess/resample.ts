// Pillow-compatible resizing of 8-bit RGB images (Image.resize with BICUBIC), written from the
// algorithm of Pillow's Resample.c so that tiles match PIL's byte for byte:
//   - separable: a horizontal pass (only over the source rows the vertical pass will read), then a
//     vertical pass, each skipped when that dimension does not change; as in current Pillow (13.0,
//     the oracle's), the vertical pass runs first when the height shrinks by more than twice as many
//     pixels as the width does (the passes round to 8 bits in between, so the order shows);
//   - per output pixel, a window centred at (x + 0.5) * scale, of support 2 * max(scale, 1) for
//     bicubic (a = -0.5): the filter is widened when downscaling (antialiasing);
//   - weights normalised to sum 1 in double precision, then rounded to 22-bit fixed point
//     (round half away from zero), accumulated in integers from a rounding offset of 2^21, shifted
//     back and clipped to 0..255 after each pass.

export interface RGBImage {
  width: number;
  height: number;
  /** Packed RGB, row-major, 3 bytes per pixel. */
  data: Uint8Array;
}

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

export type Filter = { support: number; weight: (x: number) => number };

/** Pillow's bicubic kernel, a = -0.5. */
export const BICUBIC: Filter = {
  support: 2,
  weight: (x) => {
    const a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  },
};

interface Coefficients {
  /** Window length (the same for every output pixel). */
  ksize: number;
  /** First source index and count of taps per output pixel. */
  bounds: Int32Array;
  /** Fixed-point weights, ksize per output pixel. */
  weights: Int32Array;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for resizing inSize -> outSize (box 0..inSize). */
function coefficients(inSize: number, outSize: number, filter: Filter): Coefficients {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    // C's (int) truncates toward zero.
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.weight((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const w = x < xmax && ww !== 0 ? k[x] / ww : x < xmax ? k[x] : 0;
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(acc: number): number {
  const v = Math.floor(acc / ONE); // arithmetic shift of the 32-bit accumulator
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Resizes like PIL's `image.resize((width, height), Image.BICUBIC)` for an RGB image. */
export function resizeRGB(src: RGBImage, width: number, height: number, filter: Filter = BICUBIC): RGBImage {
  if (!(width > 0 && height > 0 && Number.isInteger(width) && Number.isInteger(height))) {
    throw new Error(`resize: target size ${width}x${height} must be positive integers`);
  }
  if (width === src.width && height === src.height) return { width, height, data: new Uint8Array(src.data) };
  const shrinkV = src.height - height;
  if (shrinkV > 0 && shrinkV > (src.width - width) * 2) {
    const vert = coefficients(src.height, height, filter);
    const tall = verticalPass(src, height, vert.bounds, vert);
    return width === src.width ? tall : horizontalPass(tall, width, filter, 0, height);
  }
  if (width === src.width) {
    const vert = coefficients(src.height, height, filter);
    return verticalPass(src, height, vert.bounds, vert);
  }
  if (height === src.height) return horizontalPass(src, width, filter, 0, src.height);
  // Horizontal first, over the source rows the vertical pass reads only: [first, last).
  const vert = coefficients(src.height, height, filter);
  const first = vert.bounds[0];
  const last = vert.bounds[(height - 1) * 2] + vert.bounds[(height - 1) * 2 + 1];
  const shifted = new Int32Array(vert.bounds);
  for (let i = 0; i < height; i++) shifted[i * 2] -= first;
  return verticalPass(horizontalPass(src, width, filter, first, last - first), height, shifted, vert);
}

/** Horizontal pass over `rows` source rows starting at `rowOffset`: -> [width, rows]. */
function horizontalPass(src: RGBImage, width: number, filter: Filter, rowOffset: number, rows: number): RGBImage {
  const { ksize, bounds, weights } = coefficients(src.width, width, filter);
  const out = new Uint8Array(width * rows * 3);
  for (let y = 0; y < rows; y++) {
    const srcRow = (y + rowOffset) * src.width * 3;
    for (let x = 0; x < width; x++) {
      const xmin = bounds[x * 2];
      const xmax = bounds[x * 2 + 1];
      const kb = x * ksize;
      let r = HALF;
      let g = HALF;
      let b = HALF;
      for (let i = 0; i < xmax; i++) {
        const w = weights[kb + i];
        const p = srcRow + (xmin + i) * 3;
        r += src.data[p] * w;
        g += src.data[p + 1] * w;
        b += src.data[p + 2] * w;
      }
      const o = (y * width + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return { width, height: rows, data: out };
}

/** Vertical pass; `bounds` are the coefficients' bounds, shifted when the input starts below row 0. */
function verticalPass(src: RGBImage, height: number, bounds: Int32Array, coeffs: Coefficients): RGBImage {
  const out = new Uint8Array(src.width * height * 3);
  const { ksize, weights } = coeffs;
  const rowBytes = src.width * 3;
  for (let y = 0; y < height; y++) {
    const ymin = bounds[y * 2];
    const ymax = bounds[y * 2 + 1];
    const kb = y * ksize;
    for (let x = 0; x < rowBytes; x++) {
      let acc = HALF;
      for (let i = 0; i < ymax; i++) acc += src.data[(ymin + i) * rowBytes + x] * weights[kb + i];
      out[y * rowBytes + x] = clip8(acc);
    }
  }
  return { width: src.width, height, data: out };
}

/** A width x height region at (left, top), as PIL's crop (inside the image). */
export function cropRGB(src: RGBImage, left: number, top: number, width: number, height: number): RGBImage {
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * src.width + left) * 3;
    out.set(src.data.subarray(from, from + width * 3), y * width * 3);
  }
  return { width, height, data: out };
}

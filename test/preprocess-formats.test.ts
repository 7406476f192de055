// Every image format upstream's Image.open(f).convert('RGB') opens, against Pillow 13 (the oracle's):
// the decoded RGB and every tile byte for byte, from a path and from a Buffer; the size read from the
// header; and Pillow's decompression-bomb limits, checked before decoding.
import { buildSync } from 'esbuild';
import { createHash } from 'crypto';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { initBackend } from '../src/backend';
import { decodeRGB, loadImage } from '../src/preprocess/image';
import { dynamicPreprocess } from '../src/preprocess/tiles';
import { checkPixelLimit, headerSize, PILLOW_MAX_IMAGE_PIXELS, sniffFormat } from '../src/preprocess/formats';
import { FIXTURES } from './helpers';

const REF_DIR = path.join(FIXTURES, 'reference', 'preprocess');
interface FormatRecord {
  file: string;
  format: string;
  mode: string;
  size: [number, number];
  max_num: number;
  num_tiles: number;
  rgb_sha256: string;
  tile_sha256: string[];
  /** Pillow on the file cut to N bytes: 'error: ...' or the sha256 of its RGB. */
  truncated: Record<string, string>;
}
const ref = JSON.parse(fs.readFileSync(path.join(REF_DIR, 'reference.json'), 'utf8')) as {
  formats_dir: string;
  formats: FormatRecord[];
  decompression_bomb: { max_image_pixels: number; cases: { size: [number, number]; pixels: number; outcome: 'ok' | 'warning' | 'error' }[] };
};
const FORMATS_DIR = path.join(FIXTURES, 'images', ref.formats_dir);
const sha = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

beforeAll(() => initBackend({ backend: 'wasm', log: null }));

test('the fixtures cover each format and variant the issue names', () => {
  const modes = new Set(ref.formats.map((r) => `${r.format} ${r.mode}`));
  for (const want of [
    'JPEG CMYK',
    'JPEG RGB',
    'JPEG L',
    'PNG RGB',
    'PNG RGBA',
    'PNG I;16',
    'PNG LA',
    'PNG P',
    'PNG 1',
    'GIF P',
    'WEBP RGB',
    'WEBP RGBA',
    'BMP RGB',
    'BMP P',
    'BMP L',
    'BMP 1',
    'TIFF RGB',
    'TIFF CMYK',
    'TIFF P',
    'TIFF RGBA',
    'PPM RGB',
    'PPM L',
  ])
    expect(modes).toContain(want);
  const files = ref.formats.map((r) => r.file);
  for (const want of [
    'jpeg-cmyk-adobe.jpg',
    'jpeg-cmyk-no-adobe.jpg',
    'jpeg-ycck.jpg',
    'png-rgb16.png',
    'png-gray16.png',
    'png-palette-trns.png',
    'gif-offset-transparent.gif',
    'bmp-rle8.bmp',
    'bmp-rle4.bmp',
    'bmp-16-565.bmp',
    'bmp-8-os2.bmp',
    'tiff-multipage.tif',
    'jpeg-p3-icc.jpg',
    'png-p3-icc.png',
    'png-gray16-trns.png',
    'png-apng.png',
    'webp-animated.webp',
    'tiff-gray16.tif',
    'gif-no-palette.gif',
    'gif-ramp-palette.gif',
    'bmp-8-bw-palette.bmp',
    'bmp-rle8-bw-palette.bmp',
    'png-gama-sbit.png',
    'bmp-32-v5-bitfields.bmp',
    'tiff-int32.tif',
    'tiff-float32.tif',
  ])
    expect(files).toContain(want);
});

/** Files Pillow opens that are refused here, rather than decoded with different values, and why. */
const REFUSED: Record<string, RegExp> = {
  'tiff-rgba-premultiplied.tif': /TIFF with associated \(premultiplied\) alpha is not supported/,
};
const decoded = ref.formats.filter((r) => !(r.file in REFUSED));

test.each(Object.entries(REFUSED))('refused by name: %s', async (file, message) => {
  await expect(decodeRGB(path.join(FORMATS_DIR, file))).rejects.toThrow(message);
});

describe("decoded RGB and tiles identical to Pillow 13's", () => {
  test.each(decoded.map((r) => [r.file, r] as const))('%s', async (_name, r) => {
    const file = path.join(FORMATS_DIR, r.file);
    const fromPath = await decodeRGB(file);
    expect([fromPath.width, fromPath.height]).toEqual(r.size);
    expect(sha(fromPath.data)).toBe(r.rgb_sha256);
    const fromBuffer = await decodeRGB(fs.readFileSync(file));
    expect(sha(fromBuffer.data)).toBe(r.rgb_sha256);
    const { tiles } = dynamicPreprocess(fromPath, { minNum: 1, maxNum: r.max_num, imageSize: 448, useThumbnail: true });
    expect(tiles.map((t) => sha(t.data))).toEqual(r.tile_sha256);
  });
});

test('the size read from each header is the size Pillow opens', () => {
  const wrong = ref.formats.filter((r) => {
    const b = fs.readFileSync(path.join(FORMATS_DIR, r.file));
    const format = sniffFormat(b);
    if (typeof format !== 'string') return true;
    const s = headerSize(b, format);
    return s.width !== r.size[0] || s.height !== r.size[1];
  });
  expect(wrong.map((r) => r.file)).toEqual([]);
});

test('loadImage takes a Buffer as well as a path, with the same result', async () => {
  const file = path.join(FORMATS_DIR, 'jpeg-cmyk-adobe.jpg');
  const a = await loadImage(file, { maxNum: 4, returnTiles: true });
  const b = await loadImage(fs.readFileSync(file), { maxNum: 4, returnTiles: true });
  expect(b.tiles!.map((t) => sha(t.data))).toEqual(a.tiles!.map((t) => sha(t.data)));
  expect(Array.from(b.pixelValues.dataSync())).toEqual(Array.from(a.pixelValues.dataSync()));
  a.pixelValues.dispose();
  b.pixelValues.dispose();
  await expect(loadImage(Buffer.from('GIF89a'))).rejects.toThrow(/<Buffer of 6 bytes>: cannot decode the image \(truncated GIF header\)/);
  await expect(loadImage(Buffer.alloc(0))).rejects.toThrow(/<Buffer of 0 bytes>: the buffer is empty/);
  await expect(loadImage(undefined as unknown as Buffer)).rejects.toThrow(/image source: expected a file path or a Buffer, got undefined/);
});

test('a path is read only as far as its header needs for the check, however far that is', async () => {
  // A JPEG whose frame header comes after 300 kB of APP15 segments (metadata Pillow skips).
  const r = ref.formats.find((f) => f.file === 'jpeg-progressive-422.jpg')!;
  const jpeg = fs.readFileSync(path.join(FORMATS_DIR, r.file));
  const app = Buffer.alloc(4 + 65000, 0x20);
  app.writeUInt16BE(0xffef, 0);
  app.writeUInt16BE(65002, 2);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-head-'));
  try {
    const file = path.join(tmp, 'late-sof.jpg');
    fs.writeFileSync(file, Buffer.concat([jpeg.subarray(0, 2), app, app, app, app, app, jpeg.subarray(2)]));
    expect(sha((await decodeRGB(file)).data)).toBe(r.rgb_sha256);
    await expect(decodeRGB(file, { maxPixels: 1000 })).rejects.toThrow(new RegExp(`late-sof\\.jpg: image size ${r.size[0]}x${r.size[1]} `));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test("files cut short: an error where Pillow raises one, Pillow's pixels where it decodes them", async () => {
  const mismatches: string[] = [];
  for (const r of decoded) {
    const b = fs.readFileSync(path.join(FORMATS_DIR, r.file));
    for (const [n, want] of Object.entries(r.truncated)) {
      let got: string;
      try {
        got = sha((await decodeRGB(b.subarray(0, Number(n)))).data);
      } catch (e) {
        expect((e as Error).message).toMatch(/^<Buffer of \d+ bytes>: cannot decode the image/);
        got = 'error';
      }
      if (got !== (want.startsWith('error') ? 'error' : want))
        mismatches.push(`${r.file} cut to ${n} of ${b.length} bytes: Pillow ${want.slice(0, 24)}, here ${got.slice(0, 24)}`);
    }
  }
  expect(mismatches).toEqual([]);
});

test('corrupt files (truncated, bytes changed) give an error naming the input, never a hang or a crash', async () => {
  // Seeded: every fixture cut at 5 points and with 8 random bytes changed, 4 times over.
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  let failures = 0;
  for (const r of ref.formats) {
    const b = fs.readFileSync(path.join(FORMATS_DIR, r.file));
    const variants: Buffer[] = [1, 13, 40, Math.floor(b.length / 2), b.length - 1].map((n) => b.subarray(0, n));
    for (let k = 0; k < 4; k++) {
      const c = Buffer.from(b);
      for (let j = 0; j < 8; j++) c[16 + Math.floor(rand() * (c.length - 16))] = Math.floor(rand() * 256);
      variants.push(c);
    }
    for (const v of variants) {
      try {
        const img = await decodeRGB(v, { maxPixels: 4_000_000, warn: () => {} });
        expect(img.data.length).toBe(img.width * img.height * 3);
      } catch (e) {
        expect(e).toBeInstanceOf(Error);
        expect((e as Error).message).toMatch(/^<Buffer of \d+ bytes>: (cannot decode the image|image size)/);
        failures++;
      }
    }
  }
  expect(failures).toBeGreaterThan(ref.formats.length * 4); // the truncations, at least, are errors
});

test('formats Pillow does not open, or we do not hold to it, are refused by name', async () => {
  await expect(decodeRGB(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'))).rejects.toThrow(/unsupported image format: SVG/);
  await expect(decodeRGB(Buffer.from('P3\n1 1\n255\n0 0 0\n'))).rejects.toThrow(/unsupported image format: Netpbm P3/);
});

describe("Pillow's decompression-bomb limits", () => {
  /** A PNG that is only a header (signature, IHDR, IEND): Pillow's Image.open checks its size. */
  const pngHeader = (w: number, h: number) => {
    const chunk = (type: string, data: Buffer) => {
      const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
      const out = Buffer.alloc(body.length + 8);
      out.writeUInt32BE(data.length, 0);
      body.copy(out, 4);
      out.writeUInt32BE(crc32(body), body.length + 4);
      return out;
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(w, 0);
    ihdr.writeUInt32BE(h, 4);
    ihdr.set([8, 2, 0, 0, 0], 8);
    return Buffer.concat([Buffer.from('\x89PNG\r\n\x1a\n', 'latin1'), chunk('IHDR', ihdr), chunk('IEND', Buffer.alloc(0))]);
  };

  test("the default is Pillow's MAX_IMAGE_PIXELS", () => {
    expect(PILLOW_MAX_IMAGE_PIXELS).toBe(ref.decompression_bomb.max_image_pixels);
  });

  test.each(ref.decompression_bomb.cases.map((c) => [`${c.size[0]}x${c.size[1]}: ${c.outcome}`, c] as const))('%s, as Pillow', async (_n, c) => {
    const warnings: string[] = [];
    const run = decodeRGB(pngHeader(c.size[0], c.size[1]), { warn: (m) => warnings.push(m) });
    if (c.outcome === 'error') {
      await expect(run).rejects.toThrow(
        new RegExp(
          `image size ${c.size[0]}x${c.size[1]} \\(${c.pixels} pixels\\) exceeds the limit of ${2 * PILLOW_MAX_IMAGE_PIXELS} pixels.*maxPixels.*--max-pixels`,
        ),
      );
    } else {
      // Past the check, the bytes are not an image: the decoder's error shows the check let it through.
      await expect(run).rejects.toThrow(/cannot decode the image/);
    }
    expect(warnings.length).toBe(c.outcome === 'warning' ? 1 : 0);
    if (c.outcome === 'warning')
      expect(warnings[0]).toMatch(
        new RegExp(`image size ${c.size[0]}x${c.size[1]} \\(${c.pixels} pixels\\) exceeds maxPixels = ${PILLOW_MAX_IMAGE_PIXELS}.*--max-pixels`),
      );
  });

  test("maxPixels moves both thresholds, on every format's header, and null lifts them", async () => {
    for (const r of decoded) {
      const b = fs.readFileSync(path.join(FORMATS_DIR, r.file));
      const pixels = r.size[0] * r.size[1];
      const warnings: string[] = [];
      await expect(decodeRGB(b, { maxPixels: Math.ceil(pixels / 2) - 1, warn: (m) => warnings.push(m) })).rejects.toThrow(/exceeds the limit of/);
      await decodeRGB(b, { maxPixels: pixels - 1, warn: (m) => warnings.push(m) });
      await decodeRGB(b, { maxPixels: pixels, warn: (m) => warnings.push(m) });
      await decodeRGB(b, { maxPixels: null, warn: (m) => warnings.push(m) });
      expect(warnings.length).toBe(1);
      expect(warnings[0]).toContain(`image size ${r.size[0]}x${r.size[1]} (${pixels} pixels) exceeds maxPixels = ${pixels - 1}`);
    }
    // The same check as the helper, for the record: sizes of 0 count as 1, as in Pillow.
    expect(() => checkPixelLimit('x', { width: 0, height: 5 }, { maxPixels: 2, warn: () => {} })).toThrow(/0x5 \(5 pixels\)/);
    await expect(decodeRGB(pngHeader(10, 10), { maxPixels: 0 })).rejects.toThrow(/maxPixels 0: expected a positive integer, or null/);
  });

  describe('a valid 20000 x 20000 PNG', () => {
    let tmp: string;
    let big: string;
    beforeAll(async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-bomb-'));
      big = path.join(tmp, 'big-20000x20000.png');
      await writePNG(big, 20000, 20000);
      const small = path.join(tmp, 'small.png');
      await writePNG(small, 300, 200);
      // The writer makes valid PNGs: the small one decodes, to the rows it wrote.
      const img = await decodeRGB(small);
      expect([img.width, img.height]).toEqual([300, 200]);
      const expected = new Uint8Array(300 * 200 * 3);
      for (let y = 0; y < 200; y++) expected.set(pngRow(y, 300).subarray(1), y * 900);
      expect(sha(img.data)).toBe(sha(expected));
    }, 120000);
    afterAll(() => {
      if (!process.env.KEEP18) fs.rmSync(tmp, { recursive: true, force: true });
    });

    test('is refused from its header, naming its size and the option, with little memory', () => {
      // A child process of its own, so that its peak RSS is the measure. It runs plain JavaScript
      // bundled by esbuild (tsx's own compiler, always installed with it): under tsx's loader a
      // process starts some 45 MB larger, which would measure the loader rather than loadImage.
      const script = path.join(tmp, 'child.ts');
      fs.writeFileSync(
        script,
        `
        import { loadImage } from ${JSON.stringify(path.resolve(__dirname, '..', 'src', 'preprocess', 'image'))};
        // VmHWM: this process's own peak RSS. getrusage's maxRSS can carry the spawning process's peak
        // across exec on Linux (a Jest run in CI reported 220 MB for a child that peaks at 85 MB on its own).
        const hwm = () => Number(/VmHWM:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]);
        const peakBefore = hwm();
        const t0 = process.hrtime.bigint();
        loadImage(process.argv[2]).then(() => console.log(JSON.stringify({ ok: true })), (e) => {
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          console.log(JSON.stringify({ ok: false, message: e.message, ms, maxRssKiB: hwm(), peakBeforeKiB: peakBefore }));
        });
      `,
      );
      const bundle = path.join(tmp, 'child.js');
      buildSync({ entryPoints: [script], bundle: true, platform: 'node', packages: 'external', outfile: bundle, logLevel: 'error' });
      const env = { ...process.env, NODE_PATH: path.resolve(__dirname, '..', 'node_modules') };
      const child = spawnSync(process.execPath, [bundle, big], { encoding: 'utf8', timeout: 60000, env });
      expect(child.stderr).not.toMatch(/Error/);
      const r = JSON.parse(child.stdout.trim().split('\n').pop()!) as { ok: boolean; message: string; ms: number; maxRssKiB: number; peakBeforeKiB: number };
      expect(r.ok).toBe(false);
      expect(r.message).toMatch(
        /big-20000x20000\.png: image size 20000x20000 \(400000000 pixels\) exceeds the limit of 178956970 pixels .*maxPixels.*--max-pixels/,
      );
      expect(r.maxRssKiB / 1024).toBeLessThan(200);
      expect((r.maxRssKiB - r.peakBeforeKiB) / 1024).toBeLessThan(20); // refusing it raises the peak by next to nothing
      process.stderr.write(
        `20000x20000 PNG (${fs.statSync(big).size} bytes) refused in ${r.ms.toFixed(1)} ms; child peak RSS ${(r.peakBeforeKiB / 1024).toFixed(1)} MiB ` +
          `before loadImage, ${(r.maxRssKiB / 1024).toFixed(1)} MiB after\n`,
      );
    }, 60000);
  });
});

/** PNG's CRC-32 (zlib.crc32 needs Node 20.15 or later). */
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const v of b) c = CRC_TABLE[(c ^ v) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Row y of writePNG's image as stored: filter byte 0, then RGB (a pattern repeating every 256 rows). */
const rows = new Map<string, Buffer>();
function pngRow(y: number, w: number): Buffer {
  const key = `${y % 256}/${w}`;
  let row = rows.get(key);
  if (!row) {
    row = Buffer.alloc(1 + 3 * w);
    for (let x = 0; x < w; x++) row.set([(x * 7 + y) & 255, (x * 3) & 255, (y * 5) & 255], 1 + 3 * x);
    rows.set(key, row);
  }
  return row;
}

/** Streams a w x h 8-bit RGB PNG to disk (rows deflated as they are made, so memory stays small). */
async function writePNG(file: string, w: number, h: number): Promise<void> {
  const out = fs.createWriteStream(file);
  const write = (b: Buffer) => new Promise<void>((res, rej) => out.write(b, (e) => (e ? rej(e) : res())));
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const b = Buffer.alloc(body.length + 8);
    b.writeUInt32BE(data.length, 0);
    body.copy(b, 4);
    b.writeUInt32BE(crc32(body), body.length + 4);
    return b;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  await write(Buffer.concat([Buffer.from('\x89PNG\r\n\x1a\n', 'latin1'), chunk('IHDR', ihdr)]));
  const deflate = zlib.createDeflate({ level: 6 });
  const pending: Buffer[] = [];
  deflate.on('data', (d: Buffer) => pending.push(d));
  const flushIDAT = async () => {
    while (pending.length) await write(chunk('IDAT', pending.shift()!));
  };
  for (let y = 0; y < h; y++) {
    if (!deflate.write(pngRow(y, w))) await new Promise((res) => deflate.once('drain', res));
    if (pending.length > 64) await flushIDAT();
  }
  await new Promise((res) => {
    deflate.once('end', res);
    deflate.end();
  });
  await flushIDAT();
  await write(chunk('IEND', Buffer.alloc(0)));
  await new Promise<void>((res, rej) => out.end((e?: Error | null) => (e ? rej(e) : res())));
}

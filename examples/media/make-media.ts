// The project's own example media, drawn from a seeded generator: two photo-like JPEGs and a short MP4.
//   npx tsx examples/media/make-media.ts          (rewrites examples/media/{image1.jpg,image2.jpg,video.mp4})
//   npx tsx examples/media/make-media.ts --check  (draws them into a temporary folder and compares bytes)
// The pixels are computed here in plain arithmetic from one seeded generator (no Math.random, no
// clock); sharp (libjpeg-turbo) writes the JPEGs and the bundled ffmpeg (libx264, one thread, bitexact)
// the MP4, so a rerun with the locked versions writes the same bytes. See examples/media/README.md.
import ffmpegInstaller from '@ffmpeg-installer/ffmpeg';
import { spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';

const SEED = 20241212;
const HERE = __dirname;

/** mulberry32: a small seeded generator of floats in [0, 1). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** 2-D value noise on a 256-cell lattice (smoothstep interpolation), summed over octaves: about 0..1. */
function fbm(seed: number) {
  const r = rng(seed);
  const table = new Float64Array(256 * 256).map(() => r());
  const at = (i: number, j: number) => table[(j & 255) * 256 + (i & 255)];
  const noise = (x: number, y: number) => {
    const i = Math.floor(x);
    const j = Math.floor(y);
    const fx = x - i;
    const fy = y - j;
    const sx = fx * fx * (3 - 2 * fx);
    const sy = fy * fy * (3 - 2 * fy);
    const top = at(i, j) + (at(i + 1, j) - at(i, j)) * sx;
    const bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * sx;
    return top + (bottom - top) * sy;
  };
  return (x: number, y: number, octaves = 4) => {
    let sum = 0;
    let amp = 0.5;
    let f = 1;
    for (let o = 0; o < octaves; o++) {
      sum += amp * noise(x * f + o * 17.3, y * f - o * 9.1);
      amp *= 0.5;
      f *= 2;
    }
    return sum / (1 - 0.5 ** octaves);
  };
}

type RGB = [number, number, number];
const mix = (a: RGB, b: RGB, t: number): RGB => [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
const clamp01 = (t: number) => Math.min(1, Math.max(0, t));
/** Coverage of a soft edge: 1 inside (d < 0), 0 outside, a ramp `w` pixels wide across d = 0. */
const edge = (d: number, w = 1) => clamp01(0.5 - d / w);

class Canvas {
  readonly data: Float64Array;
  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.data = new Float64Array(width * height * 3);
  }
  /** Paints every pixel with shade(x, y), blended by its coverage alpha(x, y) in [0, 1]. */
  paint(shade: (x: number, y: number) => RGB, alpha: (x: number, y: number) => number = () => 1, box = [0, 0, this.width, this.height]) {
    const [x0, y0, x1, y1] = box.map((v, i) => Math.max(0, Math.min(i % 2 ? this.height : this.width, Math.round(v))));
    for (let y = y0; y < y1; y++)
      for (let x = x0; x < x1; x++) {
        const a = alpha(x + 0.5, y + 0.5);
        if (a <= 0) continue;
        const c = shade(x + 0.5, y + 0.5);
        const k = (y * this.width + x) * 3;
        for (let ch = 0; ch < 3; ch++) this.data[k + ch] += (c[ch] - this.data[k + ch]) * a;
      }
  }
  /** Adds a little seeded grain (sensor noise) and rounds to 8 bits. */
  toBuffer(grain: () => number, amount: number): Buffer {
    const out = Buffer.alloc(this.data.length);
    for (let i = 0; i < this.data.length; i += 3) {
      const g = (grain() - 0.5) * amount;
      for (let ch = 0; ch < 3; ch++) out[i + ch] = Math.round(Math.min(255, Math.max(0, this.data[i + ch] + g)));
    }
    return out;
  }
}

/**
 * A landscape: sky with clouds and a low sun, two mountain ranges, a lake reflecting the sky, a meadow,
 * a red-roofed house and pine trees. `t` (0..1) moves the clouds and `ball`, when given, is a red ball's
 * centre and radius drawn last (the video's moving object).
 */
function landscape(width: number, height: number, seed: number, t = 0, ball?: { x: number; y: number; r: number }): Canvas {
  const c = new Canvas(width, height);
  const s = Math.min(width, height) / 747; // sizes below are for a 747-pixel-high frame
  const n1 = fbm(seed + 1);
  const n2 = fbm(seed + 2);
  const n3 = fbm(seed + 3);
  const horizon = height * 0.56;
  const sun = { x: width * 0.74, y: height * 0.2, r: 38 * s };
  // sky: a gradient, the sun's glow and drifting clouds
  const sky = (x: number, y: number): RGB => {
    let col = mix([70, 120, 190], [200, 215, 230], clamp01(y / horizon));
    const d = Math.hypot(x - sun.x, y - sun.y);
    col = mix(col, [255, 236, 190], 0.55 * Math.exp(-d / (140 * s)));
    const cloud = clamp01((n1((x + t * 160 * s) / (220 * s), y / (90 * s), 5) - 0.52) * 3.2);
    col = mix(col, [248, 248, 250], cloud * clamp01(1.2 - y / horizon));
    return mix(col, [255, 250, 225], edge(d - sun.r, 2 * s));
  };
  c.paint(sky);
  // two ranges of mountains, the far one hazier
  const ridge = (x: number, base: number, height_: number, n: typeof n2, scale: number) => base - height_ * n(x / scale, 3.7, 5);
  const far = (x: number) => ridge(x, horizon + 4 * s, 250 * s, n2, 380 * s);
  const near = (x: number) => ridge(x, horizon + 6 * s, 170 * s, n3, 260 * s);
  c.paint(
    (x, y) => mix([112, 128, 160], [150, 162, 185], clamp01((y - far(x)) / (120 * s)) * 0.6 + 0.25 * n1(x / (40 * s), y / (40 * s))),
    (x, y) => edge(far(x) - y, 1.5),
  );
  c.paint(
    (x, y) => {
      const rock = n2(x / (30 * s), y / (30 * s), 4);
      const snow = clamp01((horizon - 120 * s - y) / (20 * s) + (rock - 0.5) * 2);
      return mix(mix([70, 86, 72], [104, 110, 96], rock), [236, 238, 242], snow);
    },
    (x, y) => edge(near(x) - y, 1.5),
  );
  // the lake: the sky upside down, darker, rippled
  const shore = (x: number) => horizon + 40 * s + 30 * s * n1(x / (300 * s), 8.2, 3);
  c.paint(
    (x, y) => {
      const ripple = 6 * s * (n3(x / (60 * s), y / (4 * s), 3) - 0.5);
      const col = sky(x + ripple, 2 * horizon - y + ripple);
      return mix(col, [40, 70, 95], 0.35 + 0.25 * clamp01((y - horizon) / (80 * s)));
    },
    (x, y) => (y >= horizon ? edge(y - shore(x), 1.5) : 0),
    [0, horizon, width, height],
  );
  // the meadow below the shore: grass texture, lighter towards the front
  c.paint(
    (x, y) => {
      const grass = n2(x / (6 * s), y / (2.5 * s), 4);
      const patch = n3(x / (150 * s), y / (60 * s), 3);
      return mix(mix([58, 96, 40], [120, 150, 60], patch), [30, 60, 24], 0.5 * grass);
    },
    (x, y) => edge(shore(x) - y, 1.5),
    [0, horizon, width, height],
  );
  // a house: walls, a red roof, a door and a window
  const hx = width * 0.3;
  const hy = shore(hx) + 60 * s;
  const hw = 150 * s;
  const hh = 95 * s;
  c.paint(
    (x, y) => mix([225, 214, 190], [190, 178, 150], n1(x / (5 * s), y / (5 * s), 2) * 0.5 + (x - hx) / hw / 2),
    (x, y) => Math.min(edge(Math.abs(x - hx) - hw / 2), edge(Math.abs(y - (hy - hh / 2)) - hh / 2)),
    [hx - hw, hy - 3 * hh, hx + hw, hy + 2],
  );
  const roofTop = hy - hh - 70 * s;
  c.paint(
    (x, y) => mix([170, 40, 30], [120, 28, 24], 0.5 * n2(x / (3 * s), y / (8 * s), 2) + (Math.floor((y - roofTop) / (9 * s)) % 2) * 0.15),
    (x, y) => Math.min(edge(y - (hy - hh) - 1), edge(roofTop - y), edge(Math.abs(x - hx) - (hw / 2 + 14 * s) * ((y - roofTop) / (70 * s)))),
    [hx - hw, roofTop - 2, hx + hw, hy - hh + 2],
  );
  c.paint(
    () => [88, 56, 36],
    (x, y) => Math.min(edge(Math.abs(x - (hx - 30 * s)) - 14 * s), edge(Math.abs(y - (hy - 25 * s)) - 25 * s)),
  );
  c.paint(
    (x, y) => mix([150, 190, 220], [60, 80, 100], clamp01((y - (hy - 70 * s)) / (30 * s))),
    (x, y) => Math.min(edge(Math.abs(x - (hx + 35 * s)) - 18 * s), edge(Math.abs(y - (hy - 58 * s)) - 15 * s)),
  );
  // pine trees: seeded positions, nearer ones lower and larger
  const r = rng(seed + 4);
  const trees = Array.from({ length: 9 }, () => ({ x: width * (0.45 + 0.55 * r()), depth: r() })).sort((a, b) => a.depth - b.depth);
  for (const tree of trees) {
    const base = shore(tree.x) + (20 + 160 * tree.depth) * s;
    const th = (110 + 150 * tree.depth) * s;
    const tw = th * 0.32;
    c.paint(
      () => [74, 50, 32],
      (x, y) => Math.min(edge(Math.abs(x - tree.x) - tw * 0.06), edge(Math.abs(y - (base - th * 0.08)) - th * 0.08)),
      [tree.x - tw, base - th, tree.x + tw, base + 2],
    );
    c.paint(
      (x, y) => mix([24, 64, 36], [52, 98, 52], clamp01((x - tree.x) / tw + 0.5) * 0.6 + 0.4 * n3(x / (4 * s), y / (4 * s), 2)),
      (x, y) => {
        const v = (y - (base - th)) / (th * 0.88); // 0 at the tip, 1 at the lowest branches
        const jag = 0.12 * Math.abs(((v * 5) % 1) - 0.5);
        return Math.min(edge(-v * 80), edge((v - 1) * 80), edge(Math.abs(x - tree.x) - tw * (v * 0.5 + jag)));
      },
      [tree.x - tw, base - th - 2, tree.x + tw, base],
    );
  }
  if (ball) {
    c.paint(
      (x, y) => {
        const light = clamp01(1 - Math.hypot(x - (ball.x - ball.r * 0.35), y - (ball.y - ball.r * 0.35)) / (ball.r * 1.6));
        return mix([150, 20, 20], [250, 110, 90], light);
      },
      (x, y) => edge(Math.hypot(x - ball.x, y - ball.y) - ball.r, 1.2),
      [ball.x - ball.r - 2, ball.y - ball.r - 2, ball.x + ball.r + 2, ball.y + ball.r + 2],
    );
  }
  return c;
}

/** A still life: a bowl of fruit (oranges, an apple, a lemon) on a wooden table against a plastered wall. */
function stillLife(size: number, seed: number): Canvas {
  const c = new Canvas(size, size);
  const s = size / 1000;
  const n1 = fbm(seed + 1);
  const n2 = fbm(seed + 2);
  const table = size * 0.58;
  const lamp = { x: size * 0.2, y: size * 0.1 };
  const lit = (x: number, y: number) => clamp01(1.1 - Math.hypot(x - lamp.x, y - lamp.y) / (1300 * s));
  c.paint((x, y) => mix([120, 110, 96], [214, 200, 176], lit(x, y) * (0.85 + 0.15 * n1(x / (60 * s), y / (60 * s), 5))));
  c.paint(
    (x, y) => {
      const grain = n2(x / (160 * s), y / (5 * s), 5);
      const rings = 0.5 + 0.5 * Math.sin(grain * 18 + y / (14 * s));
      return mix(mix([92, 54, 30], [150, 96, 56], rings * 0.6 + 0.2), [40, 24, 14], 0.6 * (1 - lit(x, y)));
    },
    (x, y) => edge(table - y, 1.5),
  );
  // the bowl's shadow, the bowl, then the fruit front to back by y
  const bowl = { x: size * 0.52, y: table + 150 * s, rx: 300 * s, ry: 110 * s };
  c.paint(
    () => [30, 18, 10],
    (x, y) => 0.5 * clamp01((1 - Math.hypot((x - bowl.x - 50 * s) / (bowl.rx * 0.95), (y - bowl.y - 72 * s) / (bowl.ry * 0.3))) * 3),
    [0, table, size, size],
  );
  const inBowl = (x: number, y: number) => {
    const dx = (x - bowl.x) / bowl.rx;
    const dy = (y - (bowl.y - 40 * s)) / bowl.ry;
    return y > bowl.y - 40 * s ? edge((Math.hypot(dx, dy) - 1) * bowl.ry, 1.5) : 0;
  };
  const fruit: { x: number; y: number; r: number; color: RGB; pits: number }[] = [
    { x: bowl.x - 150 * s, y: bowl.y - 110 * s, r: 95 * s, color: [236, 130, 24], pits: 1 },
    { x: bowl.x + 40 * s, y: bowl.y - 140 * s, r: 105 * s, color: [180, 24, 30], pits: 0 },
    { x: bowl.x + 190 * s, y: bowl.y - 90 * s, r: 85 * s, color: [238, 206, 50], pits: 1 },
    { x: bowl.x - 40 * s, y: bowl.y - 60 * s, r: 92 * s, color: [230, 120, 20], pits: 1 },
  ];
  for (const f of fruit) {
    c.paint(
      (x, y) => {
        const hx = f.x - f.r * 0.4;
        const hy = f.y - f.r * 0.45;
        const shade = clamp01(1 - Math.hypot(x - hx, y - hy) / (f.r * 2));
        const skin = f.pits ? 0.08 * (n2(x / (3 * s), y / (3 * s), 2) - 0.5) : 0;
        let col = mix([f.color[0] * 0.35, f.color[1] * 0.35, f.color[2] * 0.35], f.color, clamp01(shade * 1.3 + skin) ** 0.8);
        col = mix(col, [255, 250, 240], clamp01(1 - Math.hypot(x - hx, y - hy) / (f.r * 0.22)) * 0.7);
        return col;
      },
      (x, y) => edge(Math.hypot(x - f.x, y - f.y) - f.r, 1.5),
      [f.x - f.r - 2, f.y - f.r - 2, f.x + f.r + 2, f.y + f.r + 2],
    );
  }
  c.paint(
    (x, y) => {
      const shade = clamp01(1 - Math.hypot(x - (bowl.x - bowl.rx * 0.5), y - bowl.y) / (bowl.rx * 1.6));
      return mix([40, 70, 110], [120, 170, 215], shade + 0.1 * (n1(x / (8 * s), y / (8 * s), 2) - 0.5));
    },
    inBowl,
    [bowl.x - bowl.rx - 2, bowl.y - 40 * s - 2, bowl.x + bowl.rx + 2, bowl.y + bowl.ry + 2],
  );
  // the bowl's rim, lit from the left
  c.paint(
    (x) => mix([210, 225, 240], [70, 100, 140], clamp01((x - (bowl.x - bowl.rx)) / (2 * bowl.rx))),
    (x, y) => edge(Math.abs(Math.hypot((x - bowl.x) / bowl.rx, (y - (bowl.y - 40 * s)) / (bowl.ry * 0.28)) - 1) * bowl.ry * 0.28 - 4 * s, 1.5),
    [bowl.x - bowl.rx - 8, bowl.y - 80 * s, bowl.x + bowl.rx + 8, bowl.y],
  );
  return c;
}

const sha256 = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

async function writeJPEG(canvas: Canvas, grainSeed: number, file: string): Promise<void> {
  const pixels = canvas.toBuffer(rng(grainSeed), 6);
  await sharp(pixels, { raw: { width: canvas.width, height: canvas.height, channels: 3 } })
    .jpeg({ quality: 72, chromaSubsampling: '4:2:0', mozjpeg: false, optimiseCoding: true })
    .toFile(file);
}

/** 6 s at 30 fps, 320x240: the landscape with drifting clouds and a red ball bouncing along the meadow. */
export const VIDEO = { width: 320, height: 240, fps: 30, frames: 180 };

function writeVideo(file: string): void {
  const { width, height, fps, frames } = VIDEO;
  const grain = rng(SEED + 300);
  const raw = Buffer.alloc(width * height * 3 * frames);
  for (let k = 0; k < frames; k++) {
    const t = k / (frames - 1);
    const bounce = Math.abs(Math.sin(t * Math.PI * 4));
    const ball = { x: width * (0.08 + 0.84 * t), y: height * (0.9 - 0.22 * bounce), r: height * 0.06 };
    landscape(width, height, SEED + 200, t, ball)
      .toBuffer(grain, 4)
      .copy(raw, k * width * height * 3);
  }
  // prettier-ignore
  const args = [
    '-v', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${width}x${height}`, '-r', String(fps), '-i', 'pipe:0',
    '-c:v', 'libx264', '-preset', 'medium', '-crf', '30', '-pix_fmt', 'yuv420p', '-threads', '1', '-g', '60',
    '-x264-params', 'threads=1:lookahead-threads=1:sliced-threads=0',
    '-fflags', '+bitexact', '-flags:v', '+bitexact', '-map_metadata', '-1', '-movflags', '+faststart', '-an', '-y', file,
  ];
  const run = spawnSync(ffmpegInstaller.path, args, { input: raw, maxBuffer: 1 << 26 });
  if (run.status !== 0) throw new Error(`ffmpeg failed on ${file}: ${run.stderr}`);
}

async function make(dir: string): Promise<string[]> {
  const files = ['image1.jpg', 'image2.jpg', 'video.mp4'].map((n) => path.join(dir, n));
  await writeJPEG(landscape(1000, 747, SEED), SEED + 100, files[0]);
  await writeJPEG(stillLife(1000, SEED + 10), SEED + 110, files[1]);
  writeVideo(files[2]);
  return files;
}

async function main() {
  if (process.argv.includes('--check')) {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-media-'));
    const made = await make(tmp);
    let same = true;
    for (const file of made) {
      const committed = path.join(HERE, path.basename(file));
      const ok = fs.existsSync(committed) && sha256(committed) === sha256(file);
      same &&= ok;
      console.log(`${ok ? 'same' : 'DIFFERENT'}  ${path.basename(file)}  ${sha256(file)}`);
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    process.exit(same ? 0 : 1);
  }
  for (const file of await make(HERE)) console.log(`${path.relative(process.cwd(), file)}  ${fs.statSync(file).size} bytes  ${sha256(file)}`);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

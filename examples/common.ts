// What the examples share: which model to load, and where their inputs come from.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import ffmpegInstaller from '@ffmpeg-installer/ffmpeg';
import sharp from 'sharp';

const ROOT = path.join(__dirname, '..');
const ASSETS = path.join(ROOT, '..', 'shared', 'assets');
/** The embedded default, built by `npm run demo` (weights/build.ts): the toy trained on synthetic scenes. */
export const DEFAULT_MODEL = path.join(ROOT, 'weights', 'scenes-pvc');

/** `--model DIR` from the command line, else the embedded tiny model. */
export function modelDir(): string {
  const i = process.argv.indexOf('--model');
  // Printed relative to where the example runs, the same way every time.
  const dir = path.relative(process.cwd(), i >= 0 ? process.argv[i + 1] : DEFAULT_MODEL) || '.';
  if (!dir || !fs.existsSync(path.join(dir, 'manifest.json'))) {
    throw new Error(`${dir ?? '(missing)'} is not a converted model: run \`npm run demo\` once to build the tiny default, or pass --model DIR`);
  }
  if (path.basename(dir).startsWith('tiny-'))
    console.log(`(${path.basename(dir)}: random weights, its answers are noise; pass --model DIR for a real checkpoint)`);
  if (path.basename(dir) === 'scenes-pvc')
    console.log(`(scenes-pvc: a toy trained here on synthetic shapes, not PVC's weights; on photos its one-word answers mean little)`);
  return dir;
}

/** An example input: the upstream quick start's file from ../shared/assets, or one generated here. */
export async function exampleInput(name: 'example_image1.jpg' | 'example_image2.jpg' | 'example_video.mp4'): Promise<string> {
  const shared = path.join(ASSETS, name);
  if (fs.existsSync(shared)) return shared;
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-example-')), name);
  if (name.endsWith('.jpg')) {
    const [w, h] = name === 'example_image1.jpg' ? [1000, 747] : [1000, 1000];
    const pixels = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) pixels.set([(x * 255) / w, (y * 255) / h, 128], (y * w + x) * 3);
    await sharp(pixels, { raw: { width: w, height: h, channels: 3 } })
      .jpeg()
      .toFile(out);
  } else {
    const ffmpeg = ffmpegInstaller.path;
    const run = spawnSync(ffmpeg, ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc=duration=4:size=360x640:rate=30', '-pix_fmt', 'yuv420p', '-y', out]);
    if (run.status !== 0) throw new Error(`could not generate ${name}: ${run.stderr}`);
  }
  console.log(`(${name} not found in ../shared/assets: using a generated ${path.basename(out)})`);
  return out;
}

export function seconds(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(2)}s`;
}

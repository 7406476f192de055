// What the examples share: which model to load, and where their inputs come from.
import * as fs from 'fs';
import * as path from 'path';

const ROOT = path.join(__dirname, '..');
const MEDIA = path.join(ROOT, 'examples', 'media');
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

/** An example input: the repository's own media (examples/media, drawn by examples/media/make-media.ts). */
export function exampleInput(name: 'image1.jpg' | 'image2.jpg' | 'video.mp4'): string {
  return path.relative(process.cwd(), path.join(MEDIA, name)) || '.';
}

export function seconds(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(2)}s`;
}

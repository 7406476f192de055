// Builds the embedded default models into weights/ by converting the committed checkpoints with
// pvc-convert (skipped when already built from the checkpoint as it is now: a checkpoint changed by a pull
// is converted again): scenes-pvc (trained here on synthetic scenes) and the two random tiny models of the
// parity tests.
//   npx tsx weights/build.ts
import * as fs from 'fs';
import * as path from 'path';
import { convertCheckpoint } from '../converter/convert';

const FIXTURES = path.join(__dirname, '..', 'test', 'fixtures', 'checkpoints');

/** Whether out holds a conversion newer than every file of the checkpoint it was converted from. */
function upToDate(source: string, out: string): boolean {
  const manifest = path.join(out, 'manifest.json');
  if (!fs.existsSync(manifest)) return false;
  const built = fs.statSync(manifest).mtimeMs;
  return fs.readdirSync(source).every((f) => fs.statSync(path.join(source, f)).mtimeMs <= built);
}

for (const name of ['scenes-pvc', 'tiny-internvl2', 'tiny-pvc']) {
  const source = path.join(FIXTURES, name);
  const out = path.join(__dirname, name);
  if (upToDate(source, out)) {
    console.log(`weights/${name}: present`);
    continue;
  }
  const t = Date.now();
  convertCheckpoint(source, out, { overwrite: true });
  console.log(`weights/${name}: converted from test/fixtures/checkpoints/${name} in ${Date.now() - t} ms`);
}

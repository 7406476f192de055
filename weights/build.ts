// Builds the embedded default models into weights/ by converting the committed checkpoints with
// pvc-convert (skipped when already built): scenes-pvc (trained here on synthetic scenes) and the two
// random tiny models of the parity tests.
//   npx tsx weights/build.ts
import * as fs from 'fs';
import * as path from 'path';
import { convertCheckpoint } from '../converter/convert';

const FIXTURES = path.join(__dirname, '..', 'test', 'fixtures', 'checkpoints');

for (const name of ['scenes-pvc', 'tiny-internvl2', 'tiny-pvc']) {
  const out = path.join(__dirname, name);
  if (fs.existsSync(path.join(out, 'manifest.json'))) {
    console.log(`weights/${name}: present`);
    continue;
  }
  const t = Date.now();
  convertCheckpoint(path.join(FIXTURES, name), out, { overwrite: true });
  console.log(`weights/${name}: converted from test/fixtures/checkpoints/${name} in ${Date.now() - t} ms`);
}

// The `pvc` command: chat (--json) and inspect (files written), on the tiny model.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { main } from '../src/cli/main';
import { SafetensorsFile } from '../src/io/safetensors';
import { captureOutput, convertFixture, FIXTURES } from './helpers';

// A committed 1000x747 JPEG made by the preprocessing oracle (the shared example image's size).
const IMAGE = path.join(FIXTURES, 'images', 'odd-1000x747-max6.jpg');
let dir: string;
let out: string;
const output = captureOutput();

beforeAll(() => {
  dir = convertFixture('tiny-internvl2');
  out = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-cli-'));
});
afterAll(() => {
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  fs.rmSync(out, { recursive: true, force: true });
});

test('pvc chat --json answers and reports timings', async () => {
  expect(await main(['chat', '--model', dir, '--image', IMAGE, '--max-new-tokens', '6', '--backend', 'wasm', '--json', 'What is in the image?'])).toBe(0);
  const result = JSON.parse(output.stdout().trim().split('\n').pop()!);
  expect(result).toMatchObject({ question: 'What is in the image?', numPatchesList: [13], tokens: 6, tiles: 13, backend: 'wasm' });
  expect(typeof result.answer).toBe('string');
  expect(result.prefillSeconds).toBeGreaterThan(0);
});

test('pvc inspect writes taps, a summary and a heatmap of the image\'s size', async () => {
  expect(await main(['inspect', '--model', dir, '--image', IMAGE, '--taps', 'vision.layers.{1..2}.out', 'llm.logits', '--out', out,
    '--heatmap', '--logit-lens', '--max-new-tokens', '3', '--backend', 'wasm', 'What is in the image?'])).toBe(0);
  expect(fs.readdirSync(out).sort()).toEqual(['heatmap.png', 'logit-lens.json', 'summary.txt', 'taps.safetensors']);
  const taps = SafetensorsFile.open(path.join(out, 'taps.safetensors'));
  expect(taps.names).toEqual(expect.arrayContaining(['vision.layers.1.out', 'vision.layers.2.out', 'llm.logits', 'step0.llm.logits', 'llm.layers.0.attn.probs']));
  taps.close();
  expect(fs.readFileSync(path.join(out, 'summary.txt'), 'utf8')).toMatch(/^name\s+shape\s+mean\s+std\s+min\s+max/);
  const meta = await sharp(path.join(out, 'heatmap.png')).metadata();
  expect([meta.width, meta.height]).toEqual([1000, 747]);
});

test('pvc inspect --html writes one self-contained report with the taps it needs', async () => {
  const file = path.join(out, 'report.html');
  expect(await main(['inspect', '--model', dir, '--image', IMAGE, '--html', file, '--max-new-tokens', '2', '--backend', 'wasm', 'What is in the image?'])).toBe(0);
  expect(output.stdout()).toContain(`report: ${file} (`);
  const data = JSON.parse(/<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/.exec(fs.readFileSync(file, 'utf8'))![1]);
  expect(data.title).toBe('<image>\nWhat is in the image?');
  expect(data.attention.layers).toEqual([0, 1]);
  expect(data.lens.layers).toEqual([0, 1]);
  expect(data.panels.map((p: { label: string }) => p.label)).toEqual(['image (4x3 tiles)', 'image: thumbnail']);
});

test('usage errors exit 2 and say what is wrong', async () => {
  expect(await main(['chat', '--model', dir])).toBe(2);
  expect(output.stderr()).toMatch(/expected one question, got 0 argument\(s\)/);
  expect(await main(['inspect', '--model', dir, 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/--out DIR or --html FILE is required/);
  expect(await main(['frobnicate'])).toBe(2);
  expect(output.stderr()).toMatch(/unknown command 'frobnicate'/);
});

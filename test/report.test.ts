// The HTML inspection report: built from real inspections of the tiny models, opened in headless
// Chromium (Debian's `chromium`, driven by playwright-core; nothing is downloaded): no page errors,
// choosing another layer changes the overlay's pixels, a screenshot is saved.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { renderInspectionHTML, REPORT_MAX_BYTES } from '../src/inspect/report';
import { PVCModel } from '../src/pvc_model';
import { loadImage } from '../src/preprocess/image';
import { loadVideo } from '../src/preprocess/video';
import { convertFixture, MEDIA } from './helpers';

const OUT = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-report-'));

/** The browser: PVC_CHROMIUM, else Debian's chromium (or another Chromium) on the PATH. */
function findChromium(): string | null {
  if (process.env.PVC_CHROMIUM) return process.env.PVC_CHROMIUM;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try {
      return execFileSync('which', [name], { encoding: 'utf8' }).trim() || null;
    } catch {
      // not this one
    }
  }
  return null;
}

const chromium = findChromium();
const browserTest = chromium ? test : process.env.CI === 'true' ? test : test.skip;
if (!chromium) {
  // Under CI a missing browser fails the browser tests (below); elsewhere they are skipped with this.
  console.warn(
    'report.test.ts: no Chromium found; browser tests ' +
      (process.env.CI === 'true' ? 'FAIL under CI' : 'skipped') +
      '. Install one with `sudo apt-get install -y chromium` (or set PVC_CHROMIUM to a Chromium executable).',
  );
}

interface PageResult {
  errors: string[];
  layers: string[];
  /** The first overlay's size in bytes, and how many of them changed with the layer. */
  overlay: { bytes: number; changed: number };
  screenshot: string;
}

/** Opens the report, records console errors and page errors, switches the LLM layer, reads the first overlay. */
async function openReport(file: string, screenshot: string): Promise<PageResult> {
  if (!chromium) throw new Error('no Chromium: install one with `sudo apt-get install -y chromium` (or set PVC_CHROMIUM)');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { chromium: launcher } = require('playwright-core') as typeof import('playwright-core');
  const browser = await launcher.launch({ executablePath: chromium, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('request', (r) => {
      if (!r.url().startsWith('file:') && !r.url().startsWith('data:')) errors.push(`network request: ${r.url()}`);
    });
    await page.goto('file://' + file);
    // Page code as strings: the tests compile without the DOM's types.
    await page.waitForFunction('window.pvcReportReady === true', undefined, { timeout: 20000 });
    // The first overlay's pixels, kept in the page (moving them through the protocol is slow); the
    // second read counts the bytes that differ from the first.
    const pixels = () =>
      page.evaluate<{ bytes: number; changed: number }>(`(() => {
      const c = document.querySelector('canvas.overlay');
      const now = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const was = window.testPixels || now;
      window.testPixels = now;
      let changed = 0;
      for (let i = 0; i < now.length; i++) if (now[i] !== was[i]) changed++;
      return { bytes: now.length, changed };
    })()`);
    const layers = await page.evaluate<string[]>(`Array.from(document.querySelectorAll('#layer option'), (o) => o.value)`);
    const before = await pixels();
    await page.selectOption('#layer', layers[0]);
    const after = await pixels();
    await page.screenshot({ path: screenshot, fullPage: true });
    return { errors, layers, overlay: { bytes: before.bytes, changed: after.changed }, screenshot };
  } finally {
    await browser.close();
  }
}

/** The JSON block of a report. */
function reportData(html: string) {
  return JSON.parse(/<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/.exec(html)![1]);
}

describe('tiny-internvl2: an image', () => {
  let dir: string;
  let model: PVCModel;
  let html: string;
  const file = MEDIA.image1;

  beforeAll(async () => {
    dir = convertFixture('tiny-internvl2');
    model = await PVCModel.load(dir, { backend: 'wasm' });
    const before = tf.memory().numTensors;
    const image = await loadImage(file, { inputSize: model.config.image_size, maxNum: 6 });
    const trace = await model.inspect({
      pixelValues: image.pixelValues,
      question: 'What is in the image?',
      dataFlag: 1,
      taps: ['llm.layers.*.attn.probs', 'llm.layers.*.out', 'vision.layers.*.out', 'llm.logits'],
      generate: { maxNewTokens: 3 },
    });
    html = await trace.toHTML({ images: [{ source: file, ...image }] });
    trace.dispose();
    image.pixelValues.dispose();
    expect(tf.memory().numTensors).toBe(before);
    fs.writeFileSync(path.join(OUT, 'internvl2.html'), html);
  });
  afterAll(() => {
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  test('one self-contained file within the budget: no external resource, data inlined, no raw "<" in the data', () => {
    expect(Buffer.byteLength(html)).toBeLessThan(REPORT_MAX_BYTES);
    expect(html).not.toMatch(/<(script|link|img|iframe)[^>]*\s(src|href)=/i);
    expect(html).not.toMatch(/https?:\/\//);
    const data = /<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/.exec(html)![1];
    expect(data).not.toContain('<');
    const parsed = JSON.parse(data);
    // The prompt's tokens (which contain <img> and <IMG_CONTEXT>) survive the escaping.
    expect(parsed.prompt).toContain('<img>');
    expect(parsed.attention.layers).toEqual([0, 1]);
    expect(parsed.stats.map((s: [string]) => s[0])).toEqual(expect.arrayContaining(['llm.layers.0.attn.probs', 'step0.llm.logits', 'vision.layers.0.out']));
  });

  test("the maps are the taps' attention rows over the image tokens; a trace of arrays gives the same report", async () => {
    const image = await loadImage(file, { inputSize: model.config.image_size, maxNum: 6 });
    const request = {
      pixelValues: image.pixelValues,
      question: 'What is in the image?',
      dataFlag: 1 as const,
      taps: ['llm.layers.*.attn.probs', 'llm.layers.*.out'],
      generate: { maxNewTokens: 2 },
    };
    const inputs = { images: [{ source: file, ...image }] };
    const trace = await model.inspect(request);
    const data = reportData(await trace.toHTML(inputs));
    const scaleBytes = Buffer.from(data.attention.scales, 'base64');
    const scales = new Float32Array(scaleBytes.buffer.slice(scaleBytes.byteOffset, scaleBytes.byteOffset + scaleBytes.length));
    const q = Buffer.from(data.attention.maps, 'base64');
    const positions = trace.imageTokenPositions;
    const H = model.config.llm.num_attention_heads;
    expect([data.attention.pool, data.attention.headsKept, data.attention.tokens]).toEqual([1, H + 1, 2]);
    expect([q.length, scales.length]).toEqual([2 * 2 * (H + 1) * positions.length, 2 * 2 * (H + 1)]);
    // Map k holds 8-bit values relative to its scale (its largest value): within half a step of the taps' values.
    const map = (k: number) => Array.from(q.subarray(k * positions.length, (k + 1) * positions.length), (v) => (v / 255) * scales[k]);
    const close = (actual: number[], expected: number[], scale: number) => {
      expect(scale).toBeCloseTo(Math.max(...expected), 7);
      actual.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThanOrEqual(scale / 510 + 1e-9));
    };
    // Generated token 0 was predicted by the prompt's last position, token 1 by generation pass 0; InternVL2
    // tiles have one frame, so the maps are the rows at the IMG_CONTEXT positions in prompt order.
    const L = trace.inputIds.length;
    for (const [j, layer] of [
      [0, 0],
      [0, 1],
      [1, 1],
    ]) {
      const probs = (j === 0 ? trace.taps : trace.steps[0])[`llm.layers.${layer}.attn.probs`];
      const [, , Q, K] = probs.shape;
      const p = probs.dataSync();
      const base = (j * 2 + layer) * (H + 1);
      const rows = Array.from({ length: H }, (_, h) => positions.map((pos) => p[(h * Q + Q - 1) * K + pos]));
      rows.forEach((row, h) => close(map(base + h + 1), row, scales[base + h + 1]));
      close(
        map(base),
        positions.map((_, i) => rows.reduce((a, r) => a + r[i], 0) / H),
        scales[base],
      );
      if (j === 0) expect(Q).toBe(L);
    }
    trace.dispose();
    const arrays = await model.inspect({ ...request, asArrays: true });
    expect(reportData(await arrays.toHTML(inputs))).toEqual(data);
    image.pixelValues.dispose();
  });

  test('a small budget pools the maps and says so; an impossible one is an error', async () => {
    const image = await loadImage(file, { inputSize: model.config.image_size, maxNum: 6 });
    const trace = await model.inspect({
      pixelValues: image.pixelValues,
      question: 'What is in the image?',
      dataFlag: 1,
      taps: ['llm.layers.*.attn.probs'],
      generate: { maxNewTokens: 2 },
    });
    const inputs = { images: [{ source: file, ...image }] };
    const full = JSON.parse(/id="report-data">([\s\S]*?)<\/script>/.exec(await trace.toHTML(inputs))![1]);
    const size = Buffer.byteLength(await trace.toHTML(inputs));
    const pooled = JSON.parse(/id="report-data">([\s\S]*?)<\/script>/.exec(await trace.toHTML(inputs, { maxBytes: size - 1000 }))![1]);
    expect(full.attention.pool).toBe(1);
    expect(pooled.attention.pool).toBeGreaterThan(1);
    expect(pooled.notes.join(' ')).toMatch(/pooled/);
    await expect(renderInspectionHTML(model, model.tokenizer, trace, inputs, { maxBytes: 1000 })).rejects.toThrow(/over maxBytes 1000/);
    const before = tf.memory().numTensors;
    await expect(trace.toHTML(inputs, { signal: AbortSignal.abort() })).rejects.toThrow(/aborted/);
    expect(tf.memory().numTensors).toBe(before);
    await expect(trace.toHTML({ images: [{ source: file, grid: [1, 1], numPatches: 1 }] })).rejects.toThrow(/visual tokens, but the prompt has/);
    trace.dispose();
    image.pixelValues.dispose();
  });

  browserTest('in Chromium: no errors, another layer changes the overlay, screenshot', async () => {
    const r = await openReport(path.join(OUT, 'internvl2.html'), path.join(OUT, 'internvl2.png'));
    expect(r.errors).toEqual([]);
    expect(r.layers).toEqual(['0', '1']);
    expect(r.overlay.bytes).toBeGreaterThan(0);
    expect(r.overlay.changed).toBeGreaterThan(r.overlay.bytes / 100);
    expect(fs.statSync(r.screenshot).size).toBeGreaterThan(10000);
    console.log(`report: ${path.join(OUT, 'internvl2.html')} (${Buffer.byteLength(html)} bytes), screenshot ${r.screenshot}`);
  });
});

describe('tiny-pvc: a video', () => {
  let dir: string;
  let model: PVCModel;

  beforeAll(async () => {
    dir = convertFixture('tiny-pvc');
    model = await PVCModel.load(dir, { backend: 'wasm' });
  });
  afterAll(() => {
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  test('frames, temporal attention per ViT layer and tokens per frame; in Chromium without errors', async () => {
    const video = await loadVideo(MEDIA.video, { numSegments: 6, inputSize: model.config.image_size, maxNum: 1 });
    const question = video.numPatchesList.map((_, i) => `Frame${i + 1}: <image>\n`).join('') + 'What happens in the video?';
    const trace = await model.inspect({
      pixelValues: video.pixelValues,
      question,
      numPatchesList: video.numPatchesList,
      dataFlag: 3,
      taps: ['llm.layers.*.attn.probs', 'llm.layers.*.out', 'vision.layers.*.temporal.probs'],
      generate: { maxNewTokens: 3 },
    });
    const html = await trace.toHTML({ video });
    trace.dispose();
    video.pixelValues.dispose();
    const file = path.join(OUT, 'pvc-video.html');
    fs.writeFileSync(file, html);
    const data = JSON.parse(/id="report-data">([\s\S]*?)<\/script>/.exec(html)![1]);
    expect(data.panels.map((p: { label: string }) => p.label)).toEqual(['Frame1', 'Frame2', 'Frame3', 'Frame4', 'Frame5', 'Frame6']);
    expect(data.panels.map((p: { tokens: number }) => p.tokens)).toEqual(new Array(6).fill(model.tokensPerTile(3)));
    expect(data.temporal.map((t: { layer: number; frames: number }) => [t.layer, t.frames])).toEqual([
      [1, 6],
      [2, 6],
    ]);
    // causal: no frame attends to a later one; each row sums to 1
    for (const t of data.temporal) {
      for (let i = 0; i < 6; i++) {
        const row = t.maps[0].slice(i * 6, i * 6 + 6);
        expect(row.slice(i + 1).every((x: number) => x === 0)).toBe(true);
        expect(row.reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(1, 3);
      }
    }
    if (!chromium && process.env.CI !== 'true') return;
    const r = await openReport(file, path.join(OUT, 'pvc-video.png'));
    expect(r.errors).toEqual([]);
    expect(r.overlay.changed).toBeGreaterThan(r.overlay.bytes / 100);
    console.log(`report: ${file} (${Buffer.byteLength(html)} bytes), screenshot ${r.screenshot}`);
  });
});

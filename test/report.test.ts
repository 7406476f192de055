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
import { readScenesEval, sceneReport } from '../examples/scenes';
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

/** Opens the report, records console errors and page errors, switches to another LLM layer, reads the first overlay. */
async function openReport(file: string, screenshot: string): Promise<PageResult> {
  const { errors, result } = await withPage(file, async (page) => {
    // Page code as strings: the tests compile without the DOM's types.
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
    const shown = await page.evaluate<string>(`document.querySelector('#layer').value`);
    await page.selectOption(
      '#layer',
      layers.find((l) => l !== shown)!,
    );
    const after = await pixels();
    await page.screenshot({ path: screenshot, fullPage: true });
    return { layers, overlay: { bytes: before.bytes, changed: after.changed } };
  });
  return { errors, ...result, screenshot };
}

/** Opens a report in Chromium and runs `f` on the page once it is drawn; console and page errors and network requests are collected. */
async function withPage<T>(file: string, f: (page: import('playwright-core').Page) => Promise<T>): Promise<{ errors: string[]; result: T }> {
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
    await page.waitForFunction('window.pvcReportReady === true', undefined, { timeout: 20000 });
    return { errors, result: await f(page) };
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

describe('scenes-pvc: where the model looked (the trained toy)', () => {
  let dir: string;
  let model: PVCModel;
  const set = readScenesEval();
  const star = set.questions.find((r) => r.id === 'colour-008')!; // 200x100, "What colour is the star?" -> red
  const video = set.questions.find((r) => r.id === 'video-008')!; // 8 frames, "Which way does the circle move?" -> left
  /** token 0's attention rows (the prompt's last position) per layer and head, and the visual positions. */
  let rows: { layer: number; heads: Float32Array[] }[] = [];
  let positions: number[] = [];
  let starHTML = '';
  let videoHTML = '';

  beforeAll(async () => {
    dir = convertFixture('scenes-pvc');
    model = await PVCModel.load(dir, { backend: 'wasm' });
    const before = tf.memory().numTensors;
    starHTML = await sceneReport(model, set, star, (trace) => {
      positions = trace.imageTokenPositions;
      rows = Object.entries(trace.taps)
        .filter(([n]) => /^llm\.layers\.\d+\.attn\.probs$/.test(n))
        .map(([n, t]) => {
          const [, H, Q, K] = t.shape;
          const d = t.dataSync() as Float32Array;
          return { layer: Number(n.split('.')[2]), heads: Array.from({ length: H }, (_, h) => d.slice((h * Q + Q - 1) * K, (h * Q + Q) * K)) };
        });
    });
    videoHTML = await sceneReport(model, set, video);
    expect(tf.memory().numTensors).toBe(before);
    fs.writeFileSync(path.join(OUT, 'scenes-star.html'), starHTML);
    fs.writeFileSync(path.join(OUT, 'scenes-video.html'), videoHTML);
  });
  afterAll(() => {
    model.dispose();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  /** The star's centre, and its cell in a panel's tile grid (the tile holding it, the cell's column and row). */
  const object = star.scenes[0].objects.find((o) => o.shape === 'star')!;
  const cellOf = (panel: { tiles: { rect: number[]; g: number }[] }, pool: number) => {
    const t = panel.tiles.findIndex(({ rect: [x0, y0, x1, y1] }) => object.x >= x0 && object.x < x1 && object.y >= y0 && object.y < y1);
    const [x0, y0, x1, y1] = panel.tiles[t].rect;
    const g = Math.ceil(panel.tiles[t].g / pool);
    return { tile: t, cx: Math.floor(((object.x - x0) / (x1 - x0)) * g), cy: Math.floor(((object.y - y0) / (y1 - y0)) * g) };
  };

  test('the answers are right; the reports are small and the labels clean', () => {
    const s = reportData(starHTML);
    const v = reportData(videoHTML);
    expect([s.answer, v.answer]).toEqual(['red', 'left']);
    expect([s.title, v.title]).toEqual(['[image] What colour is the star?', '[8 frames] Which way does the circle move?']);
    expect(s.prompt).toMatch(/<img><IMG_CONTEXT> x 192 tokens<\/img>/);
    expect(Buffer.byteLength(videoHTML)).toBeLessThan(200 * 1024);
    // The initial view: the layer whose heads put the largest share on the visual tokens (mean of heads).
    const share = (layer: number) =>
      rows.find((r) => r.layer === layer)!.heads.reduce((a, row) => a + positions.reduce((b, p) => b + row[p], 0), 0) / rows[0].heads.length;
    const best = [...rows.map((r) => r.layer)].sort((a, b) => share(b) - share(a))[0];
    expect(s.attention.initial).toEqual({ layer: best, head: 0, share: Number(share(best).toPrecision(4)) });
    // Attention to the prompt: token 0, mean of heads, each layer sums to 1 over the groups; the image groups are its panels.
    for (const perHead of s.text.values[0]) expect(perHead[0].reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(1, 2);
    expect(s.text.groups.filter((g: { kind: string }) => g.kind === 'image').map((g: { count: number }) => g.count)).toEqual([128, 64]);
    expect(s.text.groups.find((g: { kind: string }) => g.kind === 'system').count).toBeGreaterThan(1);
    // Logit lens: an embeddings row, and for the last prompt position the answer's probability and rank at the last layer.
    expect(s.lens.layers).toEqual([-1, 0, 1, 2, 3]);
    const last = s.lens.columns.find((c: { label: string }) => c.label.endsWith('(last)'));
    expect([last.next, last.cells[4].next[1]]).toEqual(['red', 1]);
    expect(last.cells[4].top).toHaveLength(10);
  });

  browserTest('in Chromium: the initial view lights the star; the sharpest head looks at it; the shared scale; the hover readout', async () => {
    const file = path.join(OUT, 'scenes-star.html');
    const D = reportData(starHTML);
    const A = D.attention;
    const { errors, result } = await withPage(file, async (page) => {
      /** The overlays' opacity at the centre of every cell: [panel][tile][cell]. */
      const alphas = () =>
        page.evaluate<number[][][]>(`(() => {
          const D = JSON.parse(document.getElementById('report-data').textContent);
          const g = D.attention.g;
          return Array.from(document.querySelectorAll('canvas.overlay'), (c, k) => {
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return D.panels[k].tiles.map(({ rect: [x0, y0, x1, y1] }) => Array.from({ length: g * g }, (_, i) => {
              const x = Math.floor((x0 + ((i % g) + 0.5) / g * (x1 - x0)) * c.width);
              const y = Math.floor((y0 + (Math.floor(i / g) + 0.5) / g * (y1 - y0)) * c.height);
              return px[(y * c.width + x) * 4 + 3];
            }));
          });
        })()`);
      const initial = await alphas();
      const sharpest = await page.evaluate<[number, number]>(
        `(() => { const td = document.querySelector('#overview td.best'); return [Number(td.dataset.layer), Number(td.dataset.head)]; })()`,
      );
      // The star's cell in the tiles panel, hovered at its centre.
      const c = cellOf(D.panels[0], A.pool);
      const box = (await page.locator('canvas.overlay').first().boundingBox())!;
      await page.mouse.move(box.x + object.x * box.width, box.y + object.y * box.height);
      const readout = await page.evaluate<Record<string, string>>(
        `({ ...document.getElementById('readout').dataset, text: document.getElementById('readout').textContent })`,
      );
      // A map with under 1% of its attention on the image, under the shared scale.
      const li = A.layers.findIndex((_: number, l: number) => D.frameMass[0][l].some((m: number[], h: number) => h > 0 && m.reduce((a, b) => a + b, 0) < 0.01));
      const h = D.frameMass[0][li].findIndex((m: number[], h: number) => h > 0 && m.reduce((a, b) => a + b, 0) < 0.01);
      await page.click(`#overview td[data-layer="${A.layers[li]}"][data-head="${h}"]`);
      const faint = await alphas();
      const opacity = Number(await page.inputValue('#opacity'));
      const scale = await page.evaluate<string>(`document.querySelector('#scale').value`);
      return { initial, sharpest, c, readout, faint, faintShare: D.frameMass[0][li][h], opacity, scale };
    });
    expect(errors).toEqual([]);
    // 1. The initial view's brightest cell is the star's cell (in the panel that holds it).
    let brightest = { panel: -1, tile: -1, cell: -1, alpha: -1 };
    result.initial.forEach((tiles, panel) =>
      tiles.forEach((cells, tile) => cells.forEach((alpha, cell) => alpha > brightest.alpha && (brightest = { panel, tile, cell, alpha }))),
    );
    const want = cellOf(D.panels[brightest.panel], A.pool);
    expect([brightest.tile, brightest.cell]).toEqual([want.tile, want.cy * A.g + want.cx]);
    // 2. The overview's sharpest head puts >= 90% of its attention (from the taps) on the star's cell (the tile's 4 repeats).
    const [layer, head] = result.sharpest;
    expect(head).toBeGreaterThan(0);
    const tile = D.panels[0].tiles[result.c.tile];
    const row = rows.find((r) => r.layer === layer)!.heads[head - 1];
    let onStar = 0;
    for (let f = 0; f < tile.frames; f++) onStar += row[positions[tile.first + f * tile.g * tile.g + result.c.cy * tile.g + result.c.cx]];
    expect(onStar).toBeGreaterThanOrEqual(0.9);
    // 3. The hover readout shows the value the data holds for that cell (and the taps', to the 8-bit step).
    const scales = new Float32Array(Uint8Array.from(Buffer.from(A.scales, 'base64')).buffer);
    const maps = Buffer.from(A.maps, 'base64');
    const mapSize = D.panels.reduce((a: number, p: { tiles: unknown[] }) => a + p.tiles.length * A.g * A.g, 0);
    const k = A.layers.indexOf(A.initial.layer) * A.headsKept;
    const index = result.c.tile * A.g * A.g + result.c.cy * A.g + result.c.cx;
    expect(Number(result.readout.cell)).toBe(index);
    expect(Number(result.readout.value)).toBe((maps[k * mapSize + index] / 255) * scales[k]);
    const heads = rows.find((r) => r.layer === A.initial.layer)!.heads;
    let mean = 0;
    for (const r of heads) for (let f = 0; f < tile.frames; f++) mean += r[positions[tile.first + f * tile.g * tile.g + (index % (A.g * A.g))]] / heads.length;
    expect(Math.abs(Number(result.readout.value) - mean)).toBeLessThanOrEqual(scales[k] / 510 + 1e-7);
    expect(result.readout.text).toMatch(/tile 1 of 2, cell \(\d, \d\): visual token \d+ \(prompt position \d+\) and its 3 repeats/);
    // 4. Under the shared scale (the default), a map with < 1% on the image draws no cell above 10% of the scale.
    expect(result.scale).toBe('1');
    expect(result.faintShare.reduce((a: number, b: number) => a + b, 0)).toBeLessThan(0.01);
    const top = Math.max(...result.faint.flat(2));
    expect(top).toBeLessThanOrEqual(Math.ceil(0.1 * result.opacity * 255));
  });

  browserTest("in Chromium: the video's initial view puts its two brightest frames on the circle's first and last positions", async () => {
    const { errors, result } = await withPage(path.join(OUT, 'scenes-video.html'), (page) =>
      page.evaluate<number[]>(`Array.from(document.querySelectorAll('#frames td[data-value]'), (td) => Number(td.dataset.value))`),
    );
    expect(errors).toEqual([]);
    expect(result).toHaveLength(8);
    const at = (f: number) => JSON.stringify(video.scenes[f].objects.find((o) => o.shape === 'circle'));
    const first = [...Array(8).keys()].filter((f) => at(f) === at(0));
    const last = [...Array(8).keys()].filter((f) => at(f) === at(7));
    const [a, b] = [...result.keys()].sort((x, y) => result[y] - result[x]);
    expect([first.includes(a) || first.includes(b), last.includes(a) || last.includes(b)]).toEqual([true, true]);
  });
});

// The inspection report: ONE self-contained HTML file (no network, no external script; data inlined)
// to look at an inspection: the attention of each generated token over the input images or video
// frames by LLM layer and head, the logit lens, PVC's temporal attention across frames, and statistics
// of every recorded tap. The page (src/inspect/report_page.ts) draws on canvases from the data here.
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { yieldToEventLoop } from '../event_loop';
import { DataFlag } from '../model/samples';
import { VisionLanguageModel } from '../model/vlm';
import { decodeRGB, IMAGENET_MEAN, IMAGENET_STD } from '../preprocess/image';
import { RGBImage } from '../preprocess/resample';
import { PVCTokenizer } from '../tokenizer';
import type { Inspection, TapArray } from './inspect';
import { logitLens, summarizeValues, TensorSummary } from './lens';
import { REPORT_PAGE_SCRIPT, REPORT_PAGE_STYLE } from './report_page';

/** What the prompt's pixels were: the report draws them and lays the visual tokens out on them. */
export interface ReportInputs {
  /** The prompt's images in order: the file (or bytes) each was loaded from, and loadImage's grid and numPatches. */
  images?: { source: string | Buffer; grid: [number, number]; numPatches: number }[];
  /** A video: loadVideo's pixelValues (one tile per frame) and numPatchesList; frames are drawn from the pixels. */
  video?: { pixelValues: tf.Tensor4D; numPatchesList: number[] };
  /** Default: the question of the prompt's last turn. */
  title?: string;
}

export interface ReportOptions {
  /** Upper bound on the HTML file's size in bytes (default REPORT_MAX_BYTES); attention maps are pooled to fit. */
  maxBytes?: number;
  /** Prompt positions (the last ones) in the logit-lens grid besides the generated ones (default 4). */
  lensPromptPositions?: number;
  /** Tokens per logit-lens cell (default 5). */
  topK?: number;
  /** Generated tokens shown, the first ones (default 32). */
  maxTokens?: number;
  /** Aborts the build (AbortError) between its steps, where the event loop also gets a turn. */
  signal?: AbortSignal;
}

/** The default size budget of a report: 16 MiB. */
export const REPORT_MAX_BYTES = 16 * 1024 * 1024;

type Value = tf.Tensor | TapArray;

/** The values of a tap (a tensor is read synchronously: call this on backends that can). */
function dataOf(v: Value): Float32Array {
  return v instanceof tf.Tensor ? (v.dataSync() as Float32Array) : v.data;
}

/** [1, H, Q, K] attention probabilities -> the last query's row for each head: [H][K]. */
function lastQueryRows(v: Value): Float32Array[] {
  const [, H, Q, K] = v.shape;
  let data: Float32Array | null = null;
  if (v instanceof tf.Tensor) {
    const row = v.slice([0, 0, Q - 1, 0], [1, H, 1, K]);
    data = row.dataSync() as Float32Array;
    row.dispose();
  }
  return Array.from({ length: H }, (_, h) => (data ? data.subarray(h * K, (h + 1) * K) : (v as TapArray).data.subarray((h * Q + Q - 1) * K, (h * Q + Q) * K)));
}

/** One tile of a panel: where it sits on the picture (fractions) and its visual tokens (g x g per frame). */
interface Tile {
  rect: [number, number, number, number];
  /** Index of the tile's first visual token among all visual tokens of the prompt. */
  first: number;
  g: number;
  frames: number;
}

interface Picture {
  url: string;
  width: number;
  height: number;
}

/** A picture the attention is drawn over: an image, its thumbnail, or a video frame. */
interface Panel {
  label: string;
  picture: number;
  tiles: Tile[];
  tokens: number;
}

/** 8-bit RGB, shrunk to fit maxSide, as a JPEG data URL. */
async function jpegDataURL(image: RGBImage, maxSide: number): Promise<Picture> {
  const { data, info } = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(maxSide, maxSide, { fit: 'inside', withoutEnlargement: true })
    .jpeg({ quality: 85 })
    .toBuffer({ resolveWithObject: true });
  return { url: `data:image/jpeg;base64,${data.toString('base64')}`, width: info.width, height: info.height };
}

/** A normalised tile [3, S, S] of pixelValues back to 8-bit RGB. */
function tileRGB(pixelValues: tf.Tensor4D, index: number): RGBImage {
  const S = pixelValues.shape[2];
  const chw = tf.tidy(() => pixelValues.slice([index, 0, 0, 0], [1, 3, S, S]).dataSync() as Float32Array);
  const rgb = new Uint8Array(S * S * 3);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < S * S; i++) rgb[i * 3 + c] = Math.round(Math.min(Math.max((chw[c * S * S + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255, 0), 255));
  }
  return { width: S, height: S, data: rgb };
}

/** The pictures and the panels over them, with the visual tokens laid out in prompt order. */
async function layoutPanels(
  model: VisionLanguageModel,
  inputs: ReportInputs,
  visualTokens: number,
): Promise<{ pictures: Picture[]; panels: Panel[]; dataFlag: DataFlag | null }> {
  const g = Math.round(Math.sqrt(model.numImageToken));
  const pictures: Picture[] = [];
  const panels: Panel[] = [];
  let first = 0;
  let dataFlag: DataFlag | null = null;
  if (inputs.images && inputs.video) throw new Error('report inputs: give images or a video, not both');
  if (inputs.images && inputs.images.length > 0) {
    dataFlag = inputs.images.length > 1 ? 2 : 1;
    const frames = model.tokensPerTile(dataFlag) / model.numImageToken;
    for (const [i, image] of inputs.images.entries()) {
      const [cols, rows] = image.grid;
      const thumbnail = image.numPatches > cols * rows;
      if (image.numPatches !== cols * rows + (thumbnail ? 1 : 0))
        throw new Error(`report inputs: image ${i + 1} has ${image.numPatches} tiles, which does not fit its ${cols}x${rows} grid`);
      // Decoded as the model's preprocessing decodes it (the formats and limits it accepts).
      pictures.push(await jpegDataURL(await decodeRGB(image.source), 512));
      const label = inputs.images.length > 1 ? `Image-${i + 1}` : 'image';
      const tiles: Tile[] = [];
      for (let t = 0; t < cols * rows; t++) {
        const x = t % cols;
        const y = Math.floor(t / cols);
        tiles.push({ rect: [x / cols, y / rows, (x + 1) / cols, (y + 1) / rows], first, g, frames });
        first += frames * g * g;
      }
      panels.push({ label: `${label} (${cols}x${rows} tiles)`, picture: pictures.length - 1, tiles, tokens: tiles.length * frames * g * g });
      if (thumbnail) {
        panels.push({ label: `${label}: thumbnail`, picture: pictures.length - 1, tiles: [{ rect: [0, 0, 1, 1], first, g, frames }], tokens: frames * g * g });
        first += frames * g * g;
      }
    }
  } else if (inputs.video) {
    dataFlag = 3;
    const { pixelValues, numPatchesList } = inputs.video;
    const frames = model.tokensPerTile(3) / model.numImageToken;
    let tile = 0;
    for (const [f, n] of numPatchesList.entries()) {
      const tiles: Tile[] = [];
      for (let t = 0; t < n; t++, tile++) {
        pictures.push(await jpegDataURL(tileRGB(pixelValues, tile), 224));
        tiles.push({ rect: [0, 0, 1, 1], first, g, frames });
        first += frames * g * g;
      }
      // A frame of several tiles (not PVC) is drawn as its first tile; its tokens still all count.
      panels.push({ label: `Frame${f + 1}`, picture: pictures.length - n, tiles: tiles.slice(0, 1), tokens: n * frames * g * g });
    }
  }
  if (panels.length > 0 && first !== visualTokens) {
    throw new Error(`report inputs: the images or frames given make ${first} visual tokens, but the prompt has ${visualTokens} IMG_CONTEXT tokens`);
  }
  return { pictures, panels, dataFlag };
}

/** Sums over p x p blocks of a g x g grid (attention mass is additive): g x g -> ceil(g/p) x ceil(g/p). */
function poolGrid(src: Float32Array, g: number, p: number): Float32Array {
  const gp = Math.ceil(g / p);
  const out = new Float32Array(gp * gp);
  for (let y = 0; y < g; y++) for (let x = 0; x < g; x++) out[Math.floor(y / p) * gp + Math.floor(x / p)] += src[y * g + x];
  return out;
}

/** Float32 values -> base64 of their little-endian bytes. */
function base64Floats(f: Float32Array): string {
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength).toString('base64');
}

/** JSON for a <script type="application/json"> block: '<' escaped so no string can close the script. */
function scriptJSON(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

function escapeHTML(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * The report of an inspection as one HTML string. The inspection needs `llm.layers.*.attn.probs` for
 * the attention view, `llm.layers.*.out` for the logit lens and (PVC) `vision.layers.*.temporal.probs`
 * for the temporal view; sections without their taps say which taps they need. Call before disposing
 * the inspection.
 */
export async function renderInspectionHTML(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  inspection: Inspection<tf.Tensor> | Inspection<TapArray>,
  inputs: ReportInputs = {},
  options: ReportOptions = {},
): Promise<string> {
  const maxBytes = options.maxBytes ?? REPORT_MAX_BYTES;
  const topK = options.topK ?? 5;
  const taps = inspection.taps as Record<string, Value>;
  const steps = inspection.steps as Record<string, Value>[];
  const token = (id: number) => tokenizer.idToToken(id) ?? `<${id}>`;
  const notes: string[] = [];
  const layerOf = (name: string, re: RegExp) => Number(re.exec(name)?.[1] ?? NaN);

  // Statistics of every recorded tap (generation step k as "step{k}.NAME").
  // Each tap, lens column and token's maps is one step: the event loop gets a turn between them.
  const stats: TensorSummary[] = [];
  for (const [name, v] of [...Object.entries(taps), ...steps.flatMap((s, k) => Object.entries(s).map(([n, t]) => [`step${k}.${n}`, t] as const))]) {
    stats.push(summarizeValues(name, v.shape, dataOf(v)));
    await yieldToEventLoop(options.signal);
  }

  // Generated token j was predicted by the prompt pass's last position (j = 0) or by generation pass j - 1.
  const maxTokens = options.maxTokens ?? 32;
  const generated = inspection.outputIds.slice(0, maxTokens);
  if (inspection.outputIds.length > generated.length)
    notes.push(`only the first ${generated.length} of ${inspection.outputIds.length} generated tokens are shown`);
  const passOf = (j: number): Record<string, Value> | undefined => (j === 0 ? taps : steps[j - 1]);

  // Logit lens: layers x positions (the last prompt positions, then each generated token's predictor).
  const lensRe = /^llm\.layers\.(\d+)\.out$/;
  const lensLayers = Object.keys(taps)
    .filter((n) => lensRe.test(n))
    .map((n) => layerOf(n, lensRe))
    .sort((a, b) => a - b);
  const lens: { columns: { label: string; input: string; next: string | null; cells: { top: [string, number][]; hit: boolean }[] }[]; layers: number[] } = {
    columns: [],
    layers: lensLayers,
  };
  if (lensLayers.length > 0) {
    const L = inspection.inputIds.length;
    const promptPositions = Math.min(options.lensPromptPositions ?? 4, L);
    const columnOf = async (pass: Record<string, Value>, position: number, label: string, input: number, next: number | undefined) => {
      const states = new Map<number, tf.Tensor>();
      for (const layer of lensLayers) {
        const v = pass[`llm.layers.${layer}.out`];
        if (v) states.set(layer, v instanceof tf.Tensor ? v : tf.tensor(v.data, v.shape));
      }
      const rows = logitLens(model.llm, tokenizer, states, topK, position);
      for (const [layer, t] of states) if (!(pass[`llm.layers.${layer}.out`] instanceof tf.Tensor)) t.dispose();
      await yieldToEventLoop(options.signal);
      lens.columns.push({
        label,
        input: token(input),
        next: next === undefined ? null : token(next),
        cells: rows.map((r) => ({ top: r.top.map((t) => [t.token, t.prob] as [string, number]), hit: next !== undefined && r.top[0]?.id === next })),
      });
    };
    for (let p = L - promptPositions; p < L; p++) {
      const next = p + 1 < L ? inspection.inputIds[p + 1] : generated[0];
      await columnOf(taps, p, p === L - 1 ? `prompt ${p} (last)` : `prompt ${p}`, inspection.inputIds[p], next);
    }
    for (let j = 1; j < generated.length; j++) {
      if (steps[j - 1]?.[`llm.layers.${lensLayers[0]}.out`]) await columnOf(steps[j - 1], -1, `gen ${j - 1}`, generated[j - 1], generated[j]);
    }
  }

  // Temporal attention (PVC): per ViT layer, mean over sequences and tokens: [heads + mean][F][F].
  const temporalRe = /^vision\.layers\.(\d+)\.temporal\.probs$/;
  const temporal = Object.keys(taps)
    .filter((n) => temporalRe.test(n))
    .sort((a, b) => layerOf(a, temporalRe) - layerOf(b, temporalRe))
    .map((name) => {
      const [S, T, H, F] = taps[name].shape;
      const data = dataOf(taps[name]);
      const maps = Array.from({ length: H + 1 }, () => new Float32Array(F * F));
      for (let s = 0; s < S; s++)
        for (let t = 0; t < T; t++)
          for (let h = 0; h < H; h++) {
            const base = ((s * T + t) * H + h) * F * F;
            for (let i = 0; i < F * F; i++) {
              const v = data[base + i] / (S * T);
              maps[h + 1][i] += v;
              maps[0][i] += v / H;
            }
          }
      return {
        layer: layerOf(name, temporalRe),
        frames: F,
        heads: H,
        sequences: S,
        tokens: T,
        maps: maps.map((m) => Array.from(m, (x) => Number(x.toPrecision(4)))),
      };
    });

  // Attention of each generated token over the visual tokens, by LLM layer and head.
  const attnRe = /^llm\.layers\.(\d+)\.attn\.probs$/;
  const attnLayers = Object.keys(taps)
    .filter((n) => attnRe.test(n))
    .map((n) => layerOf(n, attnRe))
    .sort((a, b) => a - b);
  const { pictures, panels, dataFlag } = await layoutPanels(model, inputs, inspection.imageTokenPositions.length);
  // The generated tokens whose predicting pass recorded every attention layer (the leading ones).
  let attnTokens = 0;
  while (attnTokens < generated.length && attnLayers.length > 0 && attnLayers.every((l) => passOf(attnTokens)?.[`llm.layers.${l}.attn.probs`] !== undefined))
    attnTokens++;
  const heads = model.config.llm.num_attention_heads;
  // maps[j][layer][0 = mean of heads, 1 + h = head h]: attention mass per visual token, summed over a tile's frames.
  const rawMaps: Float32Array[][][] = [];
  const frameMass: number[][][][] = []; // [j][layer][head][panel]: the attention mass on each panel's tokens
  if (panels.length > 0) {
    for (let j = 0; j < attnTokens; j++) {
      await yieldToEventLoop(options.signal);
      const pass = passOf(j)!;
      rawMaps.push(
        attnLayers.map((layer) => {
          const rows = lastQueryRows(pass[`llm.layers.${layer}.attn.probs`]);
          const visual = rows.map((row) => Float32Array.from(inspection.imageTokenPositions, (pos) => row[pos]));
          const mean = new Float32Array(visual[0].length);
          visual.forEach((v) => v.forEach((x, i) => (mean[i] += x / visual.length)));
          return [mean, ...visual];
        }),
      );
      frameMass.push(
        rawMaps[j].map((perHead) =>
          perHead.map((v) =>
            panels.map((p) => {
              let sum = 0;
              const start = p.tiles[0].first;
              for (let i = start; i < start + p.tokens; i++) sum += v[i];
              return Number(sum.toPrecision(4));
            }),
          ),
        ),
      );
    }
  }

  // The prompt with each image's run of IMG_CONTEXT tokens written as a count; the title is its question.
  const prompt =
    inspection.prompt?.replace(/<img>((?:<IMG_CONTEXT>)+)<\/img>/g, (_, run: string) => `<img><IMG_CONTEXT> x ${run.length / '<IMG_CONTEXT>'.length}</img>`) ??
    null;
  const lastTurn = prompt?.slice(prompt.lastIndexOf('<|im_start|>user\n') + '<|im_start|>user\n'.length) ?? '';
  const question = prompt?.includes('<|im_start|>user\n')
    ? lastTurn
        .replace(/<\|im_end\|>[\s\S]*$/, '')
        .replace(/<img>[\s\S]*?<\/img>/g, '<image>')
        .trim()
    : undefined;
  const data = {
    title: inputs.title ?? question ?? prompt ?? '',
    model: {
      dir: model.dir,
      llmLayers: model.config.llm.num_hidden_layers,
      heads,
      numImageToken: model.numImageToken,
      pvc: model.config.pvc !== undefined && model.config.pvc !== null,
      dataFlag,
    },
    prompt,
    promptTokens: inspection.inputIds.length,
    visualTokens: inspection.imageTokenPositions.length,
    generated: generated.map(token),
    answer: tokenizer.decode(inspection.outputIds),
    attention: { layers: attnLayers, tokens: attnTokens, headsKept: heads + 1, g: 0, pool: 1, maps: '', scales: '' },
    notes,
    pictures,
    panels,
    lens,
    temporal,
    frameMass,
    stats: stats.map((s) => [s.name, s.shape, s.mean, s.std, s.min, s.max]),
  };

  // Pool the token grids (2x2, 4x4, ...) and then keep only the mean of heads until the maps fit the
  // budget: the page without maps (plus room for the notes) and the maps' base64.
  const withoutMaps = Buffer.byteLength(pageOf(data)) + 1024;
  const g0 = Math.round(Math.sqrt(model.numImageToken));
  let pool = 1;
  let headsKept = heads + 1;
  const mapBytes = () => {
    const gp = Math.ceil(g0 / pool);
    const cells = panels.reduce((a, p) => a + p.tiles.length * gp * gp, 0);
    const count = attnTokens * attnLayers.length * headsKept;
    return 4 * Math.ceil((count * cells) / 3) + 4 * Math.ceil((count * 4) / 3);
  };
  while (withoutMaps + mapBytes() > maxBytes && (pool < g0 || headsKept > 1)) {
    if (pool < g0) pool *= 2;
    else headsKept = 1;
  }
  if (withoutMaps + mapBytes() > maxBytes) {
    throw new Error(
      `report: ${withoutMaps + mapBytes()} bytes even with pooled maps and no per-head maps; over maxBytes ${maxBytes} (fewer taps, tokens or frames?)`,
    );
  }
  const gp = Math.ceil(g0 / pool);
  if (pool > 1) notes.push(`attention maps pooled ${pool}x${pool} (each tile's ${g0}x${g0} token grid shown as ${gp}x${gp}) to stay within ${maxBytes} bytes`);
  if (headsKept === 1 && attnTokens > 0) notes.push(`per-head attention maps left out (mean of heads only) to stay within ${maxBytes} bytes`);
  // Each map: every panel's tiles in order, each tile its gp x gp grid summed over its frames; stored at
  // 8 bits relative to the map's largest value (its scale), as many levels as the colour scale has.
  const mapSize = panels.reduce((a, p) => a + p.tiles.length * gp * gp, 0);
  const count = attnTokens * attnLayers.length * headsKept;
  const maps = new Uint8Array(count * mapSize);
  const scales = new Float32Array(count);
  let k = 0;
  for (const perLayer of rawMaps) {
    await yieldToEventLoop(options.signal);
    for (const perHead of perLayer)
      for (const v of perHead.slice(0, headsKept)) {
        const map = new Float32Array(mapSize);
        let at = 0;
        for (const p of panels)
          for (const tile of p.tiles) {
            const grid = new Float32Array(g0 * g0);
            for (let f = 0; f < tile.frames; f++) for (let i = 0; i < g0 * g0; i++) grid[i] += v[tile.first + f * g0 * g0 + i];
            map.set(poolGrid(grid, g0, pool), at);
            at += gp * gp;
          }
        const max = map.reduce((a, b) => Math.max(a, b), 0);
        scales[k] = max;
        map.forEach((x, i) => (maps[k * mapSize + i] = max > 0 ? Math.round((255 * x) / max) : 0));
        k++;
      }
  }
  data.attention = { layers: attnLayers, tokens: attnTokens, headsKept, g: gp, pool, maps: Buffer.from(maps).toString('base64'), scales: base64Floats(scales) };
  const html = pageOf(data);
  if (Buffer.byteLength(html) > maxBytes) throw new Error(`report: ${Buffer.byteLength(html)} bytes, over maxBytes ${maxBytes}`);
  return html;
}

/** The page: the data as a JSON block, the page's own style and script inline. */
function pageOf(data: { title: string }): string {
  const title = escapeHTML(`pvc inspect: ${data.title}`.slice(0, 200));
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>${REPORT_PAGE_STYLE}</style></head>
<body><h1>${title}</h1><div id="report">the report needs JavaScript</div>
<script type="application/json" id="report-data">${scriptJSON(data)}</script>
<script>${REPORT_PAGE_SCRIPT}</script></body></html>
`;
}

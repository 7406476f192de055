// The inspection report: ONE self-contained HTML file (no network, no external script; data inlined)
// to look at an inspection: the attention of each generated token over the input images or video
// frames by LLM layer and head, the logit lens, PVC's temporal attention across frames, and statistics
// of every recorded tap. The page (src/inspect/report_page.ts) draws on canvases from the data built here.
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { yieldToEventLoop } from '../event_loop';
import { DataFlag } from '../model/samples';
import { VisionLanguageModel } from '../model/vlm';
import { decodeRGB } from '../preprocess/image';
import { IMAGENET_MEAN, IMAGENET_STD } from '../preprocess/tiles';
import { RGBImage } from '../preprocess/resample';
import { decodeAnswer, PVCTokenizer } from '../tokenizer';
import type { Inspection, TapArray } from './inspect';
import { LensRow, lensRows, summarizeValues, TensorSummary } from './lens';
import type { LensCell, Panel, Picture, ReportAttention, ReportData, ReportLens, ReportTemporal, ReportText, Tile } from './report_data';
import { reportPageHTML } from './report_page';

/** What the prompt's pixels were: the report draws them and lays the visual tokens out on them. */
export interface ReportInputs {
  /** The prompt's images in order: the file (or bytes) each was loaded from, and loadImage's grid and numPatches. */
  images?: { source: string | Buffer; grid: [number, number]; numPatches: number }[];
  /**
   * A video: loadVideo's pixelValues (one tile per frame) and numPatchesList. The frames are drawn from
   * `frames` (the frame images, files or bytes) when given, else from the model's tiles at the video's
   * aspect ratio (`width` / `height`, which loadVideo gives).
   */
  video?: { pixelValues: tf.Tensor4D; numPatchesList: number[]; width?: number; height?: number };
  /** The video's frames as images (pvc inspect --frame / --frames-from), drawn as they are. */
  frames?: (string | Buffer)[];
  /** Default: the question of the prompt's last turn. */
  title?: string;
}

export interface ReportOptions {
  /** Upper bound on the HTML file's size in bytes (default REPORT_MAX_BYTES); attention maps are pooled to fit. */
  maxBytes?: number;
  /**
   * Prompt positions in the logit-lens grid besides the generated ones: at most this many of the text
   * positions (visual tokens left out), the last ones (default 64). The page shows the question's, or all.
   */
  lensPromptPositions?: number;
  /** Tokens per logit-lens cell (default 10). */
  topK?: number;
  /** Generated tokens shown, the first ones (default 32). */
  maxTokens?: number;
  /** Aborts the build (AbortError) between its steps, where the event loop also gets a turn. */
  signal?: AbortSignal;
}

/** The taps the report reads for `model`: the embeddings and each LLM layer's attention and output, and PVC's temporal attention. */
export function reportTaps(model: VisionLanguageModel): string[] {
  const taps = ['llm.embeds', 'llm.layers.*.attn.probs', 'llm.layers.*.out'];
  if (model.tapNames().some((n) => n.endsWith('.temporal.probs'))) taps.push('vision.layers.*.temporal.probs');
  return taps;
}

/** The default size budget of a report: 16 MiB. */
export const REPORT_MAX_BYTES = 16 * 1024 * 1024;

type Value = tf.Tensor | TapArray;
type Pass = Record<string, Value>;

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
  if (inputs.frames && !inputs.video) throw new Error('report inputs: frames are the pictures of a video: give the video too');
  if (inputs.images && inputs.images.length > 0) {
    dataFlag = inputs.images.length > 1 ? 2 : 1;
    const frames = model.tokensPerTile(dataFlag) / model.numImageToken;
    for (const [i, image] of inputs.images.entries()) {
      const [cols, rows] = image.grid;
      const thumbnail = image.numPatches > cols * rows;
      if (image.numPatches !== cols * rows + (thumbnail ? 1 : 0))
        throw new Error(`report inputs: image ${i + 1} has ${image.numPatches} tiles, which does not fit its ${cols}x${rows} grid`);
      // Decoded as the model's preprocessing decodes it (the formats and limits it accepts).
      const picture = await jpegDataURL(await decodeRGB(image.source), 512);
      pictures.push(picture);
      const label = inputs.images.length > 1 ? `Image-${i + 1}` : 'image';
      const aspect = picture.width / picture.height;
      const tiles: Tile[] = [];
      for (let t = 0; t < cols * rows; t++) {
        const x = t % cols;
        const y = Math.floor(t / cols);
        tiles.push({ rect: [x / cols, y / rows, (x + 1) / cols, (y + 1) / rows], first, g, frames });
        first += frames * g * g;
      }
      panels.push({
        label: `${label}: ${cols}x${rows} tiles`,
        kind: 'tiles',
        picture: pictures.length - 1,
        aspect,
        tiles,
        tokens: tiles.length * frames * g * g,
      });
      if (thumbnail) {
        const tile = { rect: [0, 0, 1, 1] as Tile['rect'], first, g, frames };
        panels.push({
          label: `${label}: thumbnail (the whole image as one tile)`,
          kind: 'thumbnail',
          picture: pictures.length - 1,
          aspect,
          tiles: [tile],
          tokens: frames * g * g,
        });
        first += frames * g * g;
      }
    }
  } else if (inputs.video) {
    dataFlag = 3;
    const { pixelValues, numPatchesList, width, height } = inputs.video;
    if (inputs.frames && inputs.frames.length !== numPatchesList.length)
      throw new Error(`report inputs: ${inputs.frames.length} frame pictures for a video of ${numPatchesList.length} frames`);
    const frames = model.tokensPerTile(3) / model.numImageToken;
    let tile = 0;
    for (const [f, n] of numPatchesList.entries()) {
      // A frame of several tiles (not PVC) is drawn as its first tile; its tokens still all count.
      const picture = inputs.frames ? await jpegDataURL(await decodeRGB(inputs.frames[f]), 320) : await jpegDataURL(tileRGB(pixelValues, tile), 224);
      pictures.push(picture);
      const aspect = inputs.frames ? picture.width / picture.height : width && height ? width / height : 1;
      panels.push({
        label: `Frame${f + 1}`,
        kind: 'frame',
        picture: pictures.length - 1,
        aspect,
        tiles: [{ rect: [0, 0, 1, 1], first, g, frames }],
        tokens: n * frames * g * g,
      });
      first += n * frames * g * g;
      tile += n;
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

/** The inspection as the report's parts read it. */
interface Source {
  model: VisionLanguageModel;
  tokenizer: PVCTokenizer;
  inspection: Inspection<tf.Tensor> | Inspection<TapArray>;
  /** The prompt pass's taps, and each generation pass's. */
  taps: Pass;
  steps: Pass[];
  /** The generated tokens shown: the first maxTokens. */
  generated: number[];
  /** What the page should say about what it left out. */
  notes: string[];
  signal?: AbortSignal;
}

const tokenText = (src: Source, id: number) => src.tokenizer.idToToken(id) ?? `<${id}>`;
const layerOf = (name: string, re: RegExp) => Number(re.exec(name)?.[1] ?? NaN);
const layersOf = (taps: Pass, re: RegExp) =>
  Object.keys(taps)
    .filter((n) => re.test(n))
    .map((n) => layerOf(n, re))
    .sort((a, b) => a - b);
/** Generated token j was predicted by the prompt pass's last position (j = 0) or by generation pass j - 1. */
const passOf = (src: Source, j: number): Pass | undefined => (j === 0 ? src.taps : src.steps[j - 1]);

/** Statistics of every recorded tap (generation step k as "step{k}.NAME"), one tap per event-loop turn. */
async function tapStatistics(src: Source): Promise<TensorSummary[]> {
  const stats: TensorSummary[] = [];
  const steps = src.steps.flatMap((s, k) => Object.entries(s).map(([n, t]) => [`step${k}.${n}`, t] as const));
  for (const [name, v] of [...Object.entries(src.taps), ...steps]) {
    stats.push(summarizeValues(name, v.shape, dataOf(v)));
    await yieldToEventLoop(src.signal);
  }
  return stats;
}

/** One lens row as the page shows it: the top tokens (as indices into `lens.tokens`), the next token's probability and rank. */
function lensCell(src: Source, lens: ReportLens, index: Map<number, number>, row: LensRow): LensCell {
  const at = (id: number) => {
    if (!index.has(id)) index.set(id, lens.tokens.push(tokenText(src, id)) - 1);
    return index.get(id)!;
  };
  return {
    top: row.top.map((t) => [at(t.id), Number(t.prob.toPrecision(3))]),
    next: row.target ? [Number(row.target.prob.toPrecision(3)), row.target.rank] : null,
  };
}

/** Where the prompt's last user turn starts (its text after "<|im_start|>user\n"), or 0. */
function questionStart(src: Source): number {
  const ids = src.inspection.inputIds;
  for (let i = ids.length - 3; i >= 0; i--) {
    if (tokenText(src, ids[i]) === '<|im_start|>' && tokenText(src, ids[i + 1]).replace('\u2581', '') === 'user') return i + 3;
  }
  return 0;
}

/**
 * Logit lens: rows (the embeddings when llm.embeds was recorded, then each layer's output) x positions
 * (the prompt's last `maxPrompt` text positions, then each generated token's predictor). Each cell: the
 * top tokens, and the probability and rank of the token that came next.
 */
async function lensGrid(src: Source, maxPrompt: number, topK: number): Promise<ReportLens> {
  const layers = layersOf(src.taps, /^llm\.layers\.(\d+)\.out$/);
  if (layers.length === 0) return { columns: [], layers: [], tokens: [] };
  const rows: [number, string][] = [
    ...(src.taps['llm.embeds'] ? [[-1, 'llm.embeds'] as [number, string]] : []),
    ...layers.map((l): [number, string] => [l, `llm.layers.${l}.out`]),
  ];
  const lens: ReportLens = { columns: [], layers: rows.map(([l]) => l), tokens: [] };
  const index = new Map<number, number>();
  const { inputIds, imageTokenPositions } = src.inspection;
  const { generated, taps, steps } = src;
  const L = inputIds.length;
  const visual = new Set(imageTokenPositions);
  const positions = [...inputIds.keys()].filter((p) => !visual.has(p)).slice(-maxPrompt);
  const next = (p: number) => (p + 1 < L ? inputIds[p + 1] : generated[0]);
  /** The lens of one pass's states at `at` (positions of its states), one product per row. */
  const cellsOf = async (pass: Pass, at: number[], targets: (number | undefined)[]) => {
    const cells: LensCell[][] = at.map(() => []);
    for (const [, name] of rows) {
      const v = pass[name];
      const state = v instanceof tf.Tensor ? v : tf.tensor(v.data, v.shape);
      lensRows(src.model.llm, src.tokenizer, state, at, topK, targets).forEach((r, i) => cells[i].push(lensCell(src, lens, index, r)));
      if (state !== v) state.dispose();
      await yieldToEventLoop(src.signal);
    }
    return cells;
  };
  const qStart = questionStart(src);
  const promptCells = await cellsOf(taps, positions, positions.map(next));
  positions.forEach((p, i) => {
    const n = next(p);
    lens.columns.push({
      label: p === L - 1 ? `prompt ${p} (last)` : `prompt ${p}`,
      part: p >= qStart ? 'question' : 'prompt',
      input: tokenText(src, inputIds[p]),
      next: n === undefined ? null : tokenText(src, n),
      cells: promptCells[i],
    });
  });
  for (let j = 1; j < generated.length; j++) {
    const pass = steps[j - 1];
    if (!rows.every(([, name]) => pass?.[name])) continue;
    const [cells] = await cellsOf(pass, [0], [generated[j]]);
    lens.columns.push({ label: `gen ${j - 1}`, part: 'generated', input: tokenText(src, generated[j - 1]), next: tokenText(src, generated[j]), cells });
  }
  return lens;
}

/** Temporal attention (PVC): per ViT layer, mean over sequences and tokens: [heads + mean][F][F]. */
function temporalAttention(taps: Pass): ReportTemporal[] {
  const temporalRe = /^vision\.layers\.(\d+)\.temporal\.probs$/;
  return layersOf(taps, temporalRe).map((layer) => {
    const tap = taps[`vision.layers.${layer}.temporal.probs`];
    const [S, T, H, F] = tap.shape;
    const data = dataOf(tap);
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
    return { layer, frames: F, heads: H, sequences: S, tokens: T, maps: maps.map((m) => Array.from(m, (x) => Number(x.toPrecision(4)))) };
  });
}

/** The attention rows of the generated tokens over the visual tokens and over the prompt's groups, by LLM layer and head. */
interface AttentionRows {
  layers: number[];
  /** The generated tokens whose predicting pass recorded every attention layer (the leading ones). */
  tokens: number;
  /** [j][layer][0 = mean of heads, 1 + h = head h]: attention mass per visual token. */
  maps: Float32Array[][][];
  /** [j][layer][head][panel]: the attention mass on each panel's tokens. */
  frameMass: number[][][][];
  text: ReportText;
}

/** Most values of the text view with every head kept; past it only the mean of heads is kept. */
const TEXT_VALUES_WITH_HEADS = 200_000;

/**
 * The prompt's positions in groups for the text view: the first token, the system prompt (one group),
 * each image, tile set or frame (one group per panel), every other token alone; then the generated
 * tokens. Returns the groups and the group of each position (prompt, then generated).
 */
function textGroups(src: Source, panels: Panel[], tokens: number): { groups: ReportText['groups']; groupOf: number[] } {
  const ids = src.inspection.inputIds;
  const texts = ids.map((id) => tokenText(src, id));
  const visual = new Map(src.inspection.imageTokenPositions.map((pos, v) => [pos, v]));
  // The system turn's text: after "<|im_start|>system\n", up to its "<|im_end|>".
  let system: [number, number] = [-1, -1];
  const open = texts.indexOf('<|im_start|>');
  // The role's line ends with a newline token: "\n", or the byte token <0x0A> of a byte-fallback vocabulary.
  const newline = texts.findIndex((t, i) => i > open && (t === '\n' || t === '<0x0A>'));
  if (
    open >= 0 &&
    newline > open &&
    texts
      .slice(open + 1, newline)
      .join('')
      .replace(/\u2581/g, '') === 'system'
  ) {
    const close = texts.indexOf('<|im_end|>', newline);
    if (close > newline + 1) system = [newline + 1, close];
  }
  const groups: ReportText['groups'] = [];
  const groupOf: number[] = [];
  const panelGroup = new Map<number, number>();
  ids.forEach((id, pos) => {
    const v = visual.get(pos);
    if (v !== undefined) {
      const k = panels.findIndex((p) => v >= p.tiles[0].first && v < p.tiles[0].first + p.tokens);
      if (!panelGroup.has(k)) {
        panelGroup.set(k, groups.length);
        groups.push({ label: k >= 0 ? panels[k].label : 'visual tokens', kind: 'image', count: 0 });
      }
      groupOf.push(panelGroup.get(k)!);
    } else if (pos >= system[0] && pos < system[1]) {
      if (pos === system[0]) groups.push({ label: 'system prompt', kind: 'system', count: 0 });
      groupOf.push(groups.length - 1);
    } else {
      const kind = pos === 0 ? 'first' : src.tokenizer.specialIds.has(id) ? 'special' : 'text';
      groups.push({ label: texts[pos], kind, count: 0 });
      groupOf.push(groups.length - 1);
    }
    groups[groupOf[pos]].count++;
  });
  for (let j = 0; j + 1 < tokens; j++) {
    groupOf.push(groups.length);
    groups.push({ label: tokenText(src, src.generated[j]), kind: 'generated', count: 1 });
  }
  return { groups, groupOf };
}

async function attentionRows(src: Source, panels: Panel[]): Promise<AttentionRows> {
  const layers = layersOf(src.taps, /^llm\.layers\.(\d+)\.attn\.probs$/);
  let tokens = 0;
  while (tokens < src.generated.length && layers.length > 0 && layers.every((l) => passOf(src, tokens)?.[`llm.layers.${l}.attn.probs`] !== undefined)) tokens++;
  const { groups, groupOf } = textGroups(src, panels, tokens);
  const rows: AttentionRows = { layers, tokens, maps: [], frameMass: [], text: { groups, values: [] } };
  const heads = src.model.config.llm.num_attention_heads;
  const textHeads = tokens * layers.length * (heads + 1) * groups.length <= TEXT_VALUES_WITH_HEADS;
  const positions = src.inspection.imageTokenPositions;
  const round = (x: number) => Number(x.toPrecision(4));
  const roundText = (x: number) => (x < 1e-6 ? 0 : Number(x.toPrecision(3)));
  const panelMass = (v: Float32Array) =>
    panels.map((p) => {
      let sum = 0;
      const start = p.tiles[0].first;
      for (let i = start; i < start + p.tokens; i++) sum += v[i];
      return round(sum);
    });
  /** A row over all positions (the prompt's and the generated ones before it) summed by group. */
  const groupMass = (row: Float32Array) => {
    const sums = new Array<number>(groupOf[row.length - 1] + 1).fill(0);
    row.forEach((x, pos) => (sums[groupOf[pos]] += x));
    return sums.map(roundText);
  };
  for (let j = 0; j < tokens; j++) {
    await yieldToEventLoop(src.signal);
    const pass = passOf(src, j)!;
    const perLayer: Float32Array[][] = [];
    const textLayers: number[][][] = [];
    for (const layer of layers) {
      const headRows = lastQueryRows(pass[`llm.layers.${layer}.attn.probs`]);
      const meanRow = new Float32Array(headRows[0].length);
      headRows.forEach((r) => r.forEach((x, i) => (meanRow[i] += x / headRows.length)));
      const all = [meanRow, ...headRows];
      perLayer.push(panels.length > 0 ? all.map((row) => Float32Array.from(positions, (pos) => row[pos])) : []);
      textLayers.push((textHeads ? all : [meanRow]).map(groupMass));
    }
    rows.text.values.push(textLayers);
    if (panels.length === 0) continue;
    rows.maps.push(perLayer);
    rows.frameMass.push(perLayer.map((perHead) => perHead.map(panelMass)));
  }
  if (!textHeads && tokens > 0) src.notes.push(`attention to the prompt kept as the mean of heads only (${groups.length} groups)`);
  return rows;
}

/** The prompt with each image's run of IMG_CONTEXT tokens written as a count, and its last turn's question. */
function promptAndQuestion(inspection: Source['inspection']): { prompt: string | null; question: string | undefined } {
  const prompt =
    inspection.prompt?.replace(
      /<img>((?:<IMG_CONTEXT>)+)<\/img>/g,
      (_, run: string) => `<img><IMG_CONTEXT> x ${run.length / '<IMG_CONTEXT>'.length} tokens</img>`,
    ) ?? null;
  const lastTurn = prompt?.slice(prompt.lastIndexOf('<|im_start|>user\n') + '<|im_start|>user\n'.length) ?? '';
  const question = prompt?.includes('<|im_start|>user\n')
    ? lastTurn
        .replace(/<\|im_end\|>[\s\S]*$/, '')
        .replace(/<img>[\s\S]*?<\/img>/g, '<image>')
        .trim()
    : undefined;
  return { prompt, question };
}

/** A question for a title: its runs of placeholder lines ("Frame1: <image>", "Image-2: <image>") as a count. */
export function titleOfQuestion(question: string): string {
  return question
    .replace(/(?:(Frame|Image-)\d+: <image>\n?)+/g, (run: string, kind: string) => {
      const n = run.split('<image>').length - 1;
      return kind === 'Frame' ? `[${n} frames] ` : `[${n} images] `;
    })
    .replace(/<image>\n?/g, '[image] ')
    .replace(/\s+/g, ' ')
    .trim();
}

/** The page's data with the attention maps still empty (the budget decides how they are stored). */
function reportPayload(
  src: Source,
  inputs: ReportInputs,
  parts: Pick<ReportData, 'notes' | 'lens' | 'temporal' | 'pictures' | 'panels'> & { stats: TensorSummary[]; dataFlag: DataFlag | null; rows: AttentionRows },
): ReportData {
  const { model, inspection } = src;
  const { prompt, question } = promptAndQuestion(inspection);
  const heads = model.config.llm.num_attention_heads;
  const { rows } = parts;
  // The view the page opens on: for token 0, the layer whose heads (their mean) put the most attention on the visual tokens.
  const shareOf = (li: number) => rows.frameMass[0]?.[li]?.[0]?.reduce((a, b) => a + b, 0) ?? 0;
  let best = rows.layers.length - 1;
  rows.layers.forEach((_, li) => (shareOf(li) > shareOf(best) ? (best = li) : 0));
  const runs: [number, number][] = [];
  for (const pos of inspection.imageTokenPositions) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === pos) last[1]++;
    else runs.push([pos, 1]);
  }
  return {
    title: inputs.title ?? (question !== undefined ? titleOfQuestion(question) : (prompt ?? '')),
    model: {
      dir: model.dir,
      llmLayers: model.config.llm.num_hidden_layers,
      heads,
      numImageToken: model.numImageToken,
      pvc: model.config.pvc !== undefined && model.config.pvc !== null,
      dataFlag: parts.dataFlag,
    },
    prompt,
    promptTokens: inspection.inputIds.length,
    visualTokens: inspection.imageTokenPositions.length,
    generated: src.generated.map((id) => tokenText(src, id)),
    answer: decodeAnswer(src.tokenizer, inspection.outputIds),
    attention: {
      layers: rows.layers,
      tokens: rows.tokens,
      headsKept: heads + 1,
      g: 0,
      pool: 1,
      maps: '',
      scales: '',
      initial: { layer: rows.layers[best] ?? 0, head: 0, share: Number(shareOf(best).toPrecision(4)) },
      positions: runs,
    },
    text: rows.text,
    notes: parts.notes,
    pictures: parts.pictures,
    panels: parts.panels,
    lens: parts.lens,
    temporal: parts.temporal,
    frameMass: parts.rows.frameMass,
    stats: parts.stats.map((s) => [s.name, s.shape, s.mean, s.std, s.min, s.max]),
  };
}

/**
 * How the maps fit the budget: the token grids pooled (2x2, 4x4, ...) and then only the mean of heads
 * kept, until the page without maps (withoutMaps) and the maps' base64 fit maxBytes.
 */
function fitMaps(rows: AttentionRows, panels: Panel[], g0: number, heads: number, withoutMaps: number, maxBytes: number): { pool: number; headsKept: number } {
  let pool = 1;
  let headsKept = heads + 1;
  const mapBytes = () => {
    const gp = Math.ceil(g0 / pool);
    const cells = panels.reduce((a, p) => a + p.tiles.length * gp * gp, 0);
    const count = rows.tokens * rows.layers.length * headsKept;
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
  return { pool, headsKept };
}

/**
 * The maps as the page reads them. Each map: every panel's tiles in order, each tile its gp x gp grid
 * summed over its frames; stored at 8 bits relative to the map's largest value (its scale), as many
 * levels as the colour scale has.
 */
async function encodeMaps(
  base: ReportAttention,
  rows: AttentionRows,
  panels: Panel[],
  g0: number,
  fit: { pool: number; headsKept: number },
  signal?: AbortSignal,
): Promise<ReportAttention> {
  const { pool, headsKept } = fit;
  const gp = Math.ceil(g0 / pool);
  const mapSize = panels.reduce((a, p) => a + p.tiles.length * gp * gp, 0);
  const count = rows.tokens * rows.layers.length * headsKept;
  const maps = new Uint8Array(count * mapSize);
  const scales = new Float32Array(count);
  let k = 0;
  for (const perLayer of rows.maps) {
    await yieldToEventLoop(signal);
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
  return { ...base, headsKept, g: gp, pool, maps: Buffer.from(maps).toString('base64'), scales: base64Floats(scales) };
}

/**
 * The report of an inspection as one HTML string. The inspection needs `llm.layers.*.attn.probs` for
 * the attention views, `llm.layers.*.out` (and `llm.embeds` for its embeddings row) for the logit lens
 * and (PVC) `vision.layers.*.temporal.probs` for the temporal view: `reportTaps(model)`; sections
 * without their taps say which taps they need. Call before disposing the inspection. Each tap, lens row
 * and token's maps is one step: the event loop gets a turn between them.
 */
export async function renderInspectionHTML(
  model: VisionLanguageModel,
  tokenizer: PVCTokenizer,
  inspection: Inspection<tf.Tensor> | Inspection<TapArray>,
  inputs: ReportInputs = {},
  options: ReportOptions = {},
): Promise<string> {
  const maxBytes = options.maxBytes ?? REPORT_MAX_BYTES;
  const generated = inspection.outputIds.slice(0, options.maxTokens ?? 32);
  const notes: string[] = [];
  const src: Source = {
    model,
    tokenizer,
    inspection,
    taps: inspection.taps as Pass,
    steps: inspection.steps as Pass[],
    generated,
    notes,
    signal: options.signal,
  };
  if (inspection.outputIds.length > generated.length)
    notes.push(`only the first ${generated.length} of ${inspection.outputIds.length} generated tokens are shown`);
  const stats = await tapStatistics(src);
  const lens = await lensGrid(src, options.lensPromptPositions ?? 64, options.topK ?? 10);
  const temporal = temporalAttention(src.taps);
  const { pictures, panels, dataFlag } = await layoutPanels(model, inputs, inspection.imageTokenPositions.length);
  const rows = await attentionRows(src, panels);
  const data = reportPayload(src, inputs, { notes, stats, lens, temporal, pictures, panels, dataFlag, rows });

  // The page without maps, plus room for the notes below, against the budget.
  const g0 = Math.round(Math.sqrt(model.numImageToken));
  const fit = fitMaps(rows, panels, g0, model.config.llm.num_attention_heads, Buffer.byteLength(reportPageHTML(data)) + 1024, maxBytes);
  const gp = Math.ceil(g0 / fit.pool);
  if (fit.pool > 1)
    notes.push(`attention maps pooled ${fit.pool}x${fit.pool} (each tile's ${g0}x${g0} token grid shown as ${gp}x${gp}) to stay within ${maxBytes} bytes`);
  if (fit.headsKept === 1 && rows.tokens > 0) notes.push(`per-head attention maps left out (mean of heads only) to stay within ${maxBytes} bytes`);
  data.attention = await encodeMaps(data.attention, rows, panels, g0, fit, options.signal);
  const html = reportPageHTML(data);
  if (Buffer.byteLength(html) > maxBytes) throw new Error(`report: ${Buffer.byteLength(html)} bytes, over maxBytes ${maxBytes}`);
  return html;
}

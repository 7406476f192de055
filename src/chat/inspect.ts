// Layer inspection: named taps on every stage, glob patterns over them, recording during the prompt
// pass and each generation step, and the two helpers people use: attention over the image as a
// heatmap, and the logit lens.
//
// Tap names (shapes for one prompt of L tokens, N tiles or frames of T+1 tokens, width C / D):
//   vision.embeddings                 [N, T+1, C]
//   vision.layers.{i}.attn.probs      [N, heads, T+1, T+1]
//   vision.layers.{i}.attn.out        [N, T+1, C]   (before layer scale)
//   vision.layers.{i}.temporal.probs  [S, T+1, heads, F, F]   PVC temporal layers: S sequences of F frames
//   vision.layers.{i}.temporal.out    [N, T+1, C]   (ls_t * TMHA(norm_t(x)))
//   vision.layers.{i}.mlp.out         [N, T+1, C]   (before layer scale)
//   vision.layers.{i}.out             [N, T+1, C]
//   projector.out                     [N, tokens per tile, D]
//   llm.embeds                        [1, L, D]     (visual tokens merged)
//   llm.layers.{i}.attn.probs         [1, heads, L, L]
//   llm.layers.{i}.attn.out           [1, L, D]
//   llm.layers.{i}.mlp.out            [1, L, D]
//   llm.layers.{i}.out                [1, L, D]
//   llm.norm, llm.logits              [1, 1, D], [1, 1, V]   (last position)
// During generation step k (the pass that reads generated token k) the llm.* taps have L = 1 for the
// query and the full cached length for the keys of attn.probs.
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { ModelConfig } from '../config';
import { InternLM2 } from '../llm/internlm2';
import { PVCTokenizer } from '../tokenizer';

/** Every tap name a model has. */
export function tapNames(config: ModelConfig): string[] {
  const names = ['vision.embeddings'];
  const vitLayers = config.select_layer < 0 ? config.vision.num_hidden_layers + 1 + config.select_layer : config.select_layer;
  const temporal = config.pvc?.use_temporal ? new Set(config.pvc.temporal_layers) : new Set<number>();
  for (let i = 0; i < vitLayers; i++) {
    names.push(`vision.layers.${i}.attn.probs`, `vision.layers.${i}.attn.out`);
    if (temporal.has(i)) names.push(`vision.layers.${i}.temporal.probs`, `vision.layers.${i}.temporal.out`);
    names.push(`vision.layers.${i}.mlp.out`, `vision.layers.${i}.out`);
  }
  names.push('projector.out', 'llm.embeds');
  for (let i = 0; i < config.llm.num_hidden_layers; i++) {
    names.push(`llm.layers.${i}.attn.probs`, `llm.layers.${i}.attn.out`, `llm.layers.${i}.mlp.out`, `llm.layers.${i}.out`);
  }
  names.push('llm.norm', 'llm.logits');
  return names;
}

/** A glob over tap names: `*` is one name segment, `{a,b}` alternatives, `{20..23}` an integer range. */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') re += '[^.]+';
    else if (c === '{') {
      const end = pattern.indexOf('}', i);
      if (end < 0) throw new Error(`tap pattern '${pattern}': unclosed '{'`);
      const body = pattern.slice(i + 1, end);
      const range = /^(\d+)\.\.(\d+)$/.exec(body);
      const options = range
        ? Array.from({ length: Math.max(0, Number(range[2]) - Number(range[1]) + 1) }, (_, k) => String(Number(range[1]) + k))
        : body.split(',');
      re += `(?:${options.map((o) => o.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`;
      i = end;
    } else re += c.replace(/[.+?^$()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length][b.length];
}

/** The tap names the patterns select; a pattern that selects nothing is an error listing close names. */
export function expandTaps(patterns: string[], names: string[]): Set<string> {
  const selected = new Set<string>();
  for (const pattern of patterns) {
    const re = globToRegExp(pattern);
    const hits = names.filter((n) => re.test(n));
    if (hits.length === 0) {
      const close = names
        .map((n) => ({ n, d: editDistance(pattern.replace(/\*/g, '0'), n) }))
        .sort((a, b) => a.d - b.d)
        .slice(0, 5)
        .map((x) => x.n);
      throw new Error(`tap '${pattern}' matches no tap of this model; close matches: ${close.join(', ')}`);
    }
    hits.forEach((h) => selected.add(h));
  }
  return selected;
}

/** Collects selected taps: the prompt pass into `prompt`, generation pass k into `steps[k]`. */
export class TapRecorder {
  readonly prompt = new Map<string, tf.Tensor[]>();
  readonly steps: Map<string, tf.Tensor>[] = [];
  /** -1 during the prompt pass, else the generation step being recorded. */
  step = -1;

  constructor(readonly selected: Set<string>) {}

  readonly tap = (name: string, value: tf.Tensor): void => {
    if (!this.selected.has(name)) return;
    const kept = tf.keep(value.clone());
    if (this.step < 0) {
      const list = this.prompt.get(name) ?? [];
      list.push(kept);
      this.prompt.set(name, list);
    } else {
      while (this.steps.length <= this.step) this.steps.push(new Map());
      this.steps[this.step].get(name)?.dispose();
      this.steps[this.step].set(name, kept);
    }
  };

  /** Prompt-pass values by name (a tap that fired once per sample is concatenated along axis 0). */
  promptValues(): Record<string, tf.Tensor> {
    const out: Record<string, tf.Tensor> = {};
    for (const [name, list] of this.prompt) {
      out[name] = list.length === 1 ? list[0] : tf.concat(list);
      if (list.length > 1) tf.dispose(list);
    }
    return out;
  }
}

export interface TensorSummary {
  name: string;
  shape: number[];
  mean: number;
  std: number;
  min: number;
  max: number;
}

export function summarize(name: string, t: tf.Tensor): TensorSummary {
  const v = t.dataSync() as Float32Array;
  let sum = 0;
  let sq = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const x of v) {
    sum += x;
    sq += x * x;
    if (x < min) min = x;
    if (x > max) max = x;
  }
  const mean = sum / v.length;
  return { name, shape: t.shape, mean, std: Math.sqrt(Math.max(sq / v.length - mean * mean, 0)), min, max };
}

export function formatSummaries(rows: TensorSummary[]): string {
  const f = (x: number) => (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(3) : x.toFixed(4));
  const lines = rows.map((r) => [r.name, `[${r.shape.join(', ')}]`, f(r.mean), f(r.std), f(r.min), f(r.max)]);
  const header = ['name', 'shape', 'mean', 'std', 'min', 'max'];
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  return [header, ...lines].map((l) => l.map((c, i) => c.padEnd(widths[i])).join('  ')).join('\n');
}

/**
 * Logit lens: the final norm and output head applied to each layer's state at one position (default
 * the last): the top-k tokens each layer would predict.
 */
export function logitLens(llm: InternLM2, tokenizer: PVCTokenizer, layerStates: Map<number, tf.Tensor>, k = 5, position = -1): { layer: number; top: { id: number; token: string; prob: number }[] }[] {
  return [...layerStates.entries()].sort((a, b) => a[0] - b[0]).map(([layer, state]) => {
    const probs = tf.tidy(() => {
      const L = state.shape[1]!;
      const pos = position < 0 ? L + position : position;
      const h = state.slice([0, pos, 0], [1, 1, -1]) as tf.Tensor3D;
      return tf.softmax(llm.output.forward(llm.norm.forward(h)).reshape([-1])).dataSync() as Float32Array;
    });
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]).slice(0, k);
    return { layer, top: order.map((id) => ({ id, token: tokenizer.idToToken(id) ?? '?', prob: probs[id] })) };
  });
}

/** Where each tile sits in the image (cols x rows grid, thumbnail excluded) and its visual tokens per frame. */
export interface TileLayout {
  grid: [number, number];
  /** Tokens of one frame of a tile form a g x g grid. */
  tokensPerFrame: number;
  /** Frames per tile (PVC's image repeats; 1 for InternVL2). */
  framesPerTile: number;
}

/**
 * Average attention from generated tokens to each visual token of one image, laid out on the image:
 * a [rows * g, cols * g] map (tiles of the grid only; the thumbnail, if any, is left out).
 * `stepProbs` are llm attention probabilities [1, heads, 1, keys] of the generation steps (any layers).
 */
export function imageAttentionMap(stepProbs: tf.Tensor[], imagePositions: number[], layout: TileLayout): { map: Float32Array; width: number; height: number } {
  const perImageToken = new Float32Array(imagePositions.length);
  for (const probs of stepProbs) {
    const p = tf.tidy(() => tf.mean(probs, [0, 1, 2]).dataSync() as Float32Array); // average heads -> [keys]
    imagePositions.forEach((pos, k) => (perImageToken[k] += p[pos] / stepProbs.length));
  }
  const [cols, rows] = layout.grid;
  const g = Math.round(Math.sqrt(layout.tokensPerFrame));
  const map = new Float32Array(rows * g * cols * g);
  const perTile = layout.tokensPerFrame * layout.framesPerTile;
  for (let tile = 0; tile < cols * rows; tile++) {
    const tr = Math.floor(tile / cols);
    const tc = tile % cols;
    for (let f = 0; f < layout.framesPerTile; f++) {
      for (let t = 0; t < layout.tokensPerFrame; t++) {
        const v = perImageToken[tile * perTile + f * layout.tokensPerFrame + t] / layout.framesPerTile;
        const y = tr * g + Math.floor(t / g);
        const x = tc * g + (t % g);
        map[y * cols * g + x] += v;
      }
    }
  }
  return { map, width: cols * g, height: rows * g };
}

/** A heat colour (black, red, yellow, white) for t in [0, 1]. */
function heatColor(t: number): [number, number, number] {
  const c = (x: number) => Math.round(255 * Math.min(Math.max(x, 0), 1));
  return [c(3 * t), c(3 * t - 1), c(3 * t - 2)];
}

/** Renders an attention map over an image (same size as the image) as PNG bytes. */
export async function renderHeatmap(imageFile: string | Buffer, attention: { map: Float32Array; width: number; height: number }, opacity = 0.55): Promise<Buffer> {
  const base = sharp(imageFile).removeAlpha().toColourspace('srgb');
  const { width, height } = await base.metadata().then((m) => ({ width: m.width!, height: m.height! }));
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of attention.map) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const rgba = Buffer.alloc(attention.width * attention.height * 4);
  attention.map.forEach((v, i) => {
    const [r, g, b] = heatColor(hi > lo ? (v - lo) / (hi - lo) : 0);
    rgba.set([r, g, b, Math.round(255 * opacity)], i * 4);
  });
  const overlay = await sharp(rgba, { raw: { width: attention.width, height: attention.height, channels: 4 } })
    .resize(width, height, { kernel: 'cubic', fit: 'fill' })
    .png()
    .toBuffer();
  return base.composite([{ input: overlay }]).png().toBuffer();
}

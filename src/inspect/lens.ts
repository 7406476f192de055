// Reading recorded states: a statistics summary of each tap, and the logit lens (the final norm and
// output head applied to every layer's state).
import * as tf from '@tensorflow/tfjs';
import { InternLM2 } from '../llm/internlm2';
import { PVCTokenizer } from '../tokenizer';

export interface TensorSummary {
  name: string;
  shape: number[];
  mean: number;
  std: number;
  min: number;
  max: number;
}

export function summarize(name: string, t: tf.Tensor): TensorSummary {
  return summarizeValues(name, t.shape, t.dataSync() as Float32Array);
}

/** summarize() of plain values (a tap read as { shape, data }). */
export function summarizeValues(name: string, shape: number[], v: Float32Array): TensorSummary {
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
  return { name, shape, mean, std: Math.sqrt(Math.max(sq / v.length - mean * mean, 0)), min, max };
}

export function formatSummaries(rows: TensorSummary[]): string {
  const f = (x: number) => (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(3) : x.toFixed(4));
  const lines = rows.map((r) => [r.name, `[${r.shape.join(', ')}]`, f(r.mean), f(r.std), f(r.min), f(r.max)]);
  const header = ['name', 'shape', 'mean', 'std', 'min', 'max'];
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  return [header, ...lines].map((l) => l.map((c, i) => c.padEnd(widths[i])).join('  ')).join('\n');
}

/** One position through the logit lens: its top tokens, and the probability and rank (1 = the top) of a target token. */
export interface LensRow {
  top: { id: number; token: string; prob: number }[];
  target: { prob: number; rank: number } | null;
}

/**
 * Logit lens of one recorded state [1, L, D] (a layer's output, or the embeddings) at `positions`: the
 * final norm and output head applied to each (one product for all of them), the top-k tokens it would
 * predict and, where `targets[i]` is given, that token's probability and rank.
 */
export function lensRows(
  llm: InternLM2,
  tokenizer: PVCTokenizer,
  state: tf.Tensor,
  positions: number[],
  k: number,
  targets: (number | undefined)[] = [],
): LensRow[] {
  const probs = tf.tidy(() => {
    const rows = tf.gather(state.reshape(state.shape.slice(1)), positions).expandDims(0) as tf.Tensor3D;
    return tf.softmax(llm.output.forward(llm.norm.forward(rows))).dataSync() as Float32Array;
  });
  const V = probs.length / positions.length;
  return positions.map((_, i) => {
    const p = probs.subarray(i * V, (i + 1) * V);
    const top: number[] = [];
    for (let id = 0; id < V; id++) {
      // top stays sorted by probability, ties in id order (as a stable sort of all ids would leave them).
      if (top.length === k && p[id] <= p[top[k - 1]]) continue;
      let at = 0;
      while (at < top.length && p[top[at]] >= p[id]) at++;
      top.splice(at, 0, id);
      if (top.length > k) top.pop();
    }
    const t = targets[i];
    let target = null;
    if (t !== undefined) {
      let above = 0;
      for (let id = 0; id < V; id++) if (p[id] > p[t]) above++;
      target = { prob: p[t], rank: above + 1 };
    }
    return { top: top.map((id) => ({ id, token: tokenizer.idToToken(id) ?? '?', prob: p[id] })), target };
  });
}

/**
 * Logit lens: the final norm and output head applied to each layer's state at one position (default
 * the last): the top-k tokens each layer would predict.
 */
export function logitLens(
  llm: InternLM2,
  tokenizer: PVCTokenizer,
  layerStates: Map<number, tf.Tensor>,
  k = 5,
  position = -1,
): { layer: number; top: { id: number; token: string; prob: number }[] }[] {
  return [...layerStates.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([layer, state]) => {
      const L = state.shape[1]!;
      return { layer, top: lensRows(llm, tokenizer, state, [position < 0 ? L + position : position], k)[0].top };
    });
}

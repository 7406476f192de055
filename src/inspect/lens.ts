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
      const probs = tf.tidy(() => {
        const L = state.shape[1]!;
        const pos = position < 0 ? L + position : position;
        const h = state.slice([0, pos, 0], [1, 1, -1]) as tf.Tensor3D;
        return tf.softmax(llm.output.forward(llm.norm.forward(h)).reshape([-1])).dataSync() as Float32Array;
      });
      const order = Array.from(probs.keys())
        .sort((a, b) => probs[b] - probs[a])
        .slice(0, k);
      return { layer, top: order.map((id) => ({ id, token: tokenizer.idToToken(id) ?? '?', prob: probs[id] })) };
    });
}

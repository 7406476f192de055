// Taps: every stage of the model emits named intermediate values (`vision.layers.3.attn.probs`, ...)
// where it computes them, from the prefix its weights have; the modules list the names they emit
// (`model.tapNames()`). Here: glob patterns over those names, and a recorder that keeps the selected
// ones during the prompt pass and each generation step.
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

  /** Frees everything recorded (after a failed run). */
  dispose(): void {
    this.prompt.forEach((list) => tf.dispose(list));
    this.steps.forEach((m) => tf.dispose([...m.values()]));
  }

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

// Beam search with the semantics of transformers 4.37's generate(num_beams > 1, do_sample=False)
// (BeamSearchScorer, BeamHypotheses, GenerationMixin.beam_search), so that PVC's evaluation settings
// (num_beams=5) give upstream's answers:
//
// - every step scores each beam's next token by log_softmax(logits), runs the logits processors on
//   those log-probabilities (repetition penalty, min new tokens), adds the beam's running score, and
//   keeps the best max(2, 1 + #eos) * numBeams (token, beam) pairs of each batch row;
// - going down that list, an eos among the first numBeams closes a hypothesis (the beam's tokens
//   without the eos, scored sum_logprobs / generated_length ** lengthPenalty, the eos counted), any
//   other token continues a beam, until numBeams beams continue;
// - a row is done once it holds numBeams hypotheses and (earlyStopping true) at once, (false) when no
//   beam can beat the worst hypothesis at the current length, ("never") nor at the longest length
//   possible when lengthPenalty > 0;
// - at the end the surviving beams of unfinished rows join the hypotheses; the best
//   numReturnSequences of each row are returned, an eos after those that ended with one, padded to
//   the longest.
//
// Numbers are float32 where torch's are (log-probabilities, running scores) and double where
// upstream uses Python floats (hypothesis scores, is_done), so scores match to float32 rounding.
//
// The prompt is prefilled once per batch row; the KV cache then shares it between the row's beams and
// reorders only the generated positions (KVCache.shareWithBeams / reorder): upstream prefills numBeams
// copies of the prompt and reorders the whole cache every step.
import * as tf from '@tensorflow/tfjs';
import { throwIfAborted, yieldToEventLoop } from '../event_loop';
import { InternLM2 } from '../llm/internlm2';
import { GenerationConfig } from './config';
import { applyMinNewTokens, applyRepetitionPenalty } from './processors';
import { decodeStep, GenerationInput, prefill, StepOptions } from './steps';
import { StopStrings } from './stop';

export interface BeamSearchOutput {
  /**
   * B * numReturnSequences rows, each batch row's best first: the generated ids as upstream's
   * generate() returns them after its leading <s> (eos appended to a hypothesis that ended with one,
   * then padTokenId up to the longest row).
   */
  sequences: number[][];
  /** Each row's score: its sum of log-probabilities / generated length ** lengthPenalty. */
  scores: number[];
  /** Each row's length before the padding. */
  lengths: number[];
}

interface Hypothesis {
  score: number;
  tokens: number[];
  /** Closed by an eos (which upstream writes after it) rather than by length or a stop string. */
  eos: boolean;
}

/** The n best finished hypotheses of one batch row (upstream's BeamHypotheses). */
class Hypotheses {
  readonly list: Hypothesis[] = [];
  worst = 1e9;

  constructor(
    private readonly numBeams: number,
    private readonly config: GenerationConfig,
  ) {}

  add(tokens: number[], sumLogprobs: number, generatedLength: number, eos: boolean): void {
    const score = sumLogprobs / generatedLength ** this.config.lengthPenalty;
    if (this.list.length >= this.numBeams && !(score > this.worst)) return;
    this.list.push({ score, tokens, eos });
    if (this.list.length > this.numBeams) {
      // Drop the worst (the earliest added among equal scores, as Python's sort of (score, index)).
      const order = this.list.map((h, i) => [h.score, i] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      this.list.splice(order[0][1], 1);
      this.worst = order[1][0];
    } else {
      this.worst = Math.min(score, this.worst);
    }
  }

  /** Whether no running beam can still enter the list (best: the best running sum of log-probabilities). */
  isDone(best: number, generatedLength: number): boolean {
    if (this.list.length < this.numBeams) return false;
    const { earlyStopping, lengthPenalty, maxNewTokens } = this.config;
    if (earlyStopping === true) return true;
    const length = earlyStopping === 'never' && lengthPenalty > 0 ? maxNewTokens : generatedLength;
    return this.worst >= best / length ** lengthPenalty;
  }
}

/**
 * torch's float32 log_softmax of one row: (x - max) - log(sum(exp(x - max))), each difference rounded
 * to float32 (a Float32Array store rounds; plain loops, no per-element calls: this runs over
 * numBeams x vocabulary values every step).
 */
function logSoftmax(logits: Float32Array): Float32Array {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
  const out = new Float32Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    out[i] = logits[i] - max;
    sum += Math.exp(out[i]);
  }
  const logSum = Math.fround(Math.log(sum));
  for (let i = 0; i < n; i++) out[i] -= logSum;
  return out;
}

interface Candidate {
  score: number;
  token: number;
  /** The beam (0..numBeams-1) it extends. */
  beam: number;
}

/** The n best (score, token, beam) of one batch row's beams, best first (lower index first on ties). */
function topCandidates(rows: Float32Array[], n: number): Candidate[] {
  const best: Candidate[] = [];
  rows.forEach((row, beam) => {
    for (let token = 0; token < row.length; token++) {
      const score = row[token];
      if (best.length === n && !(score > best[n - 1].score)) continue;
      let i = best.length === n ? n - 1 : best.length;
      while (i > 0 && best[i - 1].score < score) i--;
      best.splice(i, 0, { score, token, beam });
      if (best.length > n) best.pop();
    }
  });
  return best;
}

/**
 * Runs beam search to the end. The KV cache lives for the call and is freed when it returns, throws
 * or is aborted through `signal`.
 */
export async function beamSearch(
  model: InternLM2,
  input: GenerationInput,
  config: GenerationConfig,
  options: StepOptions & {
    stop?: StopStrings;
    prefillChunk?: number;
    /** After each step's choice (progress, timing). */ onStep?: (step: number) => void;
  } = {},
): Promise<BeamSearchOutput> {
  const B = input.embeds.shape[0];
  const K = config.numBeams;
  if (config.numReturnSequences > K) throw new Error(`numReturnSequences ${config.numReturnSequences} must be <= numBeams ${K}`);
  if (input.seenIds.length !== B) throw new Error(`seenIds has ${input.seenIds.length} rows, embeds ${B}`);
  const f = Math.fround;
  const eos = config.eosTokenId;
  const width = Math.max(2, 1 + eos.length) * K;
  // Beam b * K + k: its tokens so far, its running score; beams 1.. start at -1e9 so that the first
  // step expands beam 0 only (they are all the same prompt).
  let tokens: number[][] = Array.from({ length: B * K }, () => []);
  let scores = Array.from({ length: B * K }, (_, i) => (i % K === 0 ? 0 : f(-1e9)));
  const hyps = Array.from({ length: B }, () => new Hypotheses(K, config));
  const done = new Array(B).fill(false);
  const cache = model.newCache(B);
  let logits: tf.Tensor | null = null;
  try {
    logits = await prefill(model, cache, input, options);
    cache.shareWithBeams(K);
    for (let step = 0; step < config.maxNewTokens; step++) {
      throwIfAborted(options.signal);
      const data = (await logits!.data()) as Float32Array;
      const V = data.length / logits!.shape[0];
      logits!.dispose();
      logits = null;
      const processed = tokens.map((beamTokens, i) => {
        // After the prefill there is one row of logits per batch row, shared by its beams.
        const r = step === 0 ? Math.floor(i / K) : i;
        const row = logSoftmax(data.subarray(r * V, (r + 1) * V));
        applyRepetitionPenalty(row, [...input.seenIds[Math.floor(i / K)], ...beamTokens], config.repetitionPenalty);
        applyMinNewTokens(row, step, config.minNewTokens, eos);
        const score = scores[i];
        for (let v = 0; v < V; v++) row[v] += score; // float32 sum, as torch's
        return row;
      });
      const nextTokens: number[][] = [];
      const nextScores: number[] = [];
      const nextTokenIds: number[] = [];
      const from: number[] = [];
      for (let b = 0; b < B; b++) {
        if (done[b]) {
          for (let k = 0; k < K; k++) {
            nextTokens.push([...tokens[b * K], config.padTokenId]);
            nextScores.push(0);
            nextTokenIds.push(config.padTokenId);
            from.push(b * K);
          }
          continue;
        }
        const candidates = topCandidates(processed.slice(b * K, (b + 1) * K), width);
        let kept = 0;
        for (const [rank, c] of candidates.entries()) {
          const beamTokens = tokens[b * K + c.beam];
          if (eos.includes(c.token)) {
            if (rank < K) hyps[b].add([...beamTokens], c.score, step + 1, true);
          } else if (options.stop?.reached([...beamTokens, c.token])) {
            // A stop string ends the hypothesis as an eos would (the token is part of its text).
            if (rank < K) hyps[b].add([...beamTokens, c.token], c.score, step + 1, false);
          } else {
            nextTokens.push([...beamTokens, c.token]);
            nextScores.push(c.score);
            nextTokenIds.push(c.token);
            from.push(b * K + c.beam);
            kept++;
          }
          if (kept === K) break;
        }
        if (kept < K)
          throw new Error(`beam search: fewer than ${K} of the ${width} best tokens of batch row ${b} continue a beam (too many eos or stop-string tokens)`);
        done[b] = hyps[b].isDone(candidates[0].score, step + 1);
      }
      tokens = nextTokens;
      scores = nextScores;
      options.onStep?.(step);
      if (done.every(Boolean) || step + 1 >= config.maxNewTokens) break;
      // Let timers and I/O run between steps (on wasm and cpu, data() settles without a macrotask):
      // the search hands out nothing until its end, so an abort can only come from them.
      await yieldToEventLoop(options.signal);
      cache.reorder(from);
      logits = await decodeStep(model, cache, nextTokenIds, options);
    }
  } finally {
    logits?.dispose();
    cache.dispose();
  }
  // Rows still searching keep their current beams as hypotheses.
  for (let b = 0; b < B; b++) {
    if (done[b]) continue;
    for (let k = 0; k < K; k++) hyps[b].add(tokens[b * K + k], scores[b * K + k], tokens[b * K + k].length, false);
  }
  const best = hyps.flatMap((h) => {
    // Stable sort by score, best last; take from the end (upstream's sorted(...).pop()).
    const sorted = [...h.list].sort((x, y) => x.score - y.score);
    return Array.from({ length: config.numReturnSequences }, () => sorted.pop()!);
  });
  const rows = best.map((h) => (h.eos ? [...h.tokens, eos[0]] : h.tokens));
  const longest = Math.max(...rows.map((r) => r.length));
  return {
    sequences: rows.map((r) => [...r, ...new Array(longest - r.length).fill(config.padTokenId)]),
    scores: best.map((h) => f(h.score)),
    lengths: rows.map((r) => r.length),
  };
}

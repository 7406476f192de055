// Logits processing and token choice with HF transformers' semantics (4.37), on one row of logits
// (Float32Array over the vocabulary), in place:
//   repetition_penalty -> min_new_tokens (eos masked) -> [sampling only] temperature -> top_k -> top_p
// then argmax (greedy; first index on ties, as torch.argmax) or a draw from the softmax with a seeded
// generator.

/** Divides positive and multiplies negative logits of every id seen so far (each id once). */
export function applyRepetitionPenalty(logits: Float32Array, seenIds: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  for (const id of new Set(seenIds)) {
    const x = logits[id];
    logits[id] = x < 0 ? x * penalty : x / penalty;
  }
}

/** Masks the eos ids while fewer than `minNewTokens` tokens have been generated. */
export function applyMinNewTokens(logits: Float32Array, generated: number, minNewTokens: number, eosIds: readonly number[]): void {
  if (generated >= minNewTokens) return;
  for (const id of eosIds) logits[id] = -Infinity;
}

export function applyTemperature(logits: Float32Array, temperature: number): void {
  if (temperature === 1) return;
  for (let i = 0; i < logits.length; i++) logits[i] /= temperature;
}

/** Keeps the logits >= the k-th largest (ties at the boundary kept, as HF), the rest -Infinity. */
export function applyTopK(logits: Float32Array, topK: number): void {
  if (topK <= 0 || topK >= logits.length) return;
  const kth = Float32Array.from(logits).sort()[logits.length - topK];
  for (let i = 0; i < logits.length; i++) if (logits[i] < kth) logits[i] = -Infinity;
}

/**
 * Nucleus filter as HF's TopPLogitsWarper: sort ascending, cumulative softmax, drop the tokens whose
 * cumulative probability is <= 1 - top_p, always keeping the most likely one.
 */
export function applyTopP(logits: Float32Array, topP: number): void {
  if (topP >= 1) return;
  const order = Array.from(logits.keys()).sort((a, b) => logits[a] - logits[b] || a - b);
  const probs = softmax(Float32Array.from(order, (i) => logits[i]));
  let cumulative = 0;
  for (let r = 0; r < order.length - 1; r++) {
    cumulative += probs[r];
    if (cumulative <= 1 - topP) logits[order[r]] = -Infinity;
  }
}

export function softmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const x of logits) if (x > max) max = x;
  const out = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    out[i] = logits[i] === -Infinity ? 0 : Math.exp(logits[i] - max);
    sum += out[i];
  }
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** A seeded generator (xoshiro128**): the same seed gives the same sequence on every platform. */
export class SeededRandom {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    // splitmix32 to spread the seed over the state
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** A float in [0, 1) with 32 random bits. */
  next(): number {
    const s = this.s;
    const result = Math.imul(((Math.imul(s[1], 5) << 7) | (Math.imul(s[1], 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ((s[3] << 11) | (s[3] >>> 21)) >>> 0;
    return result / 2 ** 32;
  }
}

/** Draws an index from a probability vector. */
export function sample(probs: Float64Array, rng: SeededRandom): number {
  const u = rng.next();
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] === 0) continue;
    cumulative += probs[i];
    last = i;
    if (u < cumulative) return i;
  }
  return last; // rounding left u above the total
}

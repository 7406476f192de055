// Logits processors and the sampler on hand-made logits (HF semantics), and generation options.
import { GENERATION_DEFAULTS, resolveGenerationConfig } from '../src/generation/generate';
import {
  applyMinNewTokens,
  applyRepetitionPenalty,
  applyTemperature,
  applyTopK,
  applyTopP,
  argmax,
  sample,
  SeededRandom,
  softmax,
} from '../src/generation/processors';

const kept = (logits: Float32Array) => Array.from(logits.keys()).filter((i) => logits[i] !== -Infinity);
const logitsOf = (probs: number[]) => Float32Array.from(probs, Math.log);

describe('generation options', () => {
  const base = { eosTokenId: [7], padTokenId: 2 };

  test('upstream defaults, camelCase and snake_case keys', () => {
    expect(resolveGenerationConfig({}, base)).toEqual({ ...GENERATION_DEFAULTS, ...base });
    const c = resolveGenerationConfig({ max_new_tokens: 5, do_sample: true, top_p: 0.9, repetitionPenalty: 1.2, eos_token_id: 3 }, base);
    expect(c).toMatchObject({ maxNewTokens: 5, doSample: true, topP: 0.9, repetitionPenalty: 1.2, eosTokenId: [3], topK: 50, temperature: 1 });
  });

  test('unknown keys and bad values are errors naming them', () => {
    expect(() => resolveGenerationConfig({ max_tokens: 5 }, base)).toThrow(/unknown generation option 'max_tokens'/);
    expect(() => resolveGenerationConfig({ temperature: 0 }, base)).toThrow('generation option temperature = 0: expected a number > 0');
    expect(() => resolveGenerationConfig({ topP: 1.5 }, base)).toThrow(/topP = 1\.5: expected a number in \(0, 1\]/);
    expect(() => resolveGenerationConfig({ maxNewTokens: 2.5 }, base)).toThrow(/maxNewTokens = 2\.5/);
  });

  test('beam options: upstream names, defaults and limits', () => {
    const c = resolveGenerationConfig({ num_beams: 5, length_penalty: 0.5, early_stopping: 'never', num_return_sequences: 3 }, base);
    expect(c).toMatchObject({ numBeams: 5, lengthPenalty: 0.5, earlyStopping: 'never', numReturnSequences: 3, doSample: false });
    expect(resolveGenerationConfig({}, base)).toMatchObject({ numBeams: 1, lengthPenalty: 1, earlyStopping: false, numReturnSequences: 1, stop: [] });
    expect(() => resolveGenerationConfig({ numBeams: 3, numReturnSequences: 4 }, base)).toThrow(
      /numReturnSequences = 4: expected an integer from 1 to numBeams \(3\)/,
    );
    expect(() => resolveGenerationConfig({ numReturnSequences: 2 }, base)).toThrow(/numReturnSequences = 2/);
    expect(() => resolveGenerationConfig({ numBeams: 0 }, base)).toThrow(/numBeams = 0: expected an integer from 1 to 64/);
    expect(() => resolveGenerationConfig({ numBeams: 2, doSample: true }, base)).toThrow(/doSample = true: expected false with numBeams > 1/);
    expect(() => resolveGenerationConfig({ earlyStopping: 'sometimes' }, base)).toThrow(/earlyStopping = "sometimes": expected true, false or "never"/);
    expect(() => resolveGenerationConfig({ lengthPenalty: Infinity }, base)).toThrow(/lengthPenalty = null: expected a finite number/);
  });

  test('stop: a string or a bounded list of non-empty strings', () => {
    expect(resolveGenerationConfig({ stop: 'END' }, base).stop).toEqual(['END']);
    expect(resolveGenerationConfig({ stop: ['a', 'bc'] }, base).stop).toEqual(['a', 'bc']);
    expect(() => resolveGenerationConfig({ stop: '' }, base)).toThrow(/generation option stop = "": expected a non-empty string or a list of at most 16/);
    expect(() => resolveGenerationConfig({ stop: ['x', 3] }, base)).toThrow(/stop = \["x",3\]/);
    expect(() => resolveGenerationConfig({ stop: new Array(17).fill('x') }, base)).toThrow(/at most 16/);
    expect(() => resolveGenerationConfig({ stop: 'x'.repeat(257) }, base)).toThrow(/each 1 to 256 characters/);
  });
});

describe('logits processors', () => {
  test('repetition penalty divides positive and multiplies negative logits of each seen id once', () => {
    const l = new Float32Array([2, -2, 4, 1]);
    applyRepetitionPenalty(l, [0, 1, 1, 0], 2);
    expect(Array.from(l)).toEqual([1, -4, 4, 1]);
  });

  test('min_new_tokens masks every eos id until enough tokens exist', () => {
    const l = new Float32Array([1, 2, 3]);
    applyMinNewTokens(l, 0, 2, [1, 2]);
    expect(Array.from(l)).toEqual([1, -Infinity, -Infinity]);
    const m = new Float32Array([1, 2, 3]);
    applyMinNewTokens(m, 2, 2, [1, 2]);
    expect(Array.from(m)).toEqual([1, 2, 3]);
  });

  test('top_k keeps the k largest, and ties at the boundary', () => {
    const l = new Float32Array([0.1, 3, 2, 2, -1, 5]);
    applyTopK(l, 3);
    expect(kept(l)).toEqual([1, 2, 3, 5]);
    const m = new Float32Array([0.1, 3, 2, 1, -1, 5]);
    applyTopK(m, 3);
    expect(kept(m)).toEqual([1, 2, 5]);
  });

  test('top_p keeps the smallest head of the distribution reaching p (at least one token)', () => {
    const probs = [0.5, 0.3, 0.15, 0.05];
    const cases: [number, number[]][] = [
      [0.75, [0, 1]],
      [0.9, [0, 1, 2]],
      [0.4, [0]],
      [0.01, [0]],
      [1.0, [0, 1, 2, 3]],
    ];
    for (const [p, expected] of cases) {
      const l = logitsOf(probs);
      applyTopP(l, p);
      expect({ p, kept: kept(l) }).toEqual({ p, kept: expected });
    }
  });

  test('top_p boundary: a token whose cumulative probability (from the least likely up) equals 1 - top_p is dropped, as transformers does', () => {
    // Four equal logits: probabilities exactly 0.25, cumulative 0.25, 0.5, 0.75, 1 (exact in binary).
    // transformers' TopPLogitsWarper removes cumulative <= 1 - top_p: 2 tokens removed for top_p 0.5,
    // 1 for top_p 0.75. Removing only cumulative < 1 - top_p would keep one more in each case.
    for (const [p, keptCount] of [
      [0.5, 2],
      [0.75, 3],
    ] as const) {
      const l = new Float32Array(4);
      applyTopP(l, p);
      expect({ p, kept: kept(l).length }).toEqual({ p, kept: keptCount });
    }
  });

  test('temperature scales, argmax takes the first maximum', () => {
    const l = new Float32Array([1, 4, 4, 2]);
    applyTemperature(l, 2);
    expect(Array.from(l)).toEqual([0.5, 2, 2, 1]);
    expect(argmax(l)).toBe(1);
  });
});

describe('seeded sampling', () => {
  test('the same seed gives the same draws; another seed, others', () => {
    const draws = (seed: number) => {
      const rng = new SeededRandom(seed);
      return Array.from({ length: 20 }, () => rng.next());
    };
    expect(draws(42)).toEqual(draws(42));
    expect(draws(42)).not.toEqual(draws(43));
    expect(draws(7).every((u) => u >= 0 && u < 1)).toBe(true);
  });

  test('10k draws follow the distribution (chi-square, p > 0.001)', () => {
    const probs = [0.05, 0.1, 0.15, 0.3, 0.4];
    const p = softmax(logitsOf(probs));
    const rng = new SeededRandom(1234);
    const n = 10000;
    const counts = new Array(probs.length).fill(0);
    for (let i = 0; i < n; i++) counts[sample(p, rng)]++;
    const chi2 = counts.reduce((acc, c, i) => acc + (c - n * probs[i]) ** 2 / (n * probs[i]), 0);
    // Critical value of chi-square with 4 degrees of freedom at p = 0.001.
    expect(chi2).toBeLessThan(18.467);
  });

  test('filtered tokens are never drawn', () => {
    const l = logitsOf([0.4, 0.3, 0.2, 0.1]);
    applyTopK(l, 2);
    const p = softmax(l);
    const rng = new SeededRandom(5);
    const seen = new Set(Array.from({ length: 2000 }, () => sample(p, rng)));
    expect([...seen].sort()).toEqual([0, 1]);
  });
});

// InternLM2 against the upstream model (per layer, logits, greedy tokens, dynamic NTK), and the KV
// cache and batching properties, on wasm and cpu.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { initBackend } from '../src/backend';
import { loadConfig, ModelConfig } from '../src/config';
import { generate, resolveGenerationConfig } from '../src/generation/generate';
import { SafetensorsFile } from '../src/io/safetensors';
import { Weights } from '../src/io/weights';
import { InternLM2 } from '../src/llm/internlm2';
import { appendBlock, Block, disposeBlocks } from '../src/nn/attention';
import { kernelsFor } from '../src/model/kernels';
import { convertFixture, loadReference, PARITY_BACKENDS, PARITY_TOLERANCE, readAndDispose, ReferenceDoc, relativeMaxError, tapRecorder } from './helpers';

const greedy = (maxNewTokens: number) => resolveGenerationConfig({ maxNewTokens }, { eosTokenId: [], padTokenId: 2 });

describe.each(PARITY_BACKENDS)('on %s', (backend) => {
  let dir: string;
  let config: ModelConfig;
  let weights: Weights;
  let llm: InternLM2;
  let ref: SafetensorsFile;
  let doc: ReferenceDoc;

  beforeAll(async () => {
    await initBackend({ backend, log: null });
    dir = convertFixture('tiny-internvl2');
    config = loadConfig(dir);
    weights = Weights.load(dir);
    llm = new InternLM2(weights, config.llm, kernelsFor(backend));
    ({ doc, tensors: ref } = loadReference('tiny-internvl2'));
  });
  afterAll(() => {
    weights.dispose();
    ref.close();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  const refTensor = (n: string) => tf.tensor(ref.readFloat32(n), ref.info(n).shape);

  test('the state after every layer, the final norm and the prompt logits match the oracle', async () => {
    const before = tf.memory().numTensors;
    const embeds = refTensor('llm.inputs_embeds') as tf.Tensor3D;
    const recorder = tapRecorder();
    const cache = llm.newCache(1);
    const logits = llm.forward(embeds, cache, { tap: recorder.tap });
    const captured = await recorder.values();
    captured.set('llm.logits', await readAndDispose(logits));
    cache.dispose();
    embeds.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const names = [...Array.from({ length: config.llm.num_hidden_layers }, (_, i) => `llm.layers.${i}.out`), 'llm.norm', 'llm.logits'];
    for (const n of names) expect({ n, ok: relativeMaxError(captured.get(n)!, ref.readFloat32(n)) <= PARITY_TOLERANCE }).toEqual({ n, ok: true });
  });

  test("the prompt fed in chunks of 3 positions (a live video's frames) or 1 (decode steps) gives the oracle's logits; the cache keeps few blocks", async () => {
    const before = tf.memory().numTensors;
    const embeds = refTensor('llm.inputs_embeds') as tf.Tensor3D;
    const want = ref.readFloat32('llm.logits');
    const [, T] = embeds.shape;
    const V = want.length / T;
    for (const chunk of [3, 1]) {
      const cache = llm.newCache(1, 4);
      let last: Float32Array = new Float32Array();
      for (let at = 0; at < T; at += chunk) {
        const part = embeds.slice([0, at, 0], [1, Math.min(chunk, T - at), -1]);
        const logits = llm.forward(part, cache);
        last = (await readAndDispose(logits)).slice(-V);
        part.dispose();
      }
      expect(relativeMaxError(last, want.slice(-V))).toBeLessThanOrEqual(PARITY_TOLERANCE);
      // Merged like a binary counter: about log2 of the appends, not one block per chunk.
      expect(cache.blockCount()).toBeLessThanOrEqual(Math.ceil(Math.log2(T / Math.min(chunk, 4))) + 1);
      cache.dispose();
    }
    embeds.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  test('appendBlock: blocks merge like a binary counter up to maxLength, in order, disposing what they replace', async () => {
    const before = tf.memory().numTensors;
    const blocks: Block[] = [];
    for (let i = 0; i < 11; i++) appendBlock(blocks, { keys: tf.keep(tf.fill([1, 1, 2, 1], i)), values: tf.keep(tf.fill([1, 1, 2, 1], -i)) }, 2, 8);
    expect(blocks.map((b) => b.keys.shape[2])).toEqual([8, 8, 4, 2]);
    const keys = tf.concat(
      blocks.map((b) => b.keys),
      2,
    );
    const values = tf.concat(
      blocks.map((b) => b.values),
      2,
    );
    expect(Array.from(await keys.data())).toEqual(Array.from({ length: 11 }, (_, i) => [i, i]).flat());
    expect(Array.from(await values.data())).toEqual(Array.from({ length: 11 }, (_, i) => [-i, -i]).flat());
    tf.dispose([keys, values]);
    disposeBlocks(blocks);
    expect(tf.memory().numTensors).toBe(before);
  });

  test("16 greedy tokens with the KV cache are the oracle's", async () => {
    const embeds = refTensor('llm.inputs_embeds') as tf.Tensor3D;
    const [tokens] = await generate(llm, { embeds, seenIds: [[1]] }, greedy(16));
    embeds.dispose();
    expect(tokens).toEqual(doc.greedy16);
  });

  test("past max_position_embeddings the rope base follows upstream's dynamic NTK rule", async () => {
    const ntk = doc.ntk!;
    expect(ntk.input_ids.length).toBeGreaterThan(ntk.max_position_embeddings);
    // A fresh model: the NTK state is per model, as upstream's rotary modules.
    const small = new InternLM2(weights, { ...config.llm, max_position_embeddings: ntk.max_position_embeddings }, kernelsFor(backend));
    const cache = small.newCache(1);
    const embeds = small.embedTokens([ntk.input_ids]);
    const prompt = small.forward(embeds, cache);
    expect(relativeMaxError(await prompt.data(), ref.readFloat32('ntk.prompt_logits'))).toBeLessThanOrEqual(PARITY_TOLERANCE);
    const V = config.llm.vocab_size;
    const stepRef = ref.readFloat32('ntk.step_logits');
    const tokens = [ntk.tokens[0]];
    tf.dispose([embeds, prompt]);
    for (let s = 0; s < ntk.tokens.length - 1; s++) {
      const next = small.embedTokens([[tokens[s]]]);
      const logits = small.forward(next, cache);
      const row = (await logits.data()) as Float32Array;
      expect(relativeMaxError(row, stepRef.subarray(s * V, (s + 1) * V))).toBeLessThanOrEqual(PARITY_TOLERANCE);
      tokens.push(row.indexOf(Math.max(...row)));
      tf.dispose([next, logits]);
    }
    cache.dispose();
    expect(tokens).toEqual(ntk.tokens);
    // Without the NTK growth the logits would differ: the rule is exercised, not bypassed.
    const plain = new InternLM2(weights, { ...config.llm, rope_scaling: null, max_position_embeddings: ntk.max_position_embeddings }, kernelsFor(backend));
    const c2 = plain.newCache(1);
    const e2 = plain.embedTokens([ntk.input_ids]);
    const l2 = plain.forward(e2, c2);
    expect(relativeMaxError(await l2.data(), ref.readFloat32('ntk.prompt_logits'))).toBeGreaterThan(1e-3);
    tf.dispose([e2, l2]);
    c2.dispose();
  });

  // tailLimit 7: the cache's tail block is folded into the main block five times within the 40 steps.
  test.each([256, 7])('decoding with the KV cache (tail limit %i) gives the logits of recomputing the whole sequence, over 40 steps', async (tailLimit) => {
    const ids = doc.chat!.find((c) => c.name === 'text-only')!.input_ids.slice(0, 24);
    const before = tf.memory().numTensors;
    const cache = llm.newCache(1, tailLimit);
    const embeds = llm.embedTokens([ids]);
    let logits = llm.forward(embeds, cache, { lastOnly: true });
    embeds.dispose();
    const seq = [...ids];
    let worst = 0;
    for (let s = 0; s < 40; s++) {
      const row = await readAndDispose(logits);
      const full = llm.newCache(1);
      const allEmbeds = llm.embedTokens([seq]);
      const fullLogits = llm.forward(allEmbeds, full, { lastOnly: true });
      worst = Math.max(worst, relativeMaxError(row, await fullLogits.data()));
      tf.dispose([allEmbeds, fullLogits]);
      full.dispose();
      // Follow a varied path: the second-best token, so the sequence does not settle into a loop.
      const sorted = Array.from(row.keys()).sort((a, b) => row[b] - row[a]);
      seq.push(sorted[s % 2]);
      const next = llm.embedTokens([[seq[seq.length - 1]]]);
      logits = llm.forward(next, cache, { lastOnly: true });
      next.dispose();
    }
    logits.dispose();
    cache.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(worst).toBeLessThanOrEqual(1e-5);
  });

  test('a left-padded batch of two prompts gives each the greedy tokens it gets alone', async () => {
    const a = doc.chat!.find((c) => c.name === 'text-only')!.input_ids;
    const b = a.slice(0, 30);
    const alone = async (ids: number[]) => {
      const e = llm.embedTokens([ids]);
      const [t] = await generate(llm, { embeds: e, seenIds: [[1]] }, greedy(12));
      e.dispose();
      return t;
    };
    const pad = a.length - b.length;
    const padded = [...new Array(pad).fill(2), ...b];
    const embeds = llm.embedTokens([a, padded]);
    const mask = [a.map(() => 1), padded.map((_, i) => (i < pad ? 0 : 1))];
    const batch = await generate(llm, { embeds, attentionMask: mask, seenIds: [[1], [1]] }, greedy(12));
    embeds.dispose();
    expect(batch[0]).toEqual(await alone(a));
    expect(batch[1]).toEqual(await alone(b));
  });

  test('sampling with a fixed seed is reproducible', async () => {
    const embeds = llm.embedTokens([doc.chat!.find((c) => c.name === 'text-only')!.input_ids.slice(0, 16)]);
    const sampled = (seed: number) =>
      generate(
        llm,
        { embeds, seenIds: [[1]] },
        resolveGenerationConfig({ maxNewTokens: 12, doSample: true, temperature: 1.5, topK: 0, seed }, { eosTokenId: [], padTokenId: 2 }),
      );
    const a = await sampled(11);
    expect(await sampled(11)).toEqual(a);
    expect(await sampled(12)).not.toEqual(a);
    embeds.dispose();
  });

  test('20 generations in a row, and an aborted one, leave no tensors behind', async () => {
    const embeds = llm.embedTokens([doc.chat!.find((c) => c.name === 'text-only')!.input_ids.slice(0, 16)]);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 20; i++) await generate(llm, { embeds, seenIds: [[1]] }, greedy(3));
    expect(tf.memory().numTensors).toBe(before);
    const controller = new AbortController();
    const sampled = resolveGenerationConfig({ maxNewTokens: 50, doSample: true, seed: 3 }, { eosTokenId: [], padTokenId: 2 });
    let steps = 0;
    await expect(
      (async () => {
        const { generateSteps } = await import('../src/generation/generate');
        for await (const _ of generateSteps(llm, { embeds, seenIds: [[1]] }, sampled, { signal: controller.signal })) {
          if (++steps === 2) controller.abort();
        }
      })(),
    ).rejects.toThrow(/aborted/i);
    expect(steps).toBe(2);
    expect(tf.memory().numTensors).toBe(before);
    embeds.dispose();
  });
});

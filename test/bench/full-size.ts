// One full-size chat in a fresh process (so its peak RSS is its own), for `npm run bench -- --suites
// full-size` (run.ts): load a converted model with a weight mode, then one chat on seeded pixels, timed
// by stage as chat runs it: vision (pixels -> the LLM's input embeddings), prefill (the first token),
// decode (the other new tokens). One JSON line on stdout; progress on stderr. With --write-logits it stops
// after the prefill and writes the logits of the prompt's last position (V float32 values, little-endian)
// to FILE, for the suite's errors against float32.
//
//   npx tsx test/bench/full-size.ts --model DIR --weights bfloat16 [--matmul fast] --chat image|video
//        [--tiles 13] [--frames 64] [--new-tokens 32] [--write-inputs FILE [--inputs-only]] [--write-logits FILE]
import * as fs from 'fs';
import * as tf from '@tensorflow/tfjs';
import { parseArgs } from 'node:util';
import { initBackend } from '../../src/backend';
import { promptTokenIds } from '../../src/chat/chat';
import { runYielding } from '../../src/event_loop';
import { writeSafetensors } from '../../src/io/safetensors';
import { WeightPrecision } from '../../src/io/weights';
import { generateSteps } from '../../src/generation/generate';
import { prefill } from '../../src/generation/steps';
import { PVCModel } from '../../src/pvc_model';

const { values: o } = parseArgs({
  options: {
    model: { type: 'string' },
    weights: { type: 'string', default: 'float32' },
    matmul: { type: 'string', default: 'exact' },
    chat: { type: 'string', default: 'image' },
    tiles: { type: 'string', default: '13' },
    frames: { type: 'string', default: '64' },
    'new-tokens': { type: 'string', default: '32' },
    'write-inputs': { type: 'string' },
    'inputs-only': { type: 'boolean', default: false },
    'write-logits': { type: 'string' },
  },
});

const log = (line: string) => process.stderr.write(`full-size: ${line}\n`);
const now = () => performance.now();
const faults = () => process.resourceUsage().minorPageFault + process.resourceUsage().majorPageFault;

/** Pixels in [-1.8, 2.2] (about what normalised photos span), seeded: the same on the PyTorch side. */
function seededPixels(n: number, seed: number): Float32Array {
  let x = seed | 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = ((x >>> 0) / 4294967296) * 4 - 1.8;
  }
  return out;
}

/** Read bandwidth, GB/s: the best of 5 sums over a 1 GiB float32 tensor (bound by memory, not compute). */
function readBandwidth(): number {
  const big = tf.fill([2 ** 28], 1.5);
  let best = 0;
  for (let r = 0; r < 6; r++) {
    const t = now();
    tf.tidy(() => tf.sum(big).dataSync());
    if (r > 0) best = Math.max(best, 2 ** 30 / ((now() - t) / 1000) / 1e9);
  }
  big.dispose();
  return best;
}

async function main() {
  if (!o.model) throw new Error('--model DIR is required');
  const weights = o.weights as WeightPrecision;
  const matmul = o.matmul as 'exact' | 'fast';
  const newTokens = Number(o['new-tokens']);
  const rssIdle = process.memoryUsage().rss;
  // Measured before the weights load, so its 1 GiB buffer does not raise the peak RSS of the run.
  await initBackend({ backend: 'tensorflow', log: null });
  const bandwidthGBs = readBandwidth();
  const t0 = now();
  let lastPct = -1;
  const model = await PVCModel.load(o.model, {
    backend: 'tensorflow',
    weights,
    matmul,
    onProgress: (done, total) => {
      const pct = Math.floor((100 * done) / total);
      if (pct % 10 === 0 && pct !== lastPct) log(`load ${pct}% (${(done / 2 ** 30).toFixed(1)} of ${(total / 2 ** 30).toFixed(1)} GiB read)`);
      lastPct = pct;
    },
  });
  const loadMs = now() - t0;
  const rssAfterLoad = process.memoryUsage().rss;
  const bytesRead = Object.values(
    JSON.parse(fs.readFileSync(`${o.model}/manifest.json`, 'utf8')).tensors as Record<string, { shape: number[]; dtype: string }>,
  ).reduce((a, t) => a + t.shape.reduce((x, d) => x * d, 1) * (t.dtype === 'F32' ? 4 : 2), 0);
  // What one decode step reads: every LLM matrix but the embedding (one row of it), as held.
  const decodeBytes = model.weights.byteLengthOf((name) => name.startsWith('llm.') && name !== 'llm.embed.weight');
  const S = model.config.vision.image_size;
  const video = o.chat === 'video';
  const tiles = video ? Number(o.frames) : Number(o.tiles);
  const question = video
    ? Array.from({ length: tiles }, (_, k) => `Frame${k + 1}: <image>\n`).join('') + 'What happens in the video?'
    : '<image>\nDescribe the image in detail.';
  const pixelValues = tf.tensor4d(seededPixels(tiles * 3 * S * S, 7), [tiles, 3, S, S]);
  const prompt = video ? { numPatchesList: Array(tiles).fill(1), dataFlag: 3 as const } : { numPatchesList: [tiles] };
  const generation = model.generationConfig({ max_new_tokens: newTokens, min_new_tokens: newTokens });
  const turn = model.prepareChat(pixelValues, question, { generation, ...prompt });
  if (o['write-inputs']) {
    writeSafetensors(o['write-inputs'], [
      { name: 'pixel_values', dtype: 'F32', shape: [tiles, 3, S, S], data: (await pixelValues.data()) as Float32Array },
      { name: 'input_ids', dtype: 'I32', shape: [1, turn.inputIds.length], data: new Uint8Array(Int32Array.from(turn.inputIds).buffer) },
    ]);
    if (o['inputs-only']) return;
  }
  log(`${o.chat} chat: ${tiles} ${video ? 'frames' : 'tiles'}, ${turn.inputIds.length} prompt tokens, ${newTokens} new (weights ${weights}, matmul ${matmul})`);

  const tVision = now();
  const { embeds, attentionMask } = await runYielding(model.inputSteps([turn.inputIds], pixelValues, turn.samples, promptTokenIds(model.tokenizer)));
  const visionMs = now() - tVision;
  const peakAfterVisionMB = process.resourceUsage().maxRSS / 1024;
  log(`vision ${(visionMs / 1000).toFixed(1)} s`);
  if (o['write-logits']) {
    const cache = model.llm.newCache(1);
    const tPrefill = now();
    const logits = await prefill(
      model.llm,
      cache,
      { embeds, attentionMask, seenIds: [[model.tokenizer.bosTokenId]] },
      { prefillChunk: model.limits.prefillChunk },
    );
    const prefillMs = now() - tPrefill;
    const values = (await logits.data()) as Float32Array;
    tf.dispose([logits, embeds, pixelValues]);
    cache.dispose();
    // Written whole to a temporary name, then renamed: never a half-written file under FILE.
    fs.writeFileSync(`${o['write-logits']}.partial`, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    fs.renameSync(`${o['write-logits']}.partial`, o['write-logits']);
    log(`prefill ${(prefillMs / 1000).toFixed(1)} s; the prompt's logits written to ${o['write-logits']}`);
    const row = { backend: 'tensorflow', weights, matmul, oneDNN: process.env.TF_ENABLE_ONEDNN_OPTS ?? '0', chat: o.chat, tiles };
    const measured = { promptTokens: turn.inputIds.length, loadMs, visionMs, prefillMs, peakRssMB: process.resourceUsage().maxRSS / 1024 };
    process.stdout.write(JSON.stringify({ ...row, ...measured, logits: o['write-logits'] }) + '\n');
    model.dispose();
    return;
  }
  const steps: number[] = [];
  const stepFaults: number[] = [];
  let peakAfterPrefillMB = 0;
  const ids: number[] = [];
  const tPrefill = now();
  let f = faults();
  for await (const step of generateSteps(model.llm, { embeds, attentionMask, seenIds: [[model.tokenizer.bosTokenId]] }, turn.generation, {
    prefillChunk: model.limits.prefillChunk,
    decode: (x: readonly number[]) => model.tokenizer.decode(x),
  })) {
    steps.push(now());
    stepFaults.push(faults() - f);
    f = faults();
    ids.push(step.tokens[0]);
    if (steps.length === 1) {
      log(`prefill ${((steps[0] - tPrefill) / 1000).toFixed(1)} s`);
      peakAfterPrefillMB = process.resourceUsage().maxRSS / 1024;
    }
  }
  embeds.dispose();
  pixelValues.dispose();
  const prefillMs = steps[0] - tPrefill;
  const decodeMs = steps[steps.length - 1] - steps[0];
  const decodeTokensPerSecond = (steps.length - 1) / (decodeMs / 1000);
  const decodeFaultsPerStep = stepFaults.slice(1).reduce((a, b) => a + b, 0) / Math.max(1, stepFaults.length - 1);
  log(`decode ${decodeTokensPerSecond.toFixed(2)} tokens/s (${decodeFaultsPerStep.toFixed(0)} page faults per step)`);
  const result = {
    backend: 'tensorflow',
    weights,
    matmul,
    oneDNN: process.env.TF_ENABLE_ONEDNN_OPTS ?? '0',
    chat: o.chat,
    tiles,
    promptTokens: turn.inputIds.length,
    newTokens: ids.length,
    loadMs,
    loadMBs: bytesRead / 1e6 / (loadMs / 1000),
    heldGB: model.weights.byteLength / 1e9,
    visionMs,
    prefillMs,
    decodeTokensPerSecond,
    decodeFaultsPerStep,
    decodeBytesGB: decodeBytes / 1e9,
    bandwidthGBs,
    decodeBoundTokensPerSecond: bandwidthGBs / (decodeBytes / 1e9),
    rssIdleMB: rssIdle / 2 ** 20,
    rssAfterLoadMB: rssAfterLoad / 2 ** 20,
    peakAfterVisionMB,
    peakAfterPrefillMB,
    peakRssMB: process.resourceUsage().maxRSS / 1024,
    ids,
  };
  model.dispose();
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});

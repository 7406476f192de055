// One benchmark worker: a converted model on one tfjs backend, timings as JSON on stdout.
//   tsx test/bench/tfjs-bench.ts --model DIR --backend wasm --inputs FILE [--measures vision,llm,beams] [--taps none|idle|all]
import * as os from 'os';
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { BackendName, tensorflowUsesOneDNN } from '../../src/backend';
import { TapRecorder } from '../../src/inspect/taps';
import { PVCModel } from '../../src/pvc_model';
import { beamSearch } from '../../src/generation/beam';
import { generateSteps, resolveGenerationConfig } from '../../src/generation/generate';
import { SafetensorsFile } from '../../src/io/safetensors';
import { Tap } from '../../src/nn/layers';

const arg = (name: string, fallback?: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};

/** After a warm-up call, the fastest of `runs` calls (torch_bench.py takes the same statistic). */
async function bestMs(f: () => Promise<void> | void, runs: number): Promise<number> {
  await f();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await f();
    times.push(performance.now() - t);
  }
  return Math.min(...times);
}

async function main() {
  const dir = arg('--model')!;
  const measures = (arg('--measures', 'vision,llm') ?? '').split(',');
  const runs = Number(arg('--runs', '3'));
  const t0 = performance.now();
  const model = await PVCModel.load(dir, { backend: arg('--backend', 'wasm') as BackendName });
  const loadMs = performance.now() - t0;
  const weightBytes = model.weights.byteLength;
  const inputs = SafetensorsFile.open(arg('--inputs')!);
  const result: Record<string, unknown> = { backend: tf.getBackend(), loadMs, loadMBps: weightBytes / 2 ** 20 / (loadMs / 1000) };
  if (tf.getBackend() === 'tensorflow') result.engine = tensorflowUsesOneDNN() ? 'oneDNN' : 'Eigen';
  // Threads doing the math: libtensorflow's intra-op pool defaults to one per core (tfjs-node does not
  // change it); tfjs turns wasm threads off under Node; the cpu backend is plain JavaScript.
  result.threads = tf.getBackend() === 'tensorflow' ? os.cpus().length : tf.getBackend() === 'wasm' ? getThreadsCount() : 1;
  // Taps: 'none' (the normal path), 'idle' (a tap callback that records nothing), 'all' (every tap).
  const tapMode = arg('--taps', 'none');
  let tap: Tap | undefined;
  if (tapMode !== 'none') {
    const recorder = new TapRecorder(tapMode === 'all' ? new Set(model.tapNames()) : new Set<string>());
    tap = (n, v) => {
      recorder.tap(n, v);
      recorder.prompt.forEach((l) => tf.dispose(l));
      recorder.prompt.clear();
    };
  }
  if (measures.includes('vision')) {
    const pixels = tf.tensor4d(inputs.readFloat32('pixel_values'), inputs.info('pixel_values').shape as [number, number, number, number]);
    result.visionMsPerTile =
      (await bestMs(() => {
        const out = model.extractFeature(pixels, tap);
        out.dataSync();
        out.dispose();
      }, runs)) / pixels.shape[0];
    pixels.dispose();
  }
  if (measures.includes('llm')) {
    const embeds = tf.tensor3d(inputs.readFloat32('embeds'), inputs.info('embeds').shape as [number, number, number]);
    result.prefillTokens = embeds.shape[1];
    result.prefillMs = await bestMs(() => {
      const cache = model.llm.newCache(1);
      const logits = model.llm.forward(embeds, cache, { lastOnly: true, tap });
      logits.dataSync();
      logits.dispose();
      cache.dispose();
    }, runs);
    // Decode: after the prompt, blocks of `steps` tokens one at a time with the KV cache; the fastest block's rate.
    const steps = Number(arg('--decode-steps', '16'));
    const cache = model.llm.newCache(1);
    model.llm.forward(embeds, cache, { lastOnly: true }).dispose();
    const rates: number[] = [];
    for (let run = 0; run < runs; run++) {
      const t = performance.now();
      for (let s = 0; s < steps; s++) {
        const next = model.llm.embedTokens([[(s * 7919) % model.config.llm.vocab_size]]);
        const logits = model.llm.forward(next, cache, { lastOnly: true, tap });
        await logits.data();
        tf.dispose([next, logits]);
      }
      rates.push(steps / ((performance.now() - t) / 1000));
    }
    result.decodeTokensPerSecond = Math.max(...rates);
    cache.dispose();
    embeds.dispose();
  }
  if (measures.includes('beams')) {
    // Time per generated token after the 512-token prompt, greedy and 5-beam search, bookkeeping
    // included: the time from the first step's choice to the last one's, over the steps between. The
    // fastest of `runs` runs. min_new_tokens = max_new_tokens keeps every row running to the end;
    // torch_bench.py measures the same way.
    const embeds = tf.tensor3d(inputs.readFloat32('embeds'), inputs.info('embeds').shape as [number, number, number]);
    const steps = Number(arg('--beam-steps', '16'));
    const config = (numBeams: number) => resolveGenerationConfig({ maxNewTokens: steps, minNewTokens: steps, numBeams }, { eosTokenId: [2], padTokenId: 2 });
    const perStep = async (numBeams: number) => {
      const times: number[] = [];
      for (let run = 0; run <= runs; run++) {
        const at: number[] = [];
        if (numBeams === 1) {
          for await (const _ of generateSteps(model.llm, { embeds, seenIds: [[1]] }, config(1))) at.push(performance.now());
        } else {
          await beamSearch(model.llm, { embeds, seenIds: [[1]] }, config(numBeams), { onStep: () => at.push(performance.now()) });
        }
        if (run > 0) times.push((at[at.length - 1] - at[0]) / (at.length - 1)); // run 0 is the warm-up
      }
      return Math.min(...times);
    };
    result.greedyMsPerStep = await perStep(1);
    result.beam5MsPerStep = await perStep(5);
    embeds.dispose();
  }
  inputs.close();
  model.dispose();
  result.peakRssMB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`${e instanceof Error ? e.stack : e}\n`);
  process.exit(1);
});

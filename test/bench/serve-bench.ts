// `npm run bench:serve`: a load run of `pvc serve` on 127.0.0.1 (nothing leaves this machine): several
// concurrent clients (the official openai package) each sending a series of requests, a mix of text,
// an image and streamed answers, against the tiny model. Every request must be answered (200) or
// refused because the queue is full (429); anything else, or a tensor left behind, fails the run.
// Prints and writes bench-results.serve.json: throughput and p50 / p99 latency. Bounded in requests
// (clients x requests) and in time (--time-limit: clients stop sending after it).
//
//   npx tsx test/bench/serve-bench.ts [--clients 8] [--requests 12] [--max-queue 4] [--max-tokens 16] [--time-limit 120]
//
// With --abuse: hostile requests against a `pvc serve` process instead (serve-abuse.ts). With --batching:
// continuous batching against one request at a time, 8 and 32 clients (serve-batching.ts).
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import OpenAI from 'openai';
import * as os from 'os';
import * as path from 'path';
import { PVCModel } from '../../src/pvc_model';
import { ChatServer } from '../../src/server/server';
import { convertFixture } from '../helpers';
import { abuseBench } from './serve-abuse';
import { batchingBench } from './serve-batching';

const ROOT = path.join(__dirname, '..', '..');
const IMAGE = path.join(ROOT, 'examples', 'media', 'image1.jpg'); // the repository's own 1000x747 example

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v < 0) throw new Error(`--${name} expects a non-negative integer`);
  return v;
}

const percentile = (sorted: number[], p: number) => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]);

interface Outcome {
  kind: string;
  status: number | string;
  ms: number;
  tokens: number;
}

async function main(): Promise<number> {
  if (process.argv.includes('--abuse')) return abuseBench();
  if (process.argv.includes('--batching')) return batchingBench();
  const clients = option('clients', 8);
  const perClient = option('requests', 12);
  const maxQueue = option('max-queue', 4);
  const maxTokens = option('max-tokens', 16);
  const timeLimit = option('time-limit', 120);

  const dir = convertFixture('tiny-internvl2');
  const model = await PVCModel.load(dir);
  const server = await ChatServer.start({ model, modelName: 'tiny', host: '127.0.0.1', port: 0, limits: { maxQueue } });
  const image = `data:image/jpeg;base64,${fs.readFileSync(IMAGE).toString('base64')}`;
  await model.chat(null, 'Warm up.', { maxNewTokens: 2 });
  const baseline = tf.memory().numTensors;

  // Request k of a client: text, an image (max_num 4), text streamed, an image streamed.
  const kinds = ['text', 'image', 'text-stream', 'image-stream'];
  const request = async (client: OpenAI, k: number): Promise<Outcome> => {
    const kind = kinds[k % kinds.length];
    const content: OpenAI.Chat.Completions.ChatCompletionContentPart[] = [{ type: 'text', text: `Question ${k}: what do you see?` }];
    if (kind.startsWith('image'))
      content.unshift({ type: 'image_url', image_url: { url: image, max_num: 4 } } as unknown as OpenAI.Chat.Completions.ChatCompletionContentPart);
    const params = { model: 'tiny', max_tokens: maxTokens, messages: [{ role: 'user' as const, content }] };
    const t = performance.now();
    try {
      let tokens = 0;
      if (kind.endsWith('stream')) {
        const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
        for await (const chunk of stream) tokens = chunk.usage?.completion_tokens ?? tokens;
      } else {
        tokens = (await client.chat.completions.create(params)).usage?.completion_tokens ?? 0;
      }
      return { kind, status: 200, ms: performance.now() - t, tokens };
    } catch (e) {
      const status = e instanceof OpenAI.APIError && e.status !== undefined ? e.status : `${(e as Error).name}: ${(e as Error).message}`;
      return { kind, status, ms: performance.now() - t, tokens: 0 };
    }
  };

  const started = performance.now();
  const deadline = started + timeLimit * 1000;
  const outcomes: Outcome[] = [];
  let notSent = 0;
  // A monitor asks /health every 100 ms while the clients run; the answers given while a generation was
  // running are the "/health during a long generation" latency.
  const health: number[] = [];
  let loadDone = false;
  const monitor = (async () => {
    while (!loadDone) {
      const t = performance.now();
      const body = (await (await fetch(`${server.url}/health`)).json()) as { queue: { running: number } };
      if (body.queue.running > 0) health.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0, timeout: timeLimit * 1000 });
      for (let k = 0; k < perClient; k++) {
        if (performance.now() > deadline) {
          notSent += perClient - k;
          return;
        }
        const outcome = await request(client, c + k);
        outcomes.push(outcome);
        // A refused client waits a little before its next request, as a client honouring 429 would.
        if (outcome.status === 429) await new Promise((r) => setTimeout(r, 50));
      }
    }),
  );
  const wall = (performance.now() - started) / 1000;
  loadDone = true;
  await monitor;
  const end = Date.now() + 5000;
  while (server.queue.depth.running + server.queue.depth.waiting > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  const leaked = tf.memory().numTensors - baseline;
  await server.close();
  model.dispose();
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });

  const answered = outcomes.filter((o) => o.status === 200);
  const refused = outcomes.filter((o) => o.status === 429);
  const failed = outcomes.filter((o) => o.status !== 200 && o.status !== 429);
  const latency = answered.map((o) => o.ms).sort((a, b) => a - b);
  const refusedLatency = refused.map((o) => o.ms).sort((a, b) => a - b);
  const tokens = answered.reduce((s, o) => s + o.tokens, 0);
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, backend: tf.getBackend(), loadavg: os.loadavg() },
    settings: { clients, requestsPerClient: perClient, maxQueue, maxTokens, timeLimitSeconds: timeLimit, mix: kinds },
    requests: outcomes.length,
    answered: answered.length,
    refused429: refused.length,
    failed: failed.length,
    failures: failed.slice(0, 5),
    notSent,
    wallSeconds: +wall.toFixed(2),
    throughput: { requestsPerSecond: +(answered.length / wall).toFixed(2), tokensPerSecond: +(tokens / wall).toFixed(1) },
    latencyMs: { p50: +percentile(latency, 50).toFixed(0), p99: +percentile(latency, 99).toFixed(0), max: +percentile(latency, 100).toFixed(0) },
    healthDuringGenerationMs: (() => {
      const sorted = [...health].sort((a, b) => a - b);
      return {
        probes: sorted.length,
        p50: +percentile(sorted, 50).toFixed(1),
        p99: +percentile(sorted, 99).toFixed(1),
        max: +percentile(sorted, 100).toFixed(1),
      };
    })(),
    refusedLatencyMs: { p50: +percentile(refusedLatency, 50).toFixed(1), p99: +percentile(refusedLatency, 99).toFixed(1) },
    byKind: Object.fromEntries(
      kinds.map((k) => [
        k,
        {
          answered: answered.filter((o) => o.kind === k).length,
          p50: +percentile(
            answered
              .filter((o) => o.kind === k)
              .map((o) => o.ms)
              .sort((a, b) => a - b),
            50,
          ).toFixed(0),
        },
      ]),
    ),
    leakedTensors: leaked,
  };
  fs.writeFileSync(path.join(ROOT, 'bench-results.serve.json'), JSON.stringify(result, null, 1) + '\n');
  console.log(JSON.stringify(result, null, 1));
  console.log(
    `\n| clients x requests | answered | 429 | failed | wall | throughput | p50 | p99 | /health p99 while generating |\n|---|---|---|---|---|---|---|---|---|\n` +
      `| ${clients} x ${perClient} | ${answered.length} | ${refused.length} | ${failed.length} | ${wall.toFixed(1)} s | ${result.throughput.requestsPerSecond} req/s, ${result.throughput.tokensPerSecond} tok/s | ${result.latencyMs.p50} ms | ${result.latencyMs.p99} ms | ${result.healthDuringGenerationMs.p99} ms |`,
  );
  const ok = failed.length === 0 && leaked === 0 && answered.length > 0;
  if (!ok) console.error(`serve bench FAILED: ${failed.length} failed request(s), ${leaked} tensor(s) left behind`);
  return ok ? 0 : 1;
}

main().then(
  (code) => (process.exitCode = code),
  (e) => {
    console.error(e);
    process.exitCode = 1;
  },
);

// `npm run bench:serve -- --batching`: continuous batching against one request at a time, in one run.
// For each model (the medium bench model with the synthetic tokenizer's 1015-id vocabulary, random
// weights: its answers run to max_tokens; and the
// trained scenes-pvc toy) and each client count (8 and 32 by default), `pvc serve` runs in this process
// twice: --max-batch 1 (one generation at a time, the others queued) and --max-batch = clients. Each
// client sends its requests one after another (streamed, so the time to the first token is measured
// where the client sees it). Written to bench-results.serve-batching.json and printed as a table.
//
//   npx tsx test/bench/serve-bench.ts --batching [--clients 8,32] [--requests 2] [--max-tokens 32] [--models medium,scenes-pvc]
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import OpenAI from 'openai';
import * as os from 'os';
import * as path from 'path';
import { convertCheckpoint } from '../../converter/convert';
import { PVCModel } from '../../src/pvc_model';
import { ChatServer } from '../../src/server/server';
import { checkpointDir } from '../helpers';
import { BENCH_CONFIGS } from './configs';
import { writeSyntheticCheckpoint } from './synthetic-checkpoint';

const ROOT = path.join(__dirname, '..', '..');
/** Ids of the tokenizer files writeSyntheticCheckpoint copies (the tiny fixtures'). */
const TOKENIZER_VOCAB = 1015;
const QUESTIONS = ['What colour is the star?', 'How many shapes are there?', 'Is there a circle?', 'Where is the square?'];

const list = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return (i < 0 ? fallback : process.argv[i + 1]).split(',');
};
const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};

interface Row {
  model: string;
  clients: number;
  maxBatch: number;
  answered: number;
  failed: number;
  wallSeconds: number;
  requestsPerSecond: number;
  tokensPerSecond: number;
  ttftMs: { p50: number; p99: number };
  latencyMs: { p50: number; p99: number };
  mostInBatch: number;
  leakedTensors: number;
}

async function load(name: string, work: string): Promise<string> {
  if (name === 'scenes-pvc') {
    // The committed checkpoint, converted here (a fresh clone has no weights/scenes-pvc).
    const dir = path.join(work, 'scenes-pvc');
    convertCheckpoint(checkpointDir('scenes-pvc'), dir);
    return dir;
  }
  if (name !== 'medium') throw new Error(`--models: ${name} is not medium or scenes-pvc`);
  // The medium model with the synthetic tokenizer's vocabulary: its answers are decoded to text here,
  // and a random head over 92553 ids would name tokens that tokenizer does not have.
  const hf = path.join(work, 'medium-hf');
  const { llm_config: llm, ...rest } = BENCH_CONFIGS.medium.hf as { llm_config: Record<string, unknown> };
  writeSyntheticCheckpoint(hf, { ...rest, llm_config: { ...llm, vocab_size: TOKENIZER_VOCAB } });
  const dir = path.join(work, 'medium');
  convertCheckpoint(hf, dir);
  return dir;
}

async function run(model: PVCModel, name: string, clients: number, maxBatch: number, perClient: number, maxTokens: number): Promise<Row> {
  const server = await ChatServer.start({ model, modelName: name, port: 0, limits: { maxBatch, maxQueue: clients } });
  const baseline = tf.memory().numTensors;
  const ttft: number[] = [];
  const latency: number[] = [];
  let tokens = 0;
  let failed = 0;
  let most = 0;
  const sizes = setInterval(() => (most = Math.max(most, server.batching.decoding)), 5);
  const started = performance.now();
  try {
    await Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 600_000 });
        for (let k = 0; k < perClient; k++) {
          const t = performance.now();
          try {
            const stream = await client.chat.completions.create({
              model: name,
              max_tokens: maxTokens,
              stream: true,
              stream_options: { include_usage: true },
              messages: [{ role: 'user', content: `${QUESTIONS[(c + k) % QUESTIONS.length]} (client ${c}, request ${k})` }],
            });
            let first = NaN;
            for await (const chunk of stream) {
              // The server sends its first chunk once the first token is there (an empty answer's too).
              if (Number.isNaN(first)) first = performance.now() - t;
              if (chunk.usage) tokens += chunk.usage.completion_tokens;
            }
            ttft.push(first);
            latency.push(performance.now() - t);
          } catch (e) {
            failed++;
            process.stderr.write(`bench serve batching: ${(e as Error).message}\n`);
          }
        }
      }),
    );
  } finally {
    clearInterval(sizes);
  }
  const wall = (performance.now() - started) / 1000;
  await server.close();
  const ms = (v: number) => Math.round(v);
  return {
    model: name,
    clients,
    maxBatch,
    answered: latency.length,
    failed,
    wallSeconds: +wall.toFixed(2),
    requestsPerSecond: +(latency.length / wall).toFixed(2),
    tokensPerSecond: +(tokens / wall).toFixed(1),
    ttftMs: { p50: ms(percentile(ttft, 50)), p99: ms(percentile(ttft, 99)) },
    latencyMs: { p50: ms(percentile(latency, 50)), p99: ms(percentile(latency, 99)) },
    mostInBatch: most,
    leakedTensors: tf.memory().numTensors - baseline,
  };
}

export async function batchingBench(): Promise<number> {
  const clientCounts = list('clients', '8,32').map(Number);
  const perClient = Number(list('requests', '2')[0]);
  const maxTokens = Number(list('max-tokens', '32')[0]);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-serve-batching-'));
  const rows: Row[] = [];
  try {
    for (const name of list('models', 'medium,scenes-pvc')) {
      const model = await PVCModel.load(await load(name, work));
      await model.chat(null, 'Warm up.', { maxNewTokens: 2 });
      try {
        for (const clients of clientCounts) {
          for (const maxBatch of [1, clients]) {
            process.stderr.write(`bench serve batching: ${name}, ${clients} clients, max batch ${maxBatch}\n`);
            rows.push(await run(model, name, clients, maxBatch, perClient, maxTokens));
          }
        }
      } finally {
        model.dispose();
      }
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, backend: tf.getBackend() },
    settings: { requestsPerClient: perClient, maxTokens, prompt: 'one short text question per request, streamed' },
    rows,
  };
  fs.writeFileSync(path.join(ROOT, 'bench-results.serve-batching.json'), JSON.stringify(result, null, 1) + '\n');
  const table = [
    '| model | clients | max batch | answered | req/s | tokens/s | TTFT p50 / p99 | latency p50 / p99 | most rows decoding at once |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.model} | ${r.clients} | ${r.maxBatch} | ${r.answered} | ${r.requestsPerSecond} | ${r.tokensPerSecond} | ${r.ttftMs.p50} / ${r.ttftMs.p99} ms | ${r.latencyMs.p50} / ${r.latencyMs.p99} ms | ${r.mostInBatch} |`,
    ),
  ].join('\n');
  console.log(table);
  const bad = rows.filter((r) => r.failed > 0 || r.leakedTensors !== 0);
  if (bad.length > 0) console.error(`serve batching bench FAILED: ${bad.length} run(s) with failed requests or tensors left behind`);
  return bad.length > 0 ? 1 : 0;
}

// `npm run bench`: the tfjs port on every backend available against upstream's PyTorch model (float32,
// eager, CPU) in the same run, on the same random weights and inputs. Writes bench-results.json and
// bench-results.md. Not part of `npm test`.
//
//   PVC_TORCH_PYTHON   python with torch 2.13 + transformers 4.37.2 (test/reference/requirements.txt)
//   PVC_UPSTREAM       OpenGVLab/InternVL's internvl_chat directory (test/reference/README.md)
//
// Options (for a partial run while optimising; the default is everything):
//   --models a,b       only these models (vit-300m-layer, internlm2-7b-layer, medium, tiny-internvl2)
//   --backends a,b     only these tfjs backends (tensorflow, wasm, cpu); PyTorch always runs
//   --measures a,b     only these measures (vision, llm, beams: ms per step of greedy and of 5 beams;
//                      runtime: prefill, video, live, loop)
//   --suites a,b       speed (the table above: per-layer and per-model speed), runtime (prefill memory and
//                      time against length, a 96-frame video chat, event-loop delay); default both;
//                      full-size (InternVL2-8B and PVC-InternVL2-8B at real size in each weight mode against
//                      PyTorch bf16: about an hour, ~65 GB of disk in PVC_FULL_SIZE_CACHE; full-size-suite.ts)
//   --full-size a,b    only the full-size runs whose "model:chat:mode[:logits]" holds one of these as whole
//                      parts ("logits", "pvc-8b:video", "internvl2-8b:image:bfloat16": exact mode, not fast)
//   --full-size-fresh  run every full-size row again (default: rows in the cache's results.jsonl are kept)
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertCheckpoint } from '../../converter/convert';
import { writeSafetensors } from '../../src/io/safetensors';
import { BENCH_CONFIGS } from './configs';
import { fullSizeSuite, fullSizeTable } from './full-size-suite';
import { writeSyntheticCheckpoint } from './synthetic-checkpoint';

const ROOT = path.join(__dirname, '..', '..');
const PROMPT_TOKENS = 512;

function seededFloats(n: number, seed: number): Float32Array {
  let x = seed | 1;
  return Float32Array.from({ length: n }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return ((x >>> 0) / 4294967296) * 2 - 1;
  });
}

function runJson(cmd: string, args: string[], env: Record<string, string> = {}): Record<string, unknown> {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, ...env } });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{')) return { error: (r.stderr || r.stdout || `exit ${r.status}`).trim().split('\n').slice(-3).join(' | ') };
  return JSON.parse(line) as Record<string, unknown>;
}

function backendsAvailable(): string[] {
  const list = ['wasm'];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- probing an optional native package
      require(pkg);
      list.unshift('tensorflow');
      break;
    } catch {
      /* not installed */
    }
  }
  return list;
}

function listOption(flag: string): string[] | undefined {
  const i = process.argv.indexOf(flag);
  if (i < 0) return undefined;
  const value = process.argv[i + 1];
  if (!value) throw new Error(`${flag} needs a comma-separated list`);
  return value.split(',');
}

async function main() {
  const onlyModels = listOption('--models');
  const suites = listOption('--suites') ?? ['speed', 'runtime'];
  const onlyBackends = listOption('--backends');
  const onlyMeasures = listOption('--measures');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-bench-'));
  const python = process.env.PVC_TORCH_PYTHON ?? 'python3';
  const upstream = process.env.PVC_UPSTREAM;
  const backends = backendsAvailable();
  const tsx = path.join(ROOT, 'node_modules', '.bin', 'tsx');
  const results: Record<string, unknown>[] = [];
  const allModels: [string, { hf: Record<string, unknown> | null; measures: string[]; note: string }][] = [
    ...Object.entries(BENCH_CONFIGS),
    ['tiny-internvl2', { hf: null, measures: ['vision', 'llm'], note: 'the tiny test model' }],
  ];
  const models = suites.includes('speed') ? allModels.filter(([name]) => !onlyModels || onlyModels.includes(name)) : [];
  if (suites.includes('speed') && models.length === 0) throw new Error(`--models: none of ${onlyModels} is a benchmark model`);
  const runtime: Record<string, unknown>[] = [];
  const fullSize: Record<string, unknown>[] = [];
  try {
    for (const [name, spec] of models) {
      const hfDir = spec.hf ? path.join(work, `${name}-hf`) : path.join(ROOT, 'test', 'fixtures', 'checkpoints', name);
      if (spec.hf) writeSyntheticCheckpoint(hfDir, spec.hf);
      const outDir = path.join(work, name);
      convertCheckpoint(hfDir, outDir);
      const cfg = JSON.parse(fs.readFileSync(path.join(outDir, 'config.json'), 'utf8'));
      const S = cfg.image_size;
      const D = cfg.llm.hidden_size;
      const inputs = path.join(work, `${name}-inputs.safetensors`);
      writeSafetensors(inputs, [
        { name: 'pixel_values', dtype: 'F32', shape: [1, 3, S, S], data: seededFloats(3 * S * S, 1) },
        { name: 'embeds', dtype: 'F32', shape: [1, PROMPT_TOKENS, D], data: seededFloats(PROMPT_TOKENS * D, 2) },
      ]);
      const measures = spec.measures.filter((m) => !onlyMeasures || onlyMeasures.includes(m)).join(',');
      if (measures === '') continue;
      const runs = name.includes('layer') || name === 'medium' ? '3' : '5';
      const tfjsBackends = [...backends, ...(name === 'tiny-internvl2' ? ['cpu'] : [])].filter((b) => !onlyBackends || onlyBackends.includes(b));
      for (const backend of tfjsBackends) {
        // libtensorflow with its Eigen kernels (our default) and with oneDNN: each is faster at something.
        const envs: Record<string, string>[] = backend === 'tensorflow' ? [{ TF_ENABLE_ONEDNN_OPTS: '0' }, { TF_ENABLE_ONEDNN_OPTS: '1' }] : [{}];
        for (const env of envs) {
          process.stderr.write(`bench: ${name} on ${backend}${env.TF_ENABLE_ONEDNN_OPTS ? ` (TF_ENABLE_ONEDNN_OPTS=${env.TF_ENABLE_ONEDNN_OPTS})` : ''}\n`);
          results.push({
            model: name,
            note: spec.note,
            ...runJson(
              tsx,
              [path.join(__dirname, 'tfjs-bench.ts'), '--model', outDir, '--backend', backend, '--inputs', inputs, '--measures', measures, '--runs', runs],
              env,
            ),
          });
        }
      }
      const tapMeasures = spec.measures.filter((m) => m !== 'beams' && (!onlyMeasures || onlyMeasures.includes(m))).join(',');
      if (name === 'medium' && tfjsBackends.includes('wasm') && tapMeasures !== '') {
        for (const taps of ['idle', 'all']) {
          process.stderr.write(`bench: ${name} on wasm with taps ${taps}\n`);
          results.push({
            model: name,
            note: `${spec.note}; taps: ${taps}`,
            taps,
            ...runJson(tsx, [
              path.join(__dirname, 'tfjs-bench.ts'),
              '--model',
              outDir,
              '--backend',
              'wasm',
              '--inputs',
              inputs,
              '--measures',
              tapMeasures,
              '--runs',
              runs,
              '--taps',
              taps,
            ]),
          });
        }
      }
      process.stderr.write(`bench: ${name} on pytorch\n`);
      results.push({
        model: name,
        note: spec.note,
        ...(upstream
          ? runJson(python, [
              path.join(__dirname, 'torch_bench.py'),
              '--upstream',
              upstream,
              '--model',
              hfDir,
              '--inputs',
              inputs,
              '--measures',
              measures,
              '--runs',
              runs,
            ])
          : { backend: 'pytorch', error: 'PVC_UPSTREAM is not set (see test/reference/README.md)' }),
      });
      fs.rmSync(outDir, { recursive: true, force: true });
      if (spec.hf) fs.rmSync(hfDir, { recursive: true, force: true });
    }
    if (suites.includes('full-size'))
      fullSize.push(...fullSizeSuite(tsx, python, upstream, listOption('--full-size'), process.argv.includes('--full-size-fresh')));
    if (suites.includes('runtime')) {
      const tfjsBackends = backends.filter((b) => !onlyBackends || onlyBackends.includes(b));
      runtime.push(...runtimeSuite(work, tsx, python, upstream, tfjsBackends, onlyMeasures));
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }

  const machine = { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memoryGB: +(os.totalmem() / 2 ** 30).toFixed(1), node: process.version };
  fs.writeFileSync(
    path.join(ROOT, 'bench-results.json'),
    JSON.stringify({ date: new Date().toISOString(), machine, results, runtime, fullSize }, null, 1) + '\n',
  );
  const md =
    (suites.includes('speed') ? table(results, machine) : '') +
    (runtime.length ? runtimeTable(runtime) : '') +
    (fullSize.length ? fullSizeTable(fullSize) : '');
  fs.writeFileSync(path.join(ROOT, 'bench-results.md'), md);
  process.stdout.write(md);
}

const PREFILL_LENGTHS = [1024, 2048, 4096, 8192];

/**
 * The runtime suite: a prefill of 1k to 8k positions on the medium model (each length in a fresh
 * process, so peak RSS is that length's) on each tfjs backend and PyTorch; a 96-frame PVC video chat at
 * 448 px on tensorflow; the main thread's event-loop delay during a chat on the tiny and the medium
 * model, in the main thread and in a worker.
 */
function runtimeSuite(
  work: string,
  tsx: string,
  python: string,
  upstream: string | undefined,
  backends: string[],
  onlyMeasures?: string[],
): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  const runs = (measure: string) => !onlyMeasures || onlyMeasures.includes(measure);
  const bench = path.join(__dirname, 'runtime-bench.ts');
  const hfDir = path.join(work, 'runtime-medium-hf');
  writeSyntheticCheckpoint(hfDir, {
    ...BENCH_CONFIGS.medium.hf,
    llm_config: { ...(BENCH_CONFIGS.medium.hf.llm_config as object), max_position_embeddings: 16384 },
  });
  const medium = path.join(work, 'runtime-medium');
  convertCheckpoint(hfDir, medium);
  const tiny = path.join(work, 'runtime-tiny');
  convertCheckpoint(path.join(ROOT, 'test', 'fixtures', 'checkpoints', 'tiny-internvl2'), tiny);
  const D = JSON.parse(fs.readFileSync(path.join(medium, 'config.json'), 'utf8')).llm.hidden_size;
  for (const tokens of runs('prefill') ? PREFILL_LENGTHS : []) {
    for (const backend of backends) {
      process.stderr.write(`bench runtime: prefill ${tokens} on ${backend}\n`);
      out.push({ model: 'medium', ...runJson(tsx, [bench, '--measure', 'prefill', '--model', medium, '--backend', backend, '--tokens', String(tokens)]) });
    }
    process.stderr.write(`bench runtime: prefill ${tokens} on pytorch\n`);
    const inputs = path.join(work, `prefill-${tokens}.safetensors`);
    writeSafetensors(inputs, [{ name: 'embeds', dtype: 'F32', shape: [1, tokens, D], data: seededFloats(tokens * D, 2) }]);
    out.push({
      model: 'medium',
      ...(upstream
        ? runJson(python, [path.join(__dirname, 'torch_bench.py'), '--upstream', upstream, '--model', hfDir, '--inputs', inputs, '--measures', 'prefill'])
        : { backend: 'pytorch', measure: 'prefill', tokens, error: 'PVC_UPSTREAM is not set' }),
    });
  }
  // wasm would take minutes per frame pass at this width: the video runs on tensorflow where it is built.
  for (const backend of backends.filter((b) => b === 'tensorflow')) {
    if (runs('video')) {
      process.stderr.write(`bench runtime: 96-frame video on ${backend}\n`);
      out.push({
        model: 'pvc-vit300m-width',
        measure: 'video',
        ...runJson(tsx, [bench, '--measure', 'video', '--backend', backend, '--frames', '96', '--tokenizer', tiny]),
      });
    }
    if (runs('live')) {
      process.stderr.write(`bench runtime: a 128-frame live session on ${backend}\n`);
      out.push({
        model: 'pvc-vit300m-width',
        measure: 'live',
        ...runJson(tsx, [bench, '--measure', 'live', '--backend', backend, '--frames', '128', '--tokenizer', tiny]),
      });
    }
  }
  for (const [name, dir] of runs('loop')
    ? [
        ['tiny-internvl2', tiny],
        ['medium', medium],
      ]
    : []) {
    for (const backend of backends) {
      for (const worker of [false, true]) {
        process.stderr.write(`bench runtime: event loop, ${name} on ${backend}${worker ? ' in a worker' : ''}\n`);
        out.push({ model: name, ...runJson(tsx, [bench, '--measure', 'loop', '--model', dir, '--backend', backend, ...(worker ? ['--worker'] : [])]) });
      }
    }
  }
  return out;
}

function runtimeTable(rows: Record<string, unknown>[]): string {
  const f = (v: unknown, digits = 0) => (typeof v === 'number' ? v.toFixed(digits) : '-');
  const lines = [
    '',
    '## Runtime',
    '',
    'Prefill of N positions on the medium model (LLM 8 x 1024, 16/4 heads): time and peak RSS of a process that loads the model and runs one prefill (tfjs: chunks of 512 positions; PyTorch: eager attention over the whole prompt, head on the last position).',
    '',
    '| positions | backend | ms | peak RSS MB | RSS after load MB |',
    '|---|---|---|---|---|',
  ];
  for (const r of rows.filter((x) => x.measure === 'prefill' || (x.error && x.tokens))) {
    lines.push(
      r.error
        ? `| ${r.tokens ?? '?'} | ${r.backend ?? '?'} | error: ${String(r.error).slice(0, 100)} | | |`
        : `| ${r.tokens} | ${r.backend} | ${f(r.ms)} | ${f(r.peakRssMB)} | ${f(r.rssBeforeMB)} |`,
    );
  }
  lines.push(
    '',
    'A 96-frame PVC video chat at 448 px (ViT of InternViT-300M width, 1 layer with AdaLN and temporal attention; 64 tokens per frame; small LLM; 4 new tokens):',
    '',
    '| backend | frames | prompt tokens | frames per pass | to first token ms | total ms | peak RSS MB |',
    '|---|---|---|---|---|---|---|',
  );
  for (const r of rows.filter((x) => x.measure === 'video')) {
    lines.push(
      r.error
        ? `| error: ${String(r.error).slice(0, 100)} ||||||| `
        : `| ${r.backend} | ${r.frames} | ${r.promptTokens} | ${r.framesPerPass} | ${f(r.promptMs)} | ${f(r.ms)} | ${f(r.peakRssMB)} |`,
    );
  }
  lines.push('', ...liveTable(rows.filter((x) => x.measure === 'live')));
  lines.push(
    '',
    'Event-loop delay in the main thread during a chat (2 tiles, 32 new tokens, after a warm-up chat):',
    '',
    '| model | backend | where | chat ms | p50 ms | p99 ms | max ms |',
    '|---|---|---|---|---|---|---|',
  );
  for (const r of rows.filter((x) => x.measure === 'loop' || (x.error && !x.tokens && x.model !== 'pvc-vit300m-width'))) {
    lines.push(
      r.error
        ? `| ${r.model} | error: ${String(r.error).slice(0, 100)} ||||||`
        : `| ${r.model} | ${r.backend} | ${r.worker ? 'worker' : 'main thread'} | ${f(r.chatMs)} | ${f(r.p50Ms, 1)} | ${f(r.p99Ms, 1)} | ${f(r.maxMs, 1)} |`,
    );
  }
  return lines.join('\n') + '\n';
}

/** A live session's costs (runtime-bench.ts --measure live): per added frame, a question against chat(), RSS. */
export function liveTable(rows: Record<string, unknown>[]): string[] {
  const f = (v: unknown, digits = 0) => (typeof v === 'number' ? v.toFixed(digits) : '-');
  const lines = [
    "A live session (model.liveVideo) on the same configuration: frames added one at a time (after a one-frame warm-up session), a question after half of them against chat() on those frames, 4 new tokens each. Frame times are the median of 5 frames around each point (and that frame's own); x: against frame 1's.",
    '',
    '| backend | frames | ms per frame at 1 | at 16 | at N/2 | at N | question after N/2: to first token ms | chat() on those frames: to first token ms | faster | RSS after N/2 MB (peak) | after N MB (peak) |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    if (r.error) {
      lines.push(`| error: ${String(r.error).slice(0, 100)} ||||||||||`);
      continue;
    }
    const N = r.frames as number;
    const med = r.frameMsMedian as Record<string, number>;
    const one = r.frameMs as Record<string, number>;
    const at = (k: number) => `${f(med[k])} (${f(one[k])}) ${(med[k] / med[1]).toFixed(2)}x`;
    lines.push(
      `| ${r.backend} | ${N} | ${f(med[1])} (${f(one[1])}) | ${at(16)} | ${at(N / 2)} | ${at(N)} | ${f(r.askFirstTokenMs)} | ${f(r.chatFirstTokenMs)} | ${((r.chatFirstTokenMs as number) / (r.askFirstTokenMs as number)).toFixed(0)}x | ${f(r[`rssAfter${N / 2}MB`])} (${f(r[`peakRssAfter${N / 2}MB`])}) | ${f(r[`rssAfter${N}MB`])} (${f(r[`peakRssAfter${N}MB`])}) |`,
    );
  }
  return lines;
}

function table(results: Record<string, unknown>[], machine: Record<string, unknown>): string {
  const f = (v: unknown, digits = 1) => (typeof v === 'number' ? v.toFixed(digits) : '-');
  const torch = (model: string) => results.find((r) => r.model === model && r.backend === 'pytorch' && !r.error);
  const ratio = (r: Record<string, unknown>, key: string, higherIsBetter = false) => {
    const t = torch(r.model as string);
    if (!t || typeof r[key] !== 'number' || typeof t[key] !== 'number') return '-';
    return (higherIsBetter ? (t[key] as number) / (r[key] as number) : (r[key] as number) / (t[key] as number)).toFixed(2);
  };
  const lines = [
    `# pvc-tfjs benchmark (${machine.cpus} cores, ${machine.cpu}, node ${machine.node})`,
    '',
    'Ratios are tfjs / PyTorch time (decode: PyTorch tokens/s over tfjs tokens/s): 1.0 is parity, higher is slower.',
    'Each figure is the best of several runs after a warm-up, on both sides (timings on a shared machine vary by tens of percent).',
    '',
    '| model | backend | vision ms/tile | ratio | prefill ms (512 tok) | ratio | decode tok/s | ratio | greedy ms/step | 5 beams ms/step | beams / greedy | load ms | load MB/s | peak RSS MB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    if (r.error) {
      lines.push(`| ${r.model} | ${r.backend ?? '?'}${r.taps ? ` (taps ${r.taps})` : ''} | error: ${String(r.error).slice(0, 120)} ||||||||||||`);
      continue;
    }
    lines.push(
      `| ${r.model} | ${r.backend}${r.engine ? ` (${r.engine})` : ''}${r.taps ? ` (taps ${r.taps})` : ''}${r.threads ? ` (${r.threads} thread${r.threads === 1 ? '' : 's'})` : ''} | ${f(r.visionMsPerTile)} | ${r.backend === 'pytorch' ? '' : ratio(r, 'visionMsPerTile')} | ${f(r.prefillMs)} | ${r.backend === 'pytorch' ? '' : ratio(r, 'prefillMs')} | ${f(r.decodeTokensPerSecond)} | ${r.backend === 'pytorch' ? '' : ratio(r, 'decodeTokensPerSecond', true)} | ${f(r.greedyMsPerStep)} | ${f(r.beam5MsPerStep)} | ${typeof r.beam5MsPerStep === 'number' && typeof r.greedyMsPerStep === 'number' ? (r.beam5MsPerStep / r.greedyMsPerStep).toFixed(2) : '-'} | ${f(r.loadMs, 0)} | ${f(r.loadMBps)} | ${f(r.peakRssMB, 0)} |`,
    );
  }
  lines.push('', ...Object.entries(BENCH_CONFIGS).map(([k, v]) => `- ${k}: ${v.note}`), '');
  return lines.join('\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

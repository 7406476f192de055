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
//   --measures a,b     only these measures (vision, llm, beams: ms per step of greedy and of 5 beams)
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertCheckpoint } from '../../converter/convert';
import { writeSafetensors } from '../../src/io/safetensors';
import { BENCH_CONFIGS } from './configs';
import { writeSyntheticCheckpoint } from './synthetic-checkpoint';

const ROOT = path.join(__dirname, '..', '..');
const PROMPT_TOKENS = 512;

function seededFloats(n: number, seed: number): Float32Array {
  let x = seed | 1;
  return Float32Array.from({ length: n }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296 * 2 - 1;
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
  const models = allModels.filter(([name]) => !onlyModels || onlyModels.includes(name));
  if (models.length === 0) throw new Error(`--models: none of ${onlyModels} is a benchmark model`);
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
          results.push({ model: name, note: spec.note, ...runJson(tsx, [path.join(__dirname, 'tfjs-bench.ts'), '--model', outDir, '--backend', backend, '--inputs', inputs, '--measures', measures, '--runs', runs], env) });
        }
      }
      const tapMeasures = spec.measures.filter((m) => m !== 'beams' && (!onlyMeasures || onlyMeasures.includes(m))).join(',');
      if (name === 'medium' && tfjsBackends.includes('wasm') && tapMeasures !== '') {
        for (const taps of ['idle', 'all']) {
          process.stderr.write(`bench: ${name} on wasm with taps ${taps}\n`);
          results.push({ model: name, note: `${spec.note}; taps: ${taps}`, taps, ...runJson(tsx, [path.join(__dirname, 'tfjs-bench.ts'), '--model', outDir, '--backend', 'wasm', '--inputs', inputs, '--measures', tapMeasures, '--runs', runs, '--taps', taps]) });
        }
      }
      process.stderr.write(`bench: ${name} on pytorch\n`);
      results.push({ model: name, note: spec.note, ...(upstream
        ? runJson(python, [path.join(__dirname, 'torch_bench.py'), '--upstream', upstream, '--model', hfDir, '--inputs', inputs, '--measures', measures, '--runs', runs])
        : { backend: 'pytorch', error: 'PVC_UPSTREAM is not set (see test/reference/README.md)' }) });
      fs.rmSync(outDir, { recursive: true, force: true });
      if (spec.hf) fs.rmSync(hfDir, { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }

  const machine = { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memoryGB: +(os.totalmem() / 2 ** 30).toFixed(1), node: process.version };
  fs.writeFileSync(path.join(ROOT, 'bench-results.json'), JSON.stringify({ date: new Date().toISOString(), machine, results }, null, 1) + '\n');
  fs.writeFileSync(path.join(ROOT, 'bench-results.md'), table(results, machine));
  process.stdout.write(table(results, machine));
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
    lines.push(`| ${r.model} | ${r.backend}${r.engine ? ` (${r.engine})` : ''}${r.taps ? ` (taps ${r.taps})` : ''}${r.threads ? ` (${r.threads} thread${r.threads === 1 ? '' : 's'})` : ''} | ${f(r.visionMsPerTile)} | ${r.backend === 'pytorch' ? '' : ratio(r, 'visionMsPerTile')} | ${f(r.prefillMs)} | ${r.backend === 'pytorch' ? '' : ratio(r, 'prefillMs')} | ${f(r.decodeTokensPerSecond)} | ${r.backend === 'pytorch' ? '' : ratio(r, 'decodeTokensPerSecond', true)} | ${f(r.greedyMsPerStep)} | ${f(r.beam5MsPerStep)} | ${typeof r.beam5MsPerStep === 'number' && typeof r.greedyMsPerStep === 'number' ? (r.beam5MsPerStep / r.greedyMsPerStep).toFixed(2) : '-'} | ${f(r.loadMs, 0)} | ${f(r.loadMBps)} | ${f(r.peakRssMB, 0)} |`);
  }
  lines.push('', ...Object.entries(BENCH_CONFIGS).map(([k, v]) => `- ${k}: ${v.note}`), '');
  return lines.join('\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

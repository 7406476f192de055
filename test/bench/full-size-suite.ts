// The full-size suite of `npm run bench -- --suites full-size`: InternVL2-8B and PVC-InternVL2-8B at their
// real size (synthetic random bf16 weights, test/bench/synthetic-checkpoint.ts), converted with
// `pvc-convert --dtype bfloat16`, then one process per chat (full-size.ts) for each weight mode on the
// tensorflow backend, and PyTorch in bf16 on the same checkpoint, pixels and prompt ids (full_size_torch.py:
// upstream's InternVL2; for PVC, which has no upstream modeling, PVC spec v0 in PyTorch on upstream's classes,
// test/reference/pvc_spec.py). The 64-frame video is compared at full width with 2 LLM layers ('pvc-8b-l2'),
// which keeps PyTorch's prefill short (its vision stays full size: on an AVX2 CPU, over an hour). At 32
// layers eager PyTorch would also hold a layer's attention scores whole ([32 heads, 4683, 4683], 2.8 GB in
// float32 for its softmax) beside 16.2 GB of weights: not tried on a 24 GiB machine.
// float32 does not fit this machine (8.08B x 4 bytes = 32 GB): its rows say so instead of running.
// The full-size logits' error against float32 (the last position of the PVC image prompt, after the
// prefill): bfloat16 exact stands for float32 there, once 'pvc-8b-l2' (the same model at full width with 2
// LLM layers, whose float32 fits) shows the two bit-equal on that prompt.
//
// The checkpoints (~16 GB each, and their conversions) are kept in PVC_FULL_SIZE_CACHE (default
// ~/.cache/pvc-tfjs/full-size) and reused; nothing there is committed. Each finished row is appended to
// results.jsonl there at once (a run of an hour survives an interruption); rows already there are kept
// and not run again unless --full-size-fresh is given.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertCheckpoint } from '../../converter/convert';
import { relativeMaxError } from '../helpers';
import { syntheticConfig, writeSyntheticCheckpoint } from './synthetic-checkpoint';

export interface FullSizeRun {
  model: 'internvl2-8b' | 'pvc-8b' | 'pvc-8b-l2';
  chat: 'image' | 'video';
  mode: 'bfloat16' | 'bfloat16-fast' | 'int8' | 'pytorch-bfloat16' | 'float32';
  /** Stop after the prefill and keep the logits of the prompt's last position (full-size.ts --write-logits). */
  logits?: true;
}

/** LLM layers of each model (InternVL2-8B's 32; the vision side and every width are full size in all). */
const LLM_LAYERS: Record<FullSizeRun['model'], number> = { 'internvl2-8b': 32, 'pvc-8b': 32, 'pvc-8b-l2': 2 };

const MODES: Record<string, { weights: string; matmul: string; env: Record<string, string> }> = {
  float32: { weights: 'float32', matmul: 'exact', env: { TF_ENABLE_ONEDNN_OPTS: '0' } },
  bfloat16: { weights: 'bfloat16', matmul: 'exact', env: { TF_ENABLE_ONEDNN_OPTS: '0' } },
  'bfloat16-fast': { weights: 'bfloat16', matmul: 'fast', env: { TF_ENABLE_ONEDNN_OPTS: '1' } },
  int8: { weights: 'int8', matmul: 'exact', env: { TF_ENABLE_ONEDNN_OPTS: '0' } },
};

/** In the order they run: the comparison with PyTorch first, then the 64-frame video in each mode. */
export const FULL_SIZE_RUNS: FullSizeRun[] = [
  { model: 'internvl2-8b', chat: 'image', mode: 'bfloat16-fast' },
  { model: 'internvl2-8b', chat: 'image', mode: 'pytorch-bfloat16' },
  { model: 'internvl2-8b', chat: 'image', mode: 'float32' },
  { model: 'pvc-8b', chat: 'video', mode: 'bfloat16-fast' },
  { model: 'pvc-8b', chat: 'video', mode: 'int8' },
  { model: 'internvl2-8b', chat: 'image', mode: 'int8' },
  { model: 'internvl2-8b', chat: 'image', mode: 'bfloat16' },
  { model: 'pvc-8b', chat: 'video', mode: 'bfloat16' },
  { model: 'pvc-8b', chat: 'image', mode: 'bfloat16-fast' },
  { model: 'pvc-8b-l2', chat: 'video', mode: 'pytorch-bfloat16' },
  { model: 'pvc-8b-l2', chat: 'video', mode: 'bfloat16' },
  { model: 'pvc-8b-l2', chat: 'video', mode: 'bfloat16-fast' },
  { model: 'pvc-8b-l2', chat: 'image', mode: 'float32', logits: true },
  { model: 'pvc-8b-l2', chat: 'image', mode: 'bfloat16', logits: true },
  { model: 'pvc-8b', chat: 'image', mode: 'bfloat16', logits: true },
  { model: 'pvc-8b', chat: 'image', mode: 'bfloat16-fast', logits: true },
  { model: 'pvc-8b', chat: 'image', mode: 'int8', logits: true },
];

const key = (r: { model?: unknown; chat?: unknown; mode?: unknown; logits?: unknown }) => `${r.model}:${r.chat}:${r.mode}${r.logits ? ':logits' : ''}`;

function log(line: string): void {
  process.stderr.write(`bench full-size: ${line}\n`);
}

function lastJson(r: ReturnType<typeof spawnSync>): Record<string, unknown> {
  const line = String(r.stdout).trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{'))
    return {
      error: String(r.stderr || r.stdout || `exit ${r.status}`)
        .trim()
        .split('\n')
        .slice(-3)
        .join(' | '),
    };
  return JSON.parse(line) as Record<string, unknown>;
}

/** The converted model (and its HF checkpoint) for `model`, made once in the cache. */
function prepared(cache: string, model: FullSizeRun['model']): { hf: string; converted: string; convertMs?: number } {
  const hf = path.join(cache, `${model}-hf`);
  const converted = path.join(cache, `${model}-bf16`);
  if (!fs.existsSync(path.join(hf, 'model.safetensors.index.json'))) {
    log(`writing the synthetic ${model} checkpoint to ${hf}`);
    fs.rmSync(hf, { recursive: true, force: true });
    writeSyntheticCheckpoint(hf, syntheticConfig(LLM_LAYERS[model], model !== 'internvl2-8b'));
  }
  if (fs.existsSync(path.join(converted, 'manifest.json'))) return { hf, converted };
  log(`pvc-convert --dtype bfloat16 ${hf}`);
  const t = Date.now();
  let shown = -1;
  convertCheckpoint(hf, converted, {
    dtype: 'bfloat16',
    overwrite: true,
    onProgress: (p) => {
      const pct = Math.floor((100 * p.bytesDone) / p.bytesTotal);
      if (pct % 10 === 0 && pct !== shown) log(`convert ${pct}%`);
      shown = pct;
    },
  });
  return { hf, converted, convertMs: Date.now() - t };
}

export function fullSizeSuite(tsx: string, python: string, upstream: string | undefined, only?: string[], fresh = false): Record<string, unknown>[] {
  const cache = process.env.PVC_FULL_SIZE_CACHE ?? path.join(os.homedir(), '.cache', 'pvc-tfjs', 'full-size');
  fs.mkdirSync(cache, { recursive: true });
  const jsonl = path.join(cache, 'results.jsonl');
  if (fresh) fs.rmSync(jsonl, { force: true });
  const kept: Record<string, unknown>[] = fs.existsSync(jsonl)
    ? fs
        .readFileSync(jsonl, 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
    : [];
  const out: Record<string, unknown>[] = [...kept];
  const record = (row: Record<string, unknown>) => {
    out.push(row);
    fs.appendFileSync(jsonl, JSON.stringify(row) + '\n');
  };
  const done = new Set(kept.filter((r) => !r.error).map(key));
  // A filter matches whole parts of a key: "bfloat16" is not "bfloat16-fast", "pvc-8b" not "pvc-8b-l2".
  const chosen = (r: FullSizeRun) => !only || only.some((o) => `:${key(r)}:`.includes(`:${o}:`));
  const runs = FULL_SIZE_RUNS.filter((r) => chosen(r) && !done.has(key(r)));
  const models = new Map<string, ReturnType<typeof prepared>>();
  for (const run of runs) {
    if (!models.has(run.model)) {
      models.set(run.model, prepared(cache, run.model));
      const convertMs = models.get(run.model)!.convertMs;
      if (convertMs !== undefined) record({ model: run.model, measure: 'convert', convertMs });
    }
    const { hf, converted } = models.get(run.model)!;
    const inputs = path.join(cache, `${run.model}-${run.chat}-inputs.safetensors`);
    log(key(run));
    if (run.mode === 'float32' && LLM_LAYERS[run.model] === 32) {
      record({ ...run, skipped: `8.08B float32 weights need 32.3 GB; this machine has ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB` });
      continue;
    }
    if (run.mode === 'pytorch-bfloat16') {
      if (!upstream) {
        record({ ...run, error: 'PVC_UPSTREAM is not set (test/reference/README.md)' });
        continue;
      }
      if (!fs.existsSync(inputs)) {
        // The tfjs side writes the pixels and prompt ids both sides read (its first run does it too). It
        // loads the model to build the prompt: in bfloat16, as float32 would not fit.
        const args = [
          path.join(__dirname, 'full-size.ts'),
          '--model',
          converted,
          '--weights',
          'bfloat16',
          '--chat',
          run.chat,
          '--write-inputs',
          inputs,
          '--inputs-only',
        ];
        const w = spawnSync(tsx, args, { stdio: ['ignore', 'ignore', 'inherit'] });
        if (w.status !== 0 || !fs.existsSync(inputs)) {
          record({ ...run, error: `writing the inputs failed (full-size.ts --inputs-only: ${w.signal ?? `exit ${w.status}`})` });
          continue;
        }
      }
      const pvc = run.model === 'internvl2-8b' ? [] : ['--pvc', '--data-flag', run.chat === 'video' ? '3' : '1'];
      const r = spawnSync(
        python,
        [path.join(__dirname, 'full_size_torch.py'), '--upstream', upstream, '--model', hf, '--inputs', inputs, '--dtype', 'bfloat16', ...pvc],
        {
          encoding: 'utf8',
          maxBuffer: 1 << 26,
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      record({ ...run, ...lastJson(r) });
      continue;
    }
    const m = MODES[run.mode];
    const args = [path.join(__dirname, 'full-size.ts'), '--model', converted, '--weights', m.weights, '--matmul', m.matmul, '--chat', run.chat];
    if (run.logits) args.push('--write-logits', path.join(cache, `${key(run).replace(/:/g, '-')}.f32`));
    else if (!fs.existsSync(inputs)) args.push('--write-inputs', inputs);
    const r = spawnSync(tsx, args, { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, ...m.env }, stdio: ['ignore', 'pipe', 'inherit'] });
    record({ ...run, ...lastJson(r) });
  }
  return out;
}

export function fullSizeTable(rows: Record<string, unknown>[]): string {
  const f = (v: unknown, digits = 1) => (typeof v === 'number' ? v.toFixed(digits) : '-');
  const vs = (r: Record<string, unknown>, key: string, higherIsBetter = false) => {
    const torch = rows.find((x) => x.mode === 'pytorch-bfloat16' && !x.error && x.model === r.model && x.chat === r.chat);
    if (!torch || r === torch || typeof r[key] !== 'number' || typeof torch[key] !== 'number') return '';
    const x = higherIsBetter ? (r[key] as number) / (torch[key] as number) : (torch[key] as number) / (r[key] as number);
    return ` (${x.toFixed(2)}x)`;
  };
  const lines = [
    '',
    '## Full size',
    '',
    'InternVL2-8B and PVC-InternVL2-8B at their real size (random bf16 weights), one process per row; image: 12 tiles + thumbnail, video: 64 frames (data flag 3); 32 new tokens. (Nx): speed relative to PyTorch bf16 on the same prompt, above 1 is faster.',
    '',
    '| model | chat | mode | prompt tokens | load s | load MB/s | held GB | vision s | prefill s | decode tok/s | decode bound tok/s | faults/step | peak RSS GB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows.filter((x) => x.measure !== 'convert' && !x.logits)) {
    if (r.error || r.skipped) {
      lines.push(`| ${r.model} | ${r.chat} | ${r.mode} | ${r.skipped ? `not run: ${r.skipped}` : `error: ${String(r.error).slice(0, 160)}`} |||||||||`);
      continue;
    }
    const s = (ms: unknown) => (typeof ms === 'number' ? ms / 1000 : undefined);
    lines.push(
      `| ${r.model} | ${r.chat} | ${r.mode} | ${r.promptTokens} | ${f(s(r.loadMs))} | ${f(r.loadMBs, 0)} | ${f(r.heldGB, 2)} | ${f(s(r.visionMs))}${vs(r, 'visionMs')} | ${f(s(r.prefillMs))}${vs(r, 'prefillMs')} | ${f(r.decodeTokensPerSecond, 2)}${vs(r, 'decodeTokensPerSecond', true)} | ${f(r.decodeBoundTokensPerSecond, 2)} | ${f(r.decodeFaultsPerStep, 0)} | ${f((r.peakRssMB as number) / 1024, 2)} |`,
    );
  }
  for (const r of rows.filter((x) => x.measure === 'convert'))
    lines.push('', `- pvc-convert --dtype bfloat16 of ${r.model}: ${f((r.convertMs as number) / 1000, 0)} s`);
  return lines.join('\n') + logitsTable(rows) + '\n';
}

/** Indices of the k largest values. */
function topK(v: Float32Array, k: number): number[] {
  return Array.from(v.keys())
    .sort((a, b) => v[b] - v[a])
    .slice(0, k);
}

/**
 * Each logits row against its model's float32 row, or, where float32 does not fit, against bfloat16 exact
 * (bit-equal to float32: the fixtures' parity suites, and the 'pvc-8b-l2' rows here at full width).
 */
function logitsTable(rows: Record<string, unknown>[]): string {
  const runs = rows.filter((r) => r.logits && !r.error && typeof r.logits === 'string' && fs.existsSync(r.logits));
  if (runs.length === 0) return '';
  const read = (r: Record<string, unknown>) => {
    const b = fs.readFileSync(r.logits as string);
    // A copy: a Buffer's offset in its pool need not be a multiple of 4.
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  };
  const lines = [
    '',
    '',
    "### Full-size logits against float32 (the PVC image prompt's last position)",
    '',
    '| model | mode | reference | prompt tokens | prefill s | peak RSS GB | values differing | relative max error | max abs error | argmax equal | top-5 overlap |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of runs) {
    const ref = runs.find((x) => x.model === r.model && x.mode === 'float32') ?? runs.find((x) => x.model === r.model && x.mode === 'bfloat16');
    if (!ref || ref === r) continue;
    const [a, b] = [read(r), read(ref)];
    let differing = 0;
    let maxAbs = 0;
    for (let i = 0; i < b.length; i++) {
      if (a[i] !== b[i]) differing++;
      maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
    }
    const [ta, tb] = [topK(a, 5), topK(b, 5)];
    const overlap = ta.filter((i) => tb.includes(i)).length;
    const refName = ref.mode === 'float32' ? 'float32' : 'bfloat16 exact (for float32)';
    lines.push(
      `| ${r.model} | ${r.mode} | ${refName} | ${r.promptTokens} | ${((r.prefillMs as number) / 1000).toFixed(1)} | ${((r.peakRssMB as number) / 1024).toFixed(2)} | ${differing} of ${b.length} | ${relativeMaxError(a, b).toExponential(2)} | ${maxAbs.toExponential(2)} | ${ta[0] === tb[0] ? 'yes' : 'no'} | ${overlap}/5 |`,
    );
  }
  return lines.join('\n');
}

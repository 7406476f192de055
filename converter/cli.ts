// pvc-convert <hf-dir> <out-dir> [--dtype float32|float16] [--shard-size BYTES] [--overwrite]
// pvc-convert <hf-dir> --audit
import * as fs from 'fs';
import { SafetensorsCheckpoint } from '../src/io/safetensors';
import { auditCheckpoint, auditProblems, convertCheckpoint, formatAudit, formatBytes, Progress, StorageDType } from './convert';

const USAGE = `usage: pvc-convert <hf-dir> <out-dir> [--dtype float32|float16] [--shard-size BYTES] [--overwrite]
       pvc-convert <hf-dir> --audit

Converts a HuggingFace InternVL2 / PVC-InternVL2 checkpoint directory into pvc-tfjs's weight format.
  --dtype        storage dtype of the converted tensors (default float32; float16 halves the size and
                 is widened to float32 at load)
  --shard-size   maximum bytes per output shard (default just under 2 GiB)
  --overwrite    replace <out-dir> if it exists
  --audit        print the tensor inventory (known / unknown / missing, bytes by dtype) and write nothing`;

interface Args {
  hfDir: string;
  outDir?: string;
  dtype: StorageDType;
  shardSize?: number;
  overwrite: boolean;
  audit: boolean;
}

function parseArgs(argv: string[]): Args {
  const positional: string[] = [];
  const args: Args = { hfDir: '', dtype: 'float32', overwrite: false, audit: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    } else if (a === '--dtype') {
      const d = value();
      if (d !== 'float32' && d !== 'float16') throw new Error(`--dtype ${d}: expected float32 or float16`);
      args.dtype = d;
    } else if (a === '--shard-size') {
      const s = value();
      const n = Number(s);
      if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--shard-size ${s}: expected a positive number of bytes`);
      args.shardSize = n;
    } else if (a === '--overwrite') args.overwrite = true;
    else if (a === '--audit') args.audit = true;
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}\n${USAGE}`);
    else positional.push(a);
  }
  if (positional.length < 1 || positional.length > 2 || (!args.audit && positional.length !== 2)) throw new Error(USAGE);
  [args.hfDir, args.outDir] = positional;
  if (!fs.existsSync(args.hfDir) || !fs.statSync(args.hfDir).isDirectory()) throw new Error(`${args.hfDir}: no such directory`);
  return args;
}

function progressPrinter(): (p: Progress) => void {
  if (!process.stderr.isTTY) return () => {};
  let last = 0;
  return (p) => {
    const now = Date.now();
    if (now - last < 200 && p.tensorsDone < p.tensorsTotal) return;
    last = now;
    const rate = (p.bytesDone / Math.max(p.elapsedMs, 1)) * 1000;
    const eta = rate > 0 ? (p.bytesTotal - p.bytesDone) / rate : 0;
    const pct = ((100 * p.bytesDone) / Math.max(p.bytesTotal, 1)).toFixed(1);
    process.stderr.write(
      `\r  ${pct}%  ${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)}  ${formatBytes(rate)}/s  ETA ${eta.toFixed(0)}s  tensors ${p.tensorsDone}/${p.tensorsTotal}   `,
    );
    if (p.tensorsDone === p.tensorsTotal) process.stderr.write('\n');
  };
}

export function main(argv = process.argv.slice(2)): number {
  let args: Args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`pvc-convert: ${(e as Error).message}\n`);
    return 2;
  }
  try {
    if (args.audit) {
      const ckpt = SafetensorsCheckpoint.open(args.hfDir);
      try {
        const audit = auditCheckpoint(args.hfDir, ckpt);
        process.stdout.write(formatAudit(audit) + '\n');
        return auditProblems(audit).length === 0 ? 0 : 1;
      } finally {
        ckpt.close();
      }
    }
    const started = Date.now();
    process.stderr.write(`pvc-convert: ${args.hfDir} -> ${args.outDir} (${args.dtype})\n`);
    const { manifest } = convertCheckpoint(args.hfDir, args.outDir!, {
      dtype: args.dtype,
      shardSize: args.shardSize,
      overwrite: args.overwrite,
      onProgress: progressPrinter(),
    });
    const source = manifest.source.files.reduce((a, f) => a + f.bytes, 0);
    const seconds = (Date.now() - started) / 1000;
    process.stderr.write(
      `pvc-convert: wrote ${Object.keys(manifest.tensors).length} tensors in ${manifest.shards.length} shard(s) ` +
        `from ${formatBytes(source)} in ${seconds.toFixed(1)}s (${formatBytes(source / Math.max(seconds, 1e-3))}/s)\n`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`pvc-convert: ${(e as Error).message}\n`);
    return 1;
  }
}

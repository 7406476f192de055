// pvc-convert <hf-dir> <out-dir> [--dtype float32|float16|bfloat16] [--shard-size BYTES] [--overwrite]
// pvc-convert <hf-dir> --audit
import * as fs from 'fs';
import { SafetensorsCheckpoint } from '../src/io/safetensors';
import { flag, number, oneOf, Parsed, parseOptions, value, Values } from '../src/cli/args';
import { auditCheckpoint, auditProblems, convertCheckpoint, formatAudit, formatBytes, Progress, StorageDType } from './convert';

const USAGE = `usage: pvc-convert <hf-dir> <out-dir> [--dtype float32|float16|bfloat16] [--shard-size BYTES] [--overwrite]
       pvc-convert <hf-dir> --audit

Converts a HuggingFace InternVL2 / PVC-InternVL2 checkpoint directory into pvc-tfjs's weight format.
  --dtype        storage dtype of the converted tensors (default float32; float16 and bfloat16 halve
                 the size; bfloat16 keeps a bf16 checkpoint's values bit for bit and is what
                 PVCModel.load(dir, { weights: 'bfloat16' }) holds without rounding)
  --shard-size   maximum bytes per output shard (default just under 2 GiB)
  --overwrite    replace <out-dir> if it exists
  --audit        print the tensor inventory (known / unknown / missing, bytes by dtype) and write nothing`;

const CONVERT_OPTIONS = {
  dtype: value(oneOf<StorageDType>(['float32', 'float16', 'bfloat16']), 'float32'),
  shardSize: value(number({ integer: true, min: 1 })),
  overwrite: flag(),
  audit: flag(),
  help: flag('h'),
};

type Args = Values<typeof CONVERT_OPTIONS> & { hfDir: string; outDir?: string };

function parseConvertArgs(argv: string[]): Args {
  let parsed: Parsed<typeof CONVERT_OPTIONS>;
  try {
    parsed = parseOptions(argv, CONVERT_OPTIONS, { positionals: true });
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${USAGE}`, { cause: e });
  }
  const { values, positionals } = parsed;
  if (values.help) return { ...values, hfDir: '' };
  if (positionals.length < 1 || positionals.length > 2 || (!values.audit && positionals.length !== 2)) throw new Error(USAGE);
  const [hfDir, outDir] = positionals;
  if (!fs.existsSync(hfDir) || !fs.statSync(hfDir).isDirectory()) throw new Error(`${hfDir}: no such directory`);
  return { ...values, hfDir, outDir };
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
    args = parseConvertArgs(argv);
  } catch (e) {
    process.stderr.write(`pvc-convert: ${(e as Error).message}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
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

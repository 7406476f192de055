// HuggingFace InternVL2 / PVC checkpoint directory -> a converted model directory:
//   config.json (normalized), manifest.json, model-XXXXX-of-YYYYY.safetensors shards (project names,
//   float32, float16 or bfloat16 storage), tokenizer.json, tokenizer_config.json.
// Tensor by tensor, so memory stays bounded by the largest tensor. Output is written into a
// temporary directory beside the target and renamed into place at the very end.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { FORMAT_NAME, FORMAT_VERSION, ModelConfig } from '../src/config';
import { DType, DTYPE_SIZE, f32ToBf16, f32ToF16, FLOAT_DTYPES, numElements, SafetensorsCheckpoint, SafetensorsWriter } from '../src/io/safetensors';
import { Manifest, ManifestEntry, MANIFEST_FILE, readManifest } from '../src/io/weights';
import { normalizeHFConfig } from './hf_config';
import { applyTransform, detectPVCLayers, TensorRule, tensorRules } from './names';
import { convertTokenizer } from './tokenizer';
import { readJsonFile } from '../src/json';

export type StorageDType = 'float32' | 'float16' | 'bfloat16';

const STORAGE: Record<StorageDType, DType> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' };

/** Shards stay below this by default: Node cannot read a file of 2 GiB or more in one call. */
export const DEFAULT_SHARD_SIZE = 2 ** 31 - 2 ** 26; // 1.94 GiB

export interface Progress {
  bytesDone: number;
  bytesTotal: number;
  tensorsDone: number;
  tensorsTotal: number;
  elapsedMs: number;
}

export interface ConvertOptions {
  dtype?: StorageDType;
  shardSize?: number;
  /** Replace an existing output directory. */
  overwrite?: boolean;
  onProgress?: (p: Progress) => void;
}

// ---- audit ---------------------------------------------------------------------------------------

export interface AuditRow {
  name: string;
  dtype?: DType;
  shape?: number[];
  expectedShape?: number[];
  bytes?: number;
}

export interface Audit {
  config: ModelConfig;
  known: AuditRow[];
  unknown: AuditRow[];
  missing: AuditRow[];
  /** Present, but with a shape the config contradicts or a dtype that is not a float type. */
  mismatched: (AuditRow & { problem: string })[];
  bytesByDtype: Record<string, number>;
  rules: TensorRule[];
}

function readHFConfig(hfDir: string): Record<string, unknown> {
  const file = path.join(hfDir, 'config.json');
  return readJsonFile<Record<string, unknown>>(file, `not a HuggingFace checkpoint directory`);
}

/** Compares the checkpoint's tensors with the name table for its config. Throws only on unreadable input. */
export function auditCheckpoint(hfDir: string, ckpt: SafetensorsCheckpoint): Audit {
  const hf = readHFConfig(hfDir);
  const config = normalizeHFConfig(hf, path.join(hfDir, 'config.json'), hf.model_type === 'pvc_internvl' ? detectPVCLayers(ckpt.names) : undefined);
  const rules = tensorRules(config);
  const audit: Audit = { config, known: [], unknown: [], missing: [], mismatched: [], bytesByDtype: {}, rules };
  const expected = new Map(rules.map((r) => [r.hf, r]));
  for (const name of ckpt.names) {
    const info = ckpt.info(name);
    audit.bytesByDtype[info.dtype] = (audit.bytesByDtype[info.dtype] ?? 0) + info.byteLength;
    const row: AuditRow = { name, dtype: info.dtype, shape: info.shape, bytes: info.byteLength };
    const rule = expected.get(name);
    if (rule === undefined) {
      audit.unknown.push(row);
      continue;
    }
    if (JSON.stringify(rule.hfShape) !== JSON.stringify(info.shape)) {
      audit.mismatched.push({ ...row, expectedShape: rule.hfShape, problem: `shape [${info.shape}] but config.json implies [${rule.hfShape}]` });
    } else if (!FLOAT_DTYPES.includes(info.dtype)) {
      audit.mismatched.push({ ...row, expectedShape: rule.hfShape, problem: `dtype ${info.dtype} is not supported (expected ${FLOAT_DTYPES.join(', ')})` });
    } else {
      audit.known.push({ ...row, expectedShape: rule.hfShape });
    }
  }
  for (const rule of rules) {
    if (!ckpt.has(rule.hf)) audit.missing.push({ name: rule.hf, expectedShape: rule.hfShape });
  }
  return audit;
}

/** The audit's problems, one line per tensor; empty when the checkpoint converts cleanly. */
export function auditProblems(audit: Audit): string[] {
  return [
    ...audit.missing.map((r) => `missing: ${r.name} (expected shape [${r.expectedShape}])`),
    ...audit.unknown.map((r) => `unknown: ${r.name} ${r.dtype} [${r.shape}] (not in the name table for model_type ${audit.config.model_type})`),
    ...audit.mismatched.map((r) => `mismatch: ${r.name}: ${r.problem}`),
  ];
}

/** A human-readable inventory (what `pvc-convert --audit` prints). */
export function formatAudit(audit: Audit): string {
  const lines: string[] = [];
  const c = audit.config;
  lines.push(
    `model_type ${c.model_type}: ViT ${c.vision.num_hidden_layers} layers x ${c.vision.hidden_size}, ` +
      `LLM ${c.llm.num_hidden_layers} layers x ${c.llm.hidden_size} (${c.llm.num_attention_heads}/${c.llm.num_key_value_heads} heads), ` +
      `vocab ${c.llm.vocab_size}, ${c.num_image_token} tokens per tile`,
  );
  if (c.pvc !== null) {
    lines.push(
      `PVC: use_temporal ${c.pvc.use_temporal}, image_repeat_time ${c.pvc.image_repeat_time}, video_repeat_time ${c.pvc.video_repeat_time}, ` +
        `AdaLN layers [${c.pvc.adaln_layers}], temporal layers [${c.pvc.temporal_layers}]`,
    );
  }
  const total = Object.values(audit.bytesByDtype).reduce((a, b) => a + b, 0);
  lines.push(`tensors: ${audit.known.length} known, ${audit.unknown.length} unknown, ${audit.missing.length} missing, ${audit.mismatched.length} mismatched`);
  lines.push(
    `bytes by dtype: ${Object.entries(audit.bytesByDtype)
      .map(([d, b]) => `${d} ${formatBytes(b)}`)
      .join(', ')} (total ${formatBytes(total)})`,
  );
  // Every tensor: the known ones with their dtype and shape, then what is unknown, missing or mismatched.
  for (const r of audit.known) lines.push(`  known: ${r.name} ${r.dtype} [${r.shape}]`);
  for (const p of auditProblems(audit)) lines.push(`  ${p}`);
  return lines.join('\n');
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

// ---- conversion ----------------------------------------------------------------------------------

interface OutputTensor {
  name: string;
  shape: number[];
  shard: number;
}

function planShards(rules: TensorRule[], bytesPerElement: number, shardSize: number): { outputs: OutputTensor[]; shardCount: number } {
  const outputs: OutputTensor[] = [];
  let shard = 0;
  let used = 0;
  for (const rule of rules) {
    for (const out of rule.out) {
      const bytes = numElements(out.shape) * bytesPerElement;
      if (used > 0 && used + bytes > shardSize) {
        shard++;
        used = 0;
      }
      // A tensor larger than the shard size gets a shard of its own (our reader has no file-size limit).
      outputs.push({ name: out.name, shape: out.shape, shard });
      used += bytes;
    }
  }
  return { outputs, shardCount: shard + 1 };
}

function shardName(i: number, n: number): string {
  const pad = (x: number) => String(x).padStart(5, '0');
  return `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}

/**
 * Converts `hfDir` into `outDir`. On any problem (audit failure, unreadable tensor, full disk) nothing
 * is left at `outDir` and the temporary directory is removed; the error lists every offending tensor.
 */
export function convertCheckpoint(hfDir: string, outDir: string, options: ConvertOptions = {}): { manifest: Manifest; config: ModelConfig } {
  const dtype = options.dtype ?? 'float32';
  if (!(dtype in STORAGE)) throw new Error(`--dtype ${dtype}: expected ${Object.keys(STORAGE).join(', ')}`);
  const shardSize = options.shardSize ?? DEFAULT_SHARD_SIZE;
  if (!Number.isSafeInteger(shardSize) || shardSize <= 0) throw new Error(`shard size ${shardSize}: expected a positive number of bytes`);
  if (fs.existsSync(outDir) && !options.overwrite) {
    throw new Error(`${outDir} already exists; remove it or pass --overwrite`);
  }

  const ckpt = SafetensorsCheckpoint.open(hfDir);
  const tmpDir = `${outDir.replace(/[\\/]+$/, '')}.partial-${process.pid}`;
  try {
    const audit = auditCheckpoint(hfDir, ckpt);
    const problems = auditProblems(audit);
    if (problems.length > 0) {
      throw new Error(`${hfDir}: cannot convert: ${problems.length} tensor problem(s):\n  ${problems.join('\n  ')}`);
    }
    const { config, rules } = audit;
    const tokenizer = convertTokenizer(hfDir);

    fs.rmSync(tmpDir, { recursive: true, force: true });
    fs.mkdirSync(tmpDir, { recursive: true });
    const storage = STORAGE[dtype];
    const { outputs, shardCount } = planShards(rules, DTYPE_SIZE[storage], shardSize);
    const shards = Array.from({ length: shardCount }, (_, i) => shardName(i, shardCount));
    const byName = new Map(outputs.map((o) => [o.name, o]));
    const tensors: Record<string, ManifestEntry> = {};
    const bytesTotal = rules.reduce((a, r) => a + ckpt.info(r.hf).byteLength, 0);
    const started = Date.now();
    let bytesDone = 0;
    let tensorsDone = 0;
    let writer: SafetensorsWriter | null = null;
    let writerShard = -1;
    try {
      for (const rule of rules) {
        const values = applyTransform(rule, ckpt.readFloat32(rule.hf), config);
        rule.out.forEach((out, k) => {
          const plan = byName.get(out.name)!;
          if (plan.shard !== writerShard) {
            writer?.close();
            writerShard = plan.shard;
            const specs = outputs.filter((o) => o.shard === writerShard).map((o) => ({ name: o.name, dtype: storage, shape: o.shape }));
            writer = new SafetensorsWriter(path.join(tmpDir, shards[writerShard]), specs, { format: FORMAT_NAME });
          }
          // bf16 sources widened to float32 come back bit for bit (rounding a widened bf16 is exact).
          const data = storage === 'F16' ? f32ToF16(values[k]) : storage === 'BF16' ? f32ToBf16(values[k]) : values[k];
          const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
          writer!.write(out.name, bytes);
          tensors[out.name] = {
            file: shards[writerShard],
            offset: writer!.offsetOf(out.name),
            dtype: storage,
            shape: out.shape,
            sha256: createHash('sha256').update(bytes).digest('hex'),
          };
        });
        bytesDone += ckpt.info(rule.hf).byteLength;
        tensorsDone++;
        options.onProgress?.({ bytesDone, bytesTotal, tensorsDone, tensorsTotal: rules.length, elapsedMs: Date.now() - started });
      }
      (writer as SafetensorsWriter | null)?.close();
      writer = null;
    } finally {
      (writer as SafetensorsWriter | null)?.abort();
    }

    const manifest: Manifest = {
      format: FORMAT_NAME,
      format_version: FORMAT_VERSION,
      storage_dtype: dtype,
      source: {
        model_type: config.model_type,
        files: [...new Set(ckpt.names.map((n) => ckpt.shardOf(n)))].sort().map((name) => ({ name, bytes: fs.statSync(path.join(hfDir, name)).size })),
      },
      shards,
      tensors,
    };
    writeJson(path.join(tmpDir, 'config.json'), config);
    writeJson(path.join(tmpDir, 'tokenizer.json'), tokenizer.tokenizerJson);
    writeJson(path.join(tmpDir, 'tokenizer_config.json'), tokenizer.tokenizerConfig);
    // The manifest is written last: a directory without one is never a complete conversion.
    writeJson(path.join(tmpDir, MANIFEST_FILE), manifest);
    if (fs.existsSync(outDir)) fs.rmSync(outDir, { recursive: true, force: true });
    fs.renameSync(tmpDir, outDir);
    return { manifest, config };
  } catch (e) {
    fs.rmSync(tmpDir, { recursive: true, force: true });
    throw e;
  } finally {
    ckpt.close();
  }
}

/** Re-hashes every tensor of a converted directory against its manifest; returns the mismatches. */
export function verifyManifest(dir: string): string[] {
  const manifest = readManifest(dir);
  const problems: string[] = [];
  const files = new Map<string, number>();
  try {
    for (const [name, t] of Object.entries(manifest.tensors)) {
      let fd = files.get(t.file);
      if (fd === undefined) {
        fd = fs.openSync(path.join(dir, t.file), 'r');
        files.set(t.file, fd);
      }
      const bytes = Buffer.alloc(numElements(t.shape) * DTYPE_SIZE[t.dtype]);
      const n = fs.readSync(fd, bytes, 0, bytes.length, t.offset);
      const digest = createHash('sha256').update(bytes.subarray(0, n)).digest('hex');
      if (n !== bytes.length || digest !== t.sha256) problems.push(`${t.file}: tensor ${name}: checksum mismatch`);
    }
  } finally {
    files.forEach((fd) => fs.closeSync(fd));
  }
  return problems;
}

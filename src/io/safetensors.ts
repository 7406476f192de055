// safetensors reader and writer.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON
//   { "<tensor>": { "dtype": "BF16", "shape": [..], "data_offsets": [begin, end] }, "__metadata__": {..} }
// then the data region; offsets are relative to its start. Files can exceed 2 GiB, which Node cannot
// read whole, so tensors are read with positioned reads of their own byte span. Sharded checkpoints
// name each tensor's file in `model.safetensors.index.json` ({ "weight_map": { tensor: file } }).
import * as fs from 'fs';
import * as path from 'path';
import { readJsonFile } from '../json';

export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Bytes per element of every dtype this reader accepts in a header. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** The dtypes that convert to Float32Array. */
export const FLOAT_DTYPES: readonly DType[] = ['F32', 'F16', 'BF16'];

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const READ_CHUNK = 1 << 30;

export function numElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// ---- dtype conversion ----------------------------------------------------------------------------

/** bfloat16 is the top half of a float32: widening (exact) is a 16-bit shift; into `into` (its first src.length words) when given. */
export function bf16ToF32(src: Uint16Array, into?: Uint32Array): Float32Array {
  const out = into ?? new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
  return new Float32Array(out.buffer, out.byteOffset, src.length);
}

export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0)
      out[i] = sign * frac * 2 ** -24; // zero and subnormals
    else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** float32 -> bfloat16 bits, round to nearest even (as torch's .to(torch.bfloat16)), NaN kept quiet. */
export function f32ToBf16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40;
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** float32 -> float16 bits, round to nearest even, overflow to infinity, NaN kept. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    let e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      // Subnormal half (or zero): shift the mantissa with its implicit bit into place.
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      const half = 1 << (shift - 1);
      let m = mant >>> shift;
      const rest = mant & ((1 << shift) - 1);
      if (rest > half || (rest === half && m & 1)) m++;
      out[i] = sign | m;
      continue;
    }
    let m = mant >>> 13;
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
      m++;
      if (m === 0x400) {
        m = 0;
        e++;
        if (e >= 31) {
          out[i] = sign | 0x7c00;
          continue;
        }
      }
    }
    out[i] = sign | (e << 10) | m;
  }
  return out;
}

/** Raw little-endian bytes of a float tensor -> Float32Array (always a fresh, aligned copy). */
export function bytesToF32(bytes: Uint8Array, dtype: DType, what: string): Float32Array {
  const aligned = new Uint8Array(bytes); // copy: the source may be unaligned
  switch (dtype) {
    case 'F32':
      return new Float32Array(aligned.buffer);
    case 'BF16':
      return bf16ToF32(new Uint16Array(aligned.buffer));
    case 'F16':
      return f16ToF32(new Uint16Array(aligned.buffer));
    default:
      throw new Error(`${what}: dtype ${dtype} cannot be read as float32 (expected one of ${FLOAT_DTYPES.join(', ')})`);
  }
}

// ---- reader --------------------------------------------------------------------------------------

/** One safetensors file, opened for positioned reads. Call `close()` when done. */
export class SafetensorsFile {
  private constructor(
    readonly file: string,
    private fd: number | null,
    readonly fileSize: number,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    readonly metadata: Readonly<Record<string, string>>,
  ) {}

  /** Opens and validates the header; every problem is an error naming the file (and the tensor). */
  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new Error(`${file}: cannot open safetensors file: ${(e as Error).message}`, { cause: e });
    }
    try {
      const { tensors, metadata, size } = readHeader(fd, file);
      return new SafetensorsFile(file, fd, size, tensors, metadata);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  get names(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) throw new Error(`${this.file}: no tensor named '${name}'`);
    return t;
  }

  /** The tensor's raw bytes, read with one positioned read of its span. */
  readBytes(name: string): Buffer {
    return this.readInto(name, Buffer.allocUnsafe(this.info(name).byteLength));
  }

  /** The tensor's raw bytes read into `buf` (its first byteLength bytes); returns that part of it. */
  readInto<T extends Uint8Array>(name: string, buf: T): T {
    const t = this.info(name);
    if (this.fd === null) throw new Error(`${this.file}: file is closed`);
    if (buf.byteLength < t.byteLength) throw new Error(`${this.file}: tensor '${name}': ${t.byteLength} bytes do not fit a ${buf.byteLength}-byte buffer`);
    let done = 0;
    while (done < t.byteLength) {
      // One read is capped below 2 GiB by the OS interface; large tensors take several.
      const n = fs.readSync(this.fd, buf, done, Math.min(t.byteLength - done, READ_CHUNK), t.offset + done);
      if (n === 0) throw new Error(`${this.file}: tensor '${name}': unexpected end of file after ${done} of ${t.byteLength} bytes`);
      done += n;
    }
    return (buf.byteLength === t.byteLength ? buf : buf.subarray(0, t.byteLength)) as T;
  }

  /** The tensor widened to float32 (F32, F16 or BF16 on disk). */
  readFloat32(name: string): Float32Array {
    const t = this.info(name);
    if (!FLOAT_DTYPES.includes(t.dtype)) {
      throw new Error(`${this.file}: tensor '${name}': dtype ${t.dtype} cannot be read as float32 (expected one of ${FLOAT_DTYPES.join(', ')})`);
    }
    return bytesToF32(this.readBytes(name), t.dtype, `${this.file}: tensor '${name}'`);
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

function readHeader(fd: number, file: string): { tensors: Map<string, TensorInfo>; metadata: Record<string, string>; size: number } {
  const size = fs.fstatSync(fd).size;
  if (size < 8) throw new Error(`${file}: ${size} bytes is too short for a safetensors file (needs an 8-byte header length)`);
  const lenBuf = Buffer.alloc(8);
  fs.readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  if (headerLen > size - 8) {
    throw new Error(`${file}: header length ${headerLen} runs past the end of the file (${size} bytes): truncated or not safetensors`);
  }
  if (headerLen > MAX_HEADER_BYTES) throw new Error(`${file}: header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const headerBuf = Buffer.alloc(headerLen);
  fs.readSync(fd, headerBuf, 0, headerLen, 8);
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (e) {
    throw new Error(`${file}: header is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new Error(`${file}: header must be a JSON object`);
  }
  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = validateMetadata(value, file);
      continue;
    }
    const where = `${file}: tensor '${name}'`;
    if (value === null || typeof value !== 'object') throw new Error(`${where}: entry must be an object`);
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_SIZE)) {
      throw new Error(`${where}: unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(DTYPE_SIZE).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new Error(`${where}: shape ${JSON.stringify(shape)} must be a list of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[1] < offsets[0]) {
      throw new Error(`${where}: data_offsets ${JSON.stringify(offsets)} must be [begin, end] with 0 <= begin <= end`);
    }
    const [begin, end] = offsets as number[];
    const expected = numElements(shape) * DTYPE_SIZE[dtype as DType];
    if (end - begin !== expected) {
      throw new Error(`${where}: shape [${shape.join(', ')}] of ${dtype} needs ${expected} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`);
    }
    if (end > dataLen) {
      throw new Error(`${where}: data_offsets [${begin}, ${end}] run past the end of the data region (${dataLen} bytes): file truncated?`);
    }
    tensors.set(name, { name, dtype: dtype as DType, shape: shape as number[], offset: dataStart + begin, byteLength: end - begin });
  }
  // Spans must not overlap (zero-length tensors occupy nothing).
  const spans = [...tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1];
    if (spans[i].offset < prev.offset + prev.byteLength) {
      throw new Error(`${file}: tensors '${prev.name}' and '${spans[i].name}' have overlapping data spans`);
    }
  }
  return { tensors, metadata, size };
}

function validateMetadata(value: unknown, file: string): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error(`${file}: __metadata__ must be an object`);
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw new Error(`${file}: __metadata__ value for '${k}' must be a string`);
  }
  return value as Record<string, string>;
}

// ---- checkpoints (single file or sharded) --------------------------------------------------------

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/**
 * A checkpoint directory: `model.safetensors.index.json` + shards, or a single `model.safetensors`.
 * Tensor names are unique across shards; the index must agree with the shards' own headers.
 */
export class SafetensorsCheckpoint {
  private constructor(
    readonly dir: string,
    readonly shards: ReadonlyMap<string, SafetensorsFile>,
    private readonly location: ReadonlyMap<string, string>,
  ) {}

  static open(dir: string): SafetensorsCheckpoint {
    const indexPath = path.join(dir, INDEX_FILE);
    if (fs.existsSync(indexPath)) return SafetensorsCheckpoint.fromWeightMap(dir, readIndex(indexPath), indexPath);
    const single = path.join(dir, SINGLE_FILE);
    if (!fs.existsSync(single)) throw new Error(`${dir}: neither ${INDEX_FILE} nor ${SINGLE_FILE} found`);
    const f = SafetensorsFile.open(single);
    return new SafetensorsCheckpoint(dir, new Map([[SINGLE_FILE, f]]), new Map(f.names.map((n) => [n, SINGLE_FILE])));
  }

  /**
   * Opens the shards a weight map names (tensor -> shard file in `dir`) and checks both ways: every
   * mapped tensor is in its shard, every shard tensor is mapped. `indexName` names the map in errors.
   */
  static fromWeightMap(dir: string, weightMap: Record<string, string>, indexName: string): SafetensorsCheckpoint {
    const shards = new Map<string, SafetensorsFile>();
    const location = new Map<string, string>();
    try {
      for (const shard of new Set(Object.values(weightMap))) {
        const shardPath = path.join(dir, shard);
        if (!fs.existsSync(shardPath)) throw new Error(`${indexName}: names shard '${shard}', which does not exist in ${dir}`);
        shards.set(shard, SafetensorsFile.open(shardPath));
      }
      for (const [name, shard] of Object.entries(weightMap)) {
        if (!shards.get(shard)!.tensors.has(name)) {
          throw new Error(`${indexName}: tensor '${name}' is mapped to '${shard}', which has no such tensor`);
        }
        location.set(name, shard);
      }
      for (const [shard, f] of shards) {
        for (const name of f.names) {
          if (!location.has(name)) throw new Error(`${path.join(dir, shard)}: tensor '${name}' is not listed in ${path.basename(indexName)}`);
        }
      }
    } catch (e) {
      shards.forEach((s) => s.close());
      throw e;
    }
    return new SafetensorsCheckpoint(dir, shards, location);
  }

  get names(): string[] {
    return [...this.location.keys()];
  }

  has(name: string): boolean {
    return this.location.has(name);
  }

  /** The shard file name holding `name`. */
  shardOf(name: string): string {
    const shard = this.location.get(name);
    if (shard === undefined) throw new Error(`${this.dir}: checkpoint has no tensor named '${name}'`);
    return shard;
  }

  info(name: string): TensorInfo {
    return this.shards.get(this.shardOf(name))!.info(name);
  }

  readBytes(name: string): Buffer {
    return this.shards.get(this.shardOf(name))!.readBytes(name);
  }

  readInto<T extends Uint8Array>(name: string, buf: T): T {
    return this.shards.get(this.shardOf(name))!.readInto(name, buf);
  }

  readFloat32(name: string): Float32Array {
    return this.shards.get(this.shardOf(name))!.readFloat32(name);
  }

  close(): void {
    this.shards.forEach((s) => s.close());
  }
}

function readIndex(indexPath: string): Record<string, string> {
  const index = readJsonFile(indexPath);
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
    throw new Error(`${indexPath}: missing "weight_map" object`);
  }
  for (const [name, shard] of Object.entries(weightMap as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard === '..') {
      throw new Error(`${indexPath}: tensor '${name}' maps to ${JSON.stringify(shard)}, which is not a shard file name`);
    }
  }
  return weightMap as Record<string, string>;
}

// ---- writer --------------------------------------------------------------------------------------

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

/**
 * Streams one safetensors file: the header is fixed up front from the tensor specs, then each
 * tensor's bytes are written in the declared order, so memory stays bounded by one tensor. Writes go
 * to a temporary name beside the target and are renamed into place by `close()`; `abort()` removes
 * the temporary file.
 */
export class SafetensorsWriter {
  readonly tmpPath: string;
  private fd: number | null;
  private next = 0;
  private position: number;
  private readonly specs: TensorSpec[];
  private readonly offsets = new Map<string, number>();

  constructor(
    readonly file: string,
    specs: TensorSpec[],
    metadata?: Record<string, string>,
  ) {
    this.specs = specs;
    const header: Record<string, unknown> = {};
    if (metadata !== undefined && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
    let offset = 0;
    const names = new Set<string>();
    for (const s of specs) {
      if (names.has(s.name)) throw new Error(`${file}: tensor '${s.name}' declared twice`);
      names.add(s.name);
      const bytes = numElements(s.shape) * DTYPE_SIZE[s.dtype];
      header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + bytes] };
      this.offsets.set(s.name, offset);
      offset += bytes;
    }
    let json = JSON.stringify(header);
    // Pad with spaces so the data region starts 8-byte aligned (as the reference writer does).
    json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
    const headerBuf = Buffer.from(json, 'utf8');
    const lenBuf = Buffer.alloc(8);
    lenBuf.writeBigUInt64LE(BigInt(headerBuf.length));
    this.tmpPath = `${file}.tmp-${process.pid}`;
    this.fd = fs.openSync(this.tmpPath, 'w');
    fs.writeSync(this.fd, lenBuf);
    fs.writeSync(this.fd, headerBuf);
    this.position = 8 + headerBuf.length;
    for (const [name, begin] of this.offsets) this.offsets.set(name, this.position + begin);
  }

  /** Absolute byte offset of a declared tensor's data in the file. */
  offsetOf(name: string): number {
    const offset = this.offsets.get(name);
    if (offset === undefined) throw new Error(`${this.file}: no tensor '${name}' declared`);
    return offset;
  }

  /** Writes the next tensor's bytes; name and byte length must match the declared order. */
  write(name: string, data: Uint8Array): void {
    if (this.fd === null) throw new Error(`${this.file}: writer is closed`);
    const spec = this.specs[this.next];
    if (spec === undefined || spec.name !== name) {
      throw new Error(`${this.file}: expected tensor '${spec?.name ?? '(none left)'}' next, got '${name}'`);
    }
    const expected = numElements(spec.shape) * DTYPE_SIZE[spec.dtype];
    if (data.byteLength !== expected) throw new Error(`${this.file}: tensor '${name}' needs ${expected} bytes, got ${data.byteLength}`);
    let done = 0;
    while (done < data.byteLength) done += fs.writeSync(this.fd, data, done, data.byteLength - done, this.position + done);
    this.position += data.byteLength;
    this.next++;
  }

  /** Flushes and renames into place; every declared tensor must have been written. */
  close(): void {
    if (this.fd === null) throw new Error(`${this.file}: writer is closed`);
    if (this.next !== this.specs.length) {
      this.abort();
      throw new Error(`${this.file}: only ${this.next} of ${this.specs.length} tensors were written`);
    }
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = null;
    fs.renameSync(this.tmpPath, this.file);
  }

  abort(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
    fs.rmSync(this.tmpPath, { force: true });
  }
}

/** Writes a whole file from in-memory tensors (tests and small outputs). */
export function writeSafetensors(
  file: string,
  tensors: { name: string; dtype: DType; shape: number[]; data: Uint8Array | Float32Array }[],
  metadata?: Record<string, string>,
): void {
  const writer = new SafetensorsWriter(file, tensors, metadata);
  try {
    for (const t of tensors) writer.write(t.name, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    writer.close();
  } catch (e) {
    writer.abort();
    throw e;
  }
}

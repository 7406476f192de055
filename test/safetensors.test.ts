import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/backend';
import { bf16ToF32, f16ToF32, f32ToF16, SafetensorsCheckpoint, SafetensorsFile, SafetensorsWriter, writeSafetensors } from '../src/io/safetensors';
import { Weights } from '../src/io/weights';
import { checkpointDir, FIXTURES } from './helpers';
import { convertCheckpoint } from '../converter/convert';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-st-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A safetensors file from a header object and a data region, byte for byte as given. */
function rawFile(name: string, header: unknown, data: Buffer | number = 0, headerText?: string): string {
  const json = Buffer.from(headerText ?? JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const body = typeof data === 'number' ? Buffer.alloc(data) : data;
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([len, json, body]));
  return file;
}

describe('dtype conversion', () => {
  test('float16 bit patterns both ways', () => {
    const cases: [number, number][] = [
      [1.0, 0x3c00],
      [-2.0, 0xc000],
      [65504, 0x7bff],
      [2 ** -24, 0x0001],
      [2 ** -14, 0x0400],
      [0.5, 0x3800],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [0, 0x0000],
    ];
    const f32 = new Float32Array(cases.map((c) => c[0]));
    expect(Array.from(f32ToF16(f32))).toEqual(cases.map((c) => c[1]));
    expect(Array.from(f16ToF32(new Uint16Array(cases.map((c) => c[1]))))).toEqual(cases.map((c) => c[0]));
    expect(Number.isNaN(f16ToF32(new Uint16Array([0x7e00]))[0])).toBe(true);
    expect(f32ToF16(new Float32Array([NaN]))[0] & 0x7c00).toBe(0x7c00);
  });

  test('float16 rounds to nearest even and overflows to infinity', () => {
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0); a hair above rounds up.
    expect(f32ToF16(new Float32Array([1 + 2 ** -11]))[0]).toBe(0x3c00);
    expect(f32ToF16(new Float32Array([1 + 3 * 2 ** -11]))[0]).toBe(0x3c02);
    expect(f32ToF16(new Float32Array([1 + 2 ** -11 + 2 ** -20]))[0]).toBe(0x3c01);
    expect(f32ToF16(new Float32Array([65520]))[0]).toBe(0x7c00);
    expect(f32ToF16(new Float32Array([1 / 3]))[0]).toBe(0x3555);
    // Subnormal halfway case: 1.5 * 2^-24 rounds to even (2 * 2^-24).
    expect(f32ToF16(new Float32Array([1.5 * 2 ** -24]))[0]).toBe(0x0002);
  });

  test('bfloat16 widens by a shift', () => {
    expect(Array.from(bf16ToF32(new Uint16Array([0x3f80, 0xc040, 0x0000, 0x7f80])))).toEqual([1, -3, 0, Infinity]);
  });
});

describe('reader and writer', () => {
  test('round trip of F32, F16 and BF16 tensors, metadata and 8-byte alignment', () => {
    const file = path.join(dir, 'rt.safetensors');
    const a = new Float32Array([1.5, -2.25, 3.125, 0, 7, -8]);
    const b16 = new Uint16Array([0x3f80, 0x4000, 0xbf80]);
    const h16 = f32ToF16(new Float32Array([0.5, 1.0, -65504, 2 ** -24]));
    writeSafetensors(
      file,
      [
        { name: 'a', dtype: 'F32', shape: [2, 3], data: a },
        { name: 'b', dtype: 'BF16', shape: [3], data: new Uint8Array(b16.buffer) },
        { name: 'h', dtype: 'F16', shape: [2, 2], data: new Uint8Array(h16.buffer) },
      ],
      { format: 'pt' },
    );
    const headerLen = Number(fs.readFileSync(file).readBigUInt64LE(0));
    expect(headerLen % 8).toBe(0);
    const f = SafetensorsFile.open(file);
    try {
      expect(f.names).toEqual(['a', 'b', 'h']);
      expect(f.metadata).toEqual({ format: 'pt' });
      expect(f.info('a').shape).toEqual([2, 3]);
      expect(Array.from(f.readFloat32('a'))).toEqual(Array.from(a));
      expect(Array.from(f.readFloat32('b'))).toEqual([1, 2, -1]);
      expect(Array.from(f.readFloat32('h'))).toEqual([0.5, 1.0, -65504, 2 ** -24]);
      expect(() => f.readFloat32('nope')).toThrow(/rt\.safetensors: no tensor named 'nope'/);
    } finally {
      f.close();
    }
    expect(fs.readdirSync(dir)).toEqual(['rt.safetensors']); // no temporary file left
  });

  test('a streaming writer that is aborted or left incomplete leaves nothing behind', () => {
    const file = path.join(dir, 'w.safetensors');
    const w = new SafetensorsWriter(file, [
      { name: 'x', dtype: 'F32', shape: [2] },
      { name: 'y', dtype: 'F32', shape: [1] },
    ]);
    expect(() => w.write('y', new Uint8Array(4))).toThrow(/expected tensor 'x' next, got 'y'/);
    w.write('x', new Uint8Array(8));
    expect(() => w.close()).toThrow(/only 1 of 2 tensors were written/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test('reads a tensor past the 2 GiB mark with a positioned read (sparse file)', () => {
    const big = 2 ** 31 + 4096; // bytes of padding before the tensor we read
    const header = { pad: { dtype: 'U8', shape: [big], data_offsets: [0, big] }, x: { dtype: 'F32', shape: [3], data_offsets: [big, big + 12] } };
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const file = path.join(dir, 'big.safetensors');
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, Buffer.concat([len, json]), 0, 8 + json.length, 0);
    fs.writeSync(fd, Buffer.from(new Float32Array([4, 5, 6]).buffer), 0, 12, 8 + json.length + big);
    fs.closeSync(fd);
    expect(fs.statSync(file).size).toBeGreaterThan(2 ** 31);
    const f = SafetensorsFile.open(file);
    expect(Array.from(f.readFloat32('x'))).toEqual([4, 5, 6]);
    expect(() => f.readFloat32('pad')).toThrow(/dtype U8 cannot be read as float32/);
    f.close();
  });

  test('reads the bf16 shards that the Python oracle wrote, through the index', () => {
    const ckpt = SafetensorsCheckpoint.open(path.join(FIXTURES, 'checkpoints', 'tiny-internvl2'));
    try {
      expect(ckpt.shards.size).toBeGreaterThanOrEqual(2);
      const name = 'vision_model.embeddings.class_embedding';
      expect(ckpt.info(name).dtype).toBe('BF16');
      const v = ckpt.readFloat32(name);
      expect(v.length).toBe(ckpt.info(name).shape.reduce((a, b) => a * b, 1));
      expect(v.every(Number.isFinite)).toBe(true);
      // bf16 widened: the low 16 bits of every float32 are zero.
      expect(new Uint32Array(v.buffer).every((bits) => (bits & 0xffff) === 0)).toBe(true);
    } finally {
      ckpt.close();
    }
  });
});

describe('malformed files are rejected with a message naming the file and the problem', () => {
  const f32 = (shape: number[], begin: number) => ({ dtype: 'F32', shape, data_offsets: [begin, begin + 4 * shape.reduce((a, b) => a * b, 1)] });

  test.each([
    [
      'truncated data',
      () => rawFile('t.safetensors', { w: f32([4], 0) }, 8),
      /tensor 'w': data_offsets \[0, 16\] run past the end of the data region \(8 bytes\)/,
    ],
    [
      'header length past the end',
      () => {
        const file = path.join(dir, 'h.safetensors');
        const b = Buffer.alloc(16);
        b.writeBigUInt64LE(1000n);
        fs.writeFileSync(file, b);
        return file;
      },
      /h\.safetensors: header length 1000 runs past the end of the file \(16 bytes\)/,
    ],
    [
      'file shorter than the length prefix',
      () => {
        const file = path.join(dir, 's.safetensors');
        fs.writeFileSync(file, Buffer.alloc(3));
        return file;
      },
      /s\.safetensors: 3 bytes is too short/,
    ],
    ['invalid JSON', () => rawFile('j.safetensors', null, 0, '{"w": {"dtype": "F32",'), /j\.safetensors: header is not valid JSON/],
    ['header that is not an object', () => rawFile('a.safetensors', [1, 2]), /a\.safetensors: header must be a JSON object/],
    ['unknown dtype', () => rawFile('d.safetensors', { w: { dtype: 'F8_E9', shape: [1], data_offsets: [0, 1] } }, 1), /tensor 'w': unknown dtype "F8_E9"/],
    [
      'shape/size mismatch',
      () => rawFile('m.safetensors', { w: { dtype: 'BF16', shape: [2, 3], data_offsets: [0, 10] } }, 10),
      /tensor 'w': shape \[2, 3\] of BF16 needs 12 bytes but data_offsets \[0, 10\] span 10/,
    ],
    [
      'negative or reversed offsets',
      () => rawFile('r.safetensors', { w: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, 8),
      /tensor 'w': data_offsets \[8,4\] must be \[begin, end\]/,
    ],
    ['overlapping spans', () => rawFile('o.safetensors', { a: f32([2], 0), b: f32([2], 4) }, 12), /tensors 'a' and 'b' have overlapping data spans/],
    ['non-string metadata', () => rawFile('md.safetensors', { __metadata__: { n: 1 } }), /__metadata__ value for 'n' must be a string/],
  ])('%s', (_what, make, message) => {
    const file = make();
    expect(() => SafetensorsFile.open(file)).toThrow(message);
    expect(() => SafetensorsFile.open(file)).toThrow(path.basename(file));
  });

  function shardedCheckpoint(weightMap: Record<string, string>): string {
    writeSafetensors(path.join(dir, 'model-1.safetensors'), [{ name: 'a', dtype: 'F32', shape: [1], data: new Float32Array([1]) }]);
    writeSafetensors(path.join(dir, 'model-2.safetensors'), [{ name: 'b', dtype: 'F32', shape: [1], data: new Float32Array([2]) }]);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    return dir;
  }

  test('a valid sharded checkpoint opens', () => {
    const ckpt = SafetensorsCheckpoint.open(shardedCheckpoint({ a: 'model-1.safetensors', b: 'model-2.safetensors' }));
    expect(ckpt.names.sort()).toEqual(['a', 'b']);
    expect(Array.from(ckpt.readFloat32('b'))).toEqual([2]);
    expect(ckpt.shardOf('a')).toBe('model-1.safetensors');
    ckpt.close();
  });

  test('index naming a missing shard', () => {
    const d = shardedCheckpoint({ a: 'model-1.safetensors', b: 'model-3.safetensors' });
    expect(() => SafetensorsCheckpoint.open(d)).toThrow(/model\.safetensors\.index\.json: names shard 'model-3\.safetensors', which does not exist/);
  });

  test('index naming a missing tensor', () => {
    const d = shardedCheckpoint({ a: 'model-1.safetensors', b: 'model-2.safetensors', c: 'model-2.safetensors' });
    expect(() => SafetensorsCheckpoint.open(d)).toThrow(/tensor 'c' is mapped to 'model-2\.safetensors', which has no such tensor/);
  });

  test('a shard tensor missing from the index', () => {
    const d = shardedCheckpoint({ a: 'model-1.safetensors' });
    writeSafetensors(path.join(dir, 'model-1.safetensors'), [
      { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array([1]) },
      { name: 'z', dtype: 'F32', shape: [1], data: new Float32Array([3]) },
    ]);
    expect(() => SafetensorsCheckpoint.open(d)).toThrow(/model-1\.safetensors: tensor 'z' is not listed in model\.safetensors\.index\.json/);
  });

  test('index that is not JSON, or names a path instead of a shard', () => {
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"weight_map": ');
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(/model\.safetensors\.index\.json: not valid JSON/);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: '../x.safetensors' } }));
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(/maps to "\.\.\/x\.safetensors", which is not a shard file name/);
  });

  test('a directory with no checkpoint', () => {
    expect(() => SafetensorsCheckpoint.open(dir)).toThrow(/neither model\.safetensors\.index\.json nor model\.safetensors found/);
  });
});

describe('the weight store', () => {
  test('loading opens each shard once and reads no byte of it twice', async () => {
    await initBackend({ backend: 'cpu', log: null });
    const out = path.join(dir, 'model');
    convertCheckpoint(checkpointDir('tiny-internvl2'), out, { shardSize: 256 << 10 });
    const shards = fs
      .readdirSync(out)
      .filter((f) => f.endsWith('.safetensors'))
      .map((f) => path.join(out, f));
    expect(shards.length).toBeGreaterThan(1);
    const opened = new Map<number, string>();
    const openCount = new Map<string, number>();
    const reads = new Map<string, [number, number][]>();
    // The module object itself (the `import * as` namespace above has fixed properties).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('fs') as typeof fs;
    const realOpen = nodeFs.openSync;
    const realRead = nodeFs.readSync;
    const openSpy = jest.spyOn(nodeFs, 'openSync').mockImplementation(((file: fs.PathLike, ...rest: unknown[]) => {
      const fd = (realOpen as (...a: unknown[]) => number)(file, ...rest);
      opened.set(fd, String(file));
      openCount.set(String(file), (openCount.get(String(file)) ?? 0) + 1);
      return fd;
    }) as typeof fs.openSync);
    const readSpy = jest.spyOn(nodeFs, 'readSync').mockImplementation(((
      fd: number,
      buffer: NodeJS.ArrayBufferView,
      offset: number,
      length: number,
      position: number,
    ) => {
      const n = realRead(fd, buffer, offset, length, position);
      const file = opened.get(fd);
      if (file) reads.set(file, [...(reads.get(file) ?? []), [position, position + n]]);
      return n;
    }) as typeof fs.readSync);
    let weights: Weights;
    try {
      weights = Weights.load(out);
    } finally {
      openSpy.mockRestore();
      readSpy.mockRestore();
    }
    for (const shard of shards) {
      expect(openCount.get(shard)).toBe(1);
      const spans = (reads.get(shard) ?? []).sort((a, b) => a[0] - b[0]);
      spans.slice(1).forEach(([start], i) => expect(start).toBeGreaterThanOrEqual(spans[i][1]));
      expect(spans.reduce((n, [a, b]) => n + b - a, 0)).toBe(fs.statSync(shard).size);
    }
    weights.dispose();
  });

  test('a tensor held transposed replaces the original (no second copy) and get() refuses it', async () => {
    await initBackend({ backend: 'cpu', log: null });
    const before = tf.memory().numTensors;
    const w = Weights.fromTensors('mem', new Map([['l.weight', tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3])]]));
    const t = w.storeTransposed('l.weight');
    expect(t.shape).toEqual([3, 2]);
    expect(Array.from((t as tf.Tensor2D).dataSync())).toEqual([1, 4, 2, 5, 3, 6]);
    expect(w.storeTransposed('l.weight')).toBe(t);
    expect(tf.memory().numTensors).toBe(before + 1);
    expect(w.byteLength).toBe(24);
    expect(() => w.get('l.weight')).toThrow(/'l\.weight' is held transposed \(storeTransposed\)/);
    w.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

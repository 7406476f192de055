import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertCheckpoint, verifyManifest } from '../converter/convert';
import { main as cliMain } from '../converter/cli';
import { tensorRules } from '../converter/names';
import { loadConfig } from '../src/config';
import { DType, f32ToF16, SafetensorsCheckpoint, SafetensorsFile, writeSafetensors } from '../src/io/safetensors';
import { openWeights } from '../src/io/weights';
import { captureOutput, checkpointDir, readJson } from './helpers';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-conv-'));
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function filesOf(dir: string): Map<string, Buffer> {
  return new Map(
    fs
      .readdirSync(dir)
      .sort()
      .map((f) => [f, fs.readFileSync(path.join(dir, f))]),
  );
}

interface RawTensor {
  dtype: DType;
  shape: number[];
  data: Buffer;
}

/** Copies a fixture checkpoint into `dest`, letting `edit` change its tensors and config; writes 2 shards + index. */
function editedCheckpoint(name: string, dest: string, edit: (tensors: Map<string, RawTensor>, config: Record<string, unknown>) => void): string {
  const src = checkpointDir(name);
  fs.mkdirSync(dest, { recursive: true });
  for (const f of fs.readdirSync(src)) {
    if (!f.endsWith('.safetensors') && f !== 'model.safetensors.index.json') fs.copyFileSync(path.join(src, f), path.join(dest, f));
  }
  const ckpt = SafetensorsCheckpoint.open(src);
  const tensors = new Map<string, RawTensor>();
  for (const n of ckpt.names) tensors.set(n, { dtype: ckpt.info(n).dtype, shape: ckpt.info(n).shape, data: ckpt.readBytes(n) });
  ckpt.close();
  const config = readJson(path.join(dest, 'config.json'));
  edit(tensors, config);
  fs.writeFileSync(path.join(dest, 'config.json'), JSON.stringify(config, null, 2));
  const names = [...tensors.keys()];
  const half = Math.ceil(names.length / 2);
  const weightMap: Record<string, string> = {};
  [names.slice(0, half), names.slice(half)].forEach((group, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeSafetensors(
      path.join(dest, file),
      group.map((n) => ({ name: n, ...tensors.get(n)! })),
    );
    group.forEach((n) => (weightMap[n] = file));
  });
  fs.writeFileSync(path.join(dest, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return dest;
}

function randomBf16(shape: number[], seed: number): RawTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Uint16Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const f = new Float32Array([(s / 2147483648 - 0.5) * 0.2]);
    out[i] = new Uint16Array(f.buffer)[1];
  }
  return { dtype: 'BF16', shape, data: Buffer.from(out.buffer) };
}

describe.each(['tiny-internvl2', 'tiny-internvit-rms'])('converting %s', (name) => {
  test('succeeds, is byte-identical when repeated, and its manifest verifies', () => {
    const a = path.join(tmp, 'a');
    const b = path.join(tmp, 'b');
    convertCheckpoint(checkpointDir(name), a);
    convertCheckpoint(checkpointDir(name), b);
    const fa = filesOf(a);
    const fb = filesOf(b);
    expect([...fa.keys()]).toEqual(['config.json', 'manifest.json', 'model-00001-of-00001.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    for (const [f, bytes] of fa) expect({ f, same: bytes.equals(fb.get(f)!) }).toEqual({ f, same: true });
    expect(verifyManifest(a)).toEqual([]);
    expect(fs.readdirSync(tmp).sort()).toEqual(['a', 'b']); // no temporary directories left
  });

  test('every source tensor lands under its project name with the transform applied', () => {
    const out = path.join(tmp, 'out');
    convertCheckpoint(checkpointDir(name), out, { shardSize: 200_000 });
    const config = loadConfig(out);
    const src = SafetensorsCheckpoint.open(checkpointDir(name));
    const dst = openWeights(out).weights;
    try {
      expect(dst.shards.size).toBeGreaterThan(1); // the shard-size option splits the output
      const rules = tensorRules(config);
      expect(rules.map((r) => r.hf).sort()).toEqual(src.names.sort());
      const outNames = rules.flatMap((r) => r.out.map((o) => o.name));
      expect(outNames.sort()).toEqual(dst.names.sort());
      // Expected values computed here, independently of the converter's transform code: a copy is the
      // same values, a linear weight [out, in] becomes its transpose, the patch conv [C, ch, p, p]
      // becomes [ch*p*p, C]; the packed wqkv has its own test below.
      for (const rule of rules) {
        rule.out.forEach((o) => {
          expect(dst.info(o.name).shape).toEqual(o.shape);
          expect(dst.info(o.name).dtype).toBe('F32');
        });
        if (rule.transform === 'wqkv') continue;
        const data = src.readFloat32(rule.hf);
        const expected = new Float32Array(data.length);
        if (rule.transform === 'copy') expected.set(data);
        else if (rule.transform === 'linear') {
          const [rows, cols] = rule.hfShape;
          for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) expected[c * rows + r] = data[r * cols + c];
        } else {
          const [C, ch, p] = rule.hfShape;
          const per = ch * p * p; // each output channel's (c, kh, kw) block is contiguous in the source
          for (let o = 0; o < C; o++) for (let j = 0; j < per; j++) expected[j * C + o] = data[o * per + j];
        }
        const actual = dst.readFloat32(rule.out[0].name);
        expect({ name: rule.out[0].name, same: Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(Buffer.from(expected.buffer)) }).toEqual(
          { name: rule.out[0].name, same: true },
        );
      }
      // Spot checks of the layout, written independently of the transform code.
      const C = config.vision.hidden_size;
      const qkv = src.readFloat32('vision_model.encoder.layers.0.attn.qkv.weight'); // [3C, C]
      const qkvT = dst.readFloat32('vision.layers.0.attn.qkv.weight'); // [C, 3C]
      for (const [o, i] of [
        [0, 0],
        [5, 3],
        [3 * C - 1, C - 1],
        [C + 2, 7],
      ])
        expect(qkvT[i * 3 * C + o]).toBe(qkv[o * C + i]);
      const p = config.vision.patch_size;
      const conv = src.readFloat32('vision_model.embeddings.patch_embedding.weight'); // [C, 3, p, p]
      const flat = dst.readFloat32('vision.embeddings.patch.weight'); // [3*p*p, C]
      const [c, ch, kh, kw] = [C - 1, 2, 3, p - 1];
      expect(flat[(ch * p * p + kh * p + kw) * C + c]).toBe(conv[((c * 3 + ch) * p + kh) * p + kw]);
    } finally {
      src.close();
      dst.close();
    }
  });
});

test('the packed InternLM2 wqkv splits by the GQA layout: kv head h serves query heads hG..hG+G-1', () => {
  const out = path.join(tmp, 'out');
  convertCheckpoint(checkpointDir('tiny-internvl2'), out);
  const config = loadConfig(out);
  const { num_attention_heads: H, num_key_value_heads: KV, head_dim: hd, hidden_size: D } = config.llm;
  const G = H / KV;
  const src = SafetensorsCheckpoint.open(checkpointDir('tiny-internvl2'));
  const dst = openWeights(out).weights;
  try {
    const wqkv = src.readFloat32('language_model.model.layers.1.attention.wqkv.weight'); // [(H+2KV)*hd, D]
    const q = dst.readFloat32('llm.layers.1.attn.q.weight'); // [D, H*hd]
    const k = dst.readFloat32('llm.layers.1.attn.k.weight'); // [D, KV*hd]
    const v = dst.readFloat32('llm.layers.1.attn.v.weight');
    const srcRow = (block: number, r: number) => wqkv.subarray((block * hd + r) * D, (block * hd + r + 1) * D);
    for (let j = 0; j < H; j++) {
      const h = Math.floor(j / G);
      for (let r = 0; r < hd; r++) {
        const row = srcRow(h * (G + 2) + (j % G), r);
        for (let i = 0; i < D; i += 7) expect(q[i * H * hd + j * hd + r]).toBe(row[i]);
      }
    }
    for (let h = 0; h < KV; h++) {
      for (let r = 0; r < hd; r++) {
        const kRow = srcRow(h * (G + 2) + G, r);
        const vRow = srcRow(h * (G + 2) + G + 1, r);
        for (let i = 0; i < D; i += 5) {
          expect(k[i * KV * hd + h * hd + r]).toBe(kRow[i]);
          expect(v[i * KV * hd + h * hd + r]).toBe(vRow[i]);
        }
      }
    }
  } finally {
    src.close();
    dst.close();
  }
});

test('float16 storage holds the float32 values rounded to half precision', () => {
  const out = path.join(tmp, 'f16');
  const { manifest } = convertCheckpoint(checkpointDir('tiny-internvl2'), out, { dtype: 'float16' });
  expect(manifest.storage_dtype).toBe('float16');
  expect(verifyManifest(out)).toEqual([]);
  const f32 = path.join(tmp, 'f32');
  convertCheckpoint(checkpointDir('tiny-internvl2'), f32);
  const a = openWeights(out).weights;
  const b = openWeights(f32).weights;
  try {
    const name = 'llm.layers.0.mlp.down.weight';
    expect(a.info(name).dtype).toBe('F16');
    expect(Buffer.from(a.readBytes(name)).equals(Buffer.from(f32ToF16(b.readFloat32(name)).buffer))).toBe(true);
  } finally {
    a.close();
    b.close();
  }
});

test('the normalized config spells out every field, with derived values', () => {
  const out = path.join(tmp, 'out');
  convertCheckpoint(checkpointDir('tiny-internvl2'), out);
  const hf = readJson<{ vision_config: Record<string, number>; llm_config: Record<string, unknown> }>(
    path.join(checkpointDir('tiny-internvl2'), 'config.json'),
  );
  const c = loadConfig(out);
  expect(c.model_type).toBe('internvl_chat');
  expect(c.num_image_token).toBe((hf.vision_config.image_size / hf.vision_config.patch_size / 2) ** 2);
  expect(c.projector).toEqual({ input_size: hf.vision_config.hidden_size * 4, hidden_size: hf.llm_config.hidden_size, layer_norm_eps: 1e-5 });
  expect(c.llm.head_dim * c.llm.num_attention_heads).toBe(c.llm.hidden_size);
  expect(c.llm.rope_scaling).toEqual({ type: 'dynamic', factor: 2 });
  expect(c.pvc).toBeNull();
  expect(c.system_message).toHaveLength(59);
});

describe('a PVC checkpoint', () => {
  function pvcCheckpoint(dest: string, temporalLayers: number[], misname = false): string {
    return editedCheckpoint('tiny-internvl2', dest, (tensors, config) => {
      Object.assign(config, {
        model_type: 'pvc_internvl',
        use_temporal: true,
        image_repeat_time: 4,
        video_repeat_time: 1,
        tile_repeat_way: null,
        mlp_add_ops: null,
      });
      const C = (config.vision_config as { hidden_size: number }).hidden_size;
      const layers = (config.vision_config as { num_hidden_layers: number }).num_hidden_layers;
      let seed = 1;
      const add = (n: string, shape: number[]) => tensors.set(n, randomBf16(shape, seed++));
      add('vision_model.time_embedder.mlp.0.weight', [C, 256]);
      add('vision_model.time_embedder.mlp.0.bias', [C]);
      add('vision_model.time_embedder.mlp.2.weight', [C, C]);
      add('vision_model.time_embedder.mlp.2.bias', [C]);
      for (let i = 0; i < layers; i++) {
        add(`vision_model.encoder.layers.${i}.adaLN_modulation.1.weight`, [4 * C, C]);
        add(`vision_model.encoder.layers.${i}.adaLN_modulation.1.bias`, [4 * C]);
      }
      for (const i of temporalLayers) {
        const p = `vision_model.encoder.layers.${i}.`;
        add(p + 'temporal_attn.qkv.weight', [3 * C, C]);
        add(p + 'temporal_attn.qkv.bias', [3 * C]);
        add(p + (misname ? 'temporal_attn.out_proj.weight' : 'temporal_attn.proj.weight'), [C, C]);
        add(p + 'temporal_attn.proj.bias', [C]);
        add(p + 'norm_t.weight', [C]);
        add(p + 'norm_t.bias', [C]);
        add(p + 'ls_t', [C]);
      }
    });
  }

  test('converts with AdaLN and temporal layers read off the tensors and recorded in the config', () => {
    const src = pvcCheckpoint(path.join(tmp, 'hf'), [1, 2]);
    const out = path.join(tmp, 'out');
    convertCheckpoint(src, out);
    const c = loadConfig(out);
    expect(c.pvc).toEqual({
      use_temporal: true,
      image_repeat_time: 4,
      video_repeat_time: 1,
      adaln_layers: [0, 1, 2],
      temporal_layers: [1, 2],
      time_embed_freq_dim: 256,
    });
    const dst = openWeights(out).weights;
    try {
      expect(dst.info('vision.time_embedder.fc1.weight').shape).toEqual([256, c.vision.hidden_size]);
      expect(dst.info('vision.layers.0.adaln.weight').shape).toEqual([c.vision.hidden_size, 4 * c.vision.hidden_size]);
      expect(dst.has('vision.layers.2.temporal.qkv.weight')).toBe(true);
      expect(dst.has('vision.layers.0.temporal.qkv.weight')).toBe(false);
    } finally {
      dst.close();
    }
  });

  test('whose temporal tensors do not match the name table is refused, naming them', () => {
    const src = pvcCheckpoint(path.join(tmp, 'hf'), [2], true);
    const out = path.join(tmp, 'out');
    expect(() => convertCheckpoint(src, out)).toThrow(
      /missing: vision_model\.encoder\.layers\.2\.temporal_attn\.proj\.weight \(expected shape \[64,64\]\)[\s\S]*unknown: vision_model\.encoder\.layers\.2\.temporal_attn\.out_proj\.weight BF16 \[64,64\]/,
    );
    expect(fs.existsSync(out)).toBe(false);
  });

  test('with an unsupported tile_repeat_way or mlp_add_ops is refused, naming the value', () => {
    const src = pvcCheckpoint(path.join(tmp, 'hf'), [2]);
    const cfgFile = path.join(src, 'config.json');
    const cfg = readJson(cfgFile);
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, tile_repeat_way: 'frame_major' }));
    expect(() => convertCheckpoint(src, path.join(tmp, 'out'))).toThrow(/tile_repeat_way = "frame_major" is not supported/);
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, mlp_add_ops: 'conv' }));
    expect(() => convertCheckpoint(src, path.join(tmp, 'out'))).toThrow(/mlp_add_ops = "conv" is not supported/);
  });
});

describe('bad checkpoints fail with a message naming the problem and leave no output', () => {
  const cases: [string, (dir: string) => string, RegExp][] = [
    [
      'missing shard',
      (d) => {
        const dir = editedCheckpoint('tiny-internvl2', d, () => {});
        fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
        return dir;
      },
      /names shard 'model-00002-of-00002\.safetensors', which does not exist/,
    ],
    [
      'truncated shard',
      (d) => {
        const dir = editedCheckpoint('tiny-internvl2', d, () => {});
        const f = path.join(dir, 'model-00001-of-00002.safetensors');
        fs.truncateSync(f, fs.statSync(f).size - 100);
        return dir;
      },
      /model-00001-of-00002\.safetensors: tensor '.*': data_offsets \[\d+, \d+\] run past the end of the data region/,
    ],
    [
      'tensor missing',
      (d) => editedCheckpoint('tiny-internvl2', d, (t) => t.delete('vision_model.encoder.layers.1.ls2')),
      /missing: vision_model\.encoder\.layers\.1\.ls2 \(expected shape \[64\]\)/,
    ],
    [
      'unknown extra tensor',
      (d) => editedCheckpoint('tiny-internvl2', d, (t) => t.set('vision_model.encoder.layers.0.attn.extra', randomBf16([4], 3))),
      /unknown: vision_model\.encoder\.layers\.0\.attn\.extra BF16 \[4\]/,
    ],
    [
      'shape that contradicts config.json',
      (d) =>
        editedCheckpoint('tiny-internvl2', d, (_t, c) => {
          (c.llm_config as Record<string, number>).intermediate_size = 300;
        }),
      /mismatch: language_model\.model\.layers\.0\.feed_forward\.w1\.weight: shape \[256,128\] but config\.json implies \[300,128\]/,
    ],
    [
      'unsupported dtype',
      (d) =>
        editedCheckpoint('tiny-internvl2', d, (t) => {
          const ls = t.get('vision_model.encoder.layers.0.ls1')!;
          t.set('vision_model.encoder.layers.0.ls1', { dtype: 'I32', shape: ls.shape, data: Buffer.alloc(ls.shape[0] * 4) });
        }),
      /mismatch: vision_model\.encoder\.layers\.0\.ls1: dtype I32 is not supported/,
    ],
    [
      'unknown model_type',
      (d) =>
        editedCheckpoint('tiny-internvl2', d, (_t, c) => {
          c.model_type = 'llava';
        }),
      /model_type = "llava" is not supported/,
    ],
    [
      'unsupported vision norm',
      (d) =>
        editedCheckpoint('tiny-internvl2', d, (_t, c) => {
          (c.vision_config as Record<string, string>).norm_type = 'batch_norm';
        }),
      /vision_config\.norm_type = "batch_norm" is not supported/,
    ],
  ];

  test.each(cases)('%s', (_what, make, message) => {
    const src = make(path.join(tmp, 'hf'));
    const out = path.join(tmp, 'out');
    expect(() => convertCheckpoint(src, out)).toThrow(message);
    expect(fs.readdirSync(tmp)).toEqual(['hf']);
  });

  test('an existing output directory is kept unless overwriting is asked for', () => {
    const out = path.join(tmp, 'out');
    fs.mkdirSync(out);
    expect(() => convertCheckpoint(checkpointDir('tiny-internvl2'), out)).toThrow(/already exists; remove it or pass --overwrite/);
    convertCheckpoint(checkpointDir('tiny-internvl2'), out, { overwrite: true });
    expect(fs.existsSync(path.join(out, 'manifest.json'))).toBe(true);
  });
});

describe('the pvc-convert command', () => {
  const output = captureOutput();

  test('--audit prints the inventory and writes nothing', () => {
    expect(cliMain([checkpointDir('tiny-internvl2'), '--audit'])).toBe(0);
    expect(output.stdout()).toMatch(/tensors: 69 known, 0 unknown, 0 missing, 0 mismatched/);
    expect(output.stdout()).toMatch(/bytes by dtype: BF16 1\.4 MiB/);
    // Every tensor is listed, as the README says.
    const listed = output
      .stdout()
      .split('\n')
      .filter((l) => /^ {2}known: /.test(l));
    expect(listed).toHaveLength(69);
    expect(output.stdout()).toMatch(/ {2}known: vision_model\.embeddings\.patch_embedding\.weight BF16 \[\d+,3,14,14\]/);
  });

  test('--audit on a broken checkpoint lists the problems and exits 1', () => {
    const src = editedCheckpoint('tiny-internvl2', path.join(tmp, 'hf'), (t) => t.delete('mlp1.3.bias'));
    expect(cliMain([src, '--audit'])).toBe(1);
    expect(output.stdout()).toMatch(/1 missing/);
    expect(output.stdout()).toMatch(/missing: mlp1\.3\.bias/);
  });

  test('converts, reporting the rate; bad arguments are usage errors', () => {
    expect(cliMain([checkpointDir('tiny-internvl2'), path.join(tmp, 'out'), '--dtype', 'float16'])).toBe(0);
    expect(output.stderr()).toMatch(/wrote 73 tensors in 1 shard\(s\) from 1\.4 MiB in [\d.]+s/);
    expect(cliMain([checkpointDir('tiny-internvl2'), path.join(tmp, 'x'), '--dtype', 'int8'])).toBe(2);
    expect(output.stderr()).toMatch(/pvc-convert: --dtype expects float32, float16 or bfloat16, not int8\nusage: pvc-convert/);
    expect(cliMain([checkpointDir('tiny-internvl2'), path.join(tmp, 'x'), '--shard-size', '1e3.5'])).toBe(2);
    expect(output.stderr()).toMatch(/pvc-convert: --shard-size expects an integer >= 1, not 1e3\.5/);
    expect(cliMain([checkpointDir('tiny-internvl2'), path.join(tmp, 'x'), '--dtype', 'float16', '--dtype', 'float32'])).toBe(2);
    expect(output.stderr()).toMatch(/pvc-convert: --dtype was given more than once/);
    expect(cliMain([checkpointDir('tiny-internvl2'), path.join(tmp, 'x'), '--fast'])).toBe(2);
    expect(output.stderr()).toMatch(/pvc-convert: unknown option --fast/);
    expect(fs.existsSync(path.join(tmp, 'x'))).toBe(false);
    expect(cliMain([path.join(tmp, 'nope'), path.join(tmp, 'y')])).toBe(2);
    expect(output.stderr()).toMatch(/nope: no such directory/);
  });
});

test('a converted model directory reads back through SafetensorsFile with absolute manifest offsets', () => {
  const out = path.join(tmp, 'out');
  const { manifest } = convertCheckpoint(checkpointDir('tiny-internvl2'), out);
  const entry = manifest.tensors['llm.norm.weight'];
  const f = SafetensorsFile.open(path.join(out, entry.file));
  try {
    expect(f.info('llm.norm.weight').offset).toBe(entry.offset);
  } finally {
    f.close();
  }
});

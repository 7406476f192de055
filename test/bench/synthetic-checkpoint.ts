// Writes a synthetic HF InternVL2 checkpoint of real layer widths (InternViT-300M, InternLM2-7B
// layers, vocab 92553) with a chosen number of LLM layers, for measuring pvc-convert's memory and
// speed on multi-GB input; with --pvc, PVC-InternVL2-8B's layout as our spec has it (model_type
// pvc_internvl, downsample 0.25, image_repeat_time 4, AdaLN in every ViT layer, temporal attention in
// the last PVC_TEMPORAL_LAYERS: a guess, ../shared/design/pvc.md). With --llm-layers 32 it is the full
// 8B. Values are random bf16 (seeded) at 1/sqrt(fan_in). Nothing here is committed output.
//
//   npx tsx test/bench/synthetic-checkpoint.ts <out-dir> [--llm-layers N] [--pvc]   (N=3: about 3.6 GB; 32 --pvc: ~16.5 GB)
import * as fs from 'fs';
import * as path from 'path';
import { normalizeHFConfig, PVCLayers } from '../../converter/hf_config';
import { tensorRules } from '../../converter/names';
import { numElements, SafetensorsWriter } from '../../src/io/safetensors';
import { checkpointDir } from '../helpers';

const SHARD_BYTES = 1 << 30;

/** ViT layers with PVC's temporal attention in the synthetic PVC checkpoint (the last ones, per the spec). */
export const PVC_TEMPORAL_LAYERS = 4;

export function syntheticConfig(llmLayers: number, pvc = false): Record<string, unknown> {
  const pvcFields = pvc
    ? {
        model_type: 'pvc_internvl',
        architectures: ['PVCInternVLChatModel'],
        downsample_ratio: 0.25,
        use_temporal: true,
        image_repeat_time: 4,
        video_repeat_time: 1,
      }
    : {};
  return {
    model_type: 'internvl_chat',
    template: 'internlm2-chat',
    select_layer: -1,
    force_image_size: 448,
    downsample_ratio: 0.5,
    ps_version: 'v2',
    dynamic_image_size: true,
    use_thumbnail: true,
    min_dynamic_patch: 1,
    max_dynamic_patch: 12,
    architectures: ['InternVLChatModel'],
    vision_config: {
      hidden_size: 1024,
      intermediate_size: 4096,
      num_attention_heads: 16,
      num_hidden_layers: 24,
      image_size: 448,
      patch_size: 14,
      num_channels: 3,
      norm_type: 'layer_norm',
      layer_norm_eps: 1e-6,
      hidden_act: 'gelu',
      qkv_bias: true,
      qk_normalization: false,
    },
    llm_config: {
      architectures: ['InternLM2ForCausalLM'],
      vocab_size: 92553,
      hidden_size: 4096,
      intermediate_size: 14336,
      num_hidden_layers: llmLayers,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      hidden_act: 'silu',
      rms_norm_eps: 1e-5,
      rope_theta: 1000000,
      rope_scaling: { type: 'dynamic', factor: 2.0 },
      max_position_embeddings: 32768,
      bias: false,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
      pad_token_id: 2,
    },
    ...pvcFields,
  };
}

/** Which ViT layers carry PVC's tensors in the synthetic PVC checkpoint. */
export function syntheticPVCLayers(hf: Record<string, unknown>): PVCLayers | undefined {
  if (hf.model_type !== 'pvc_internvl') return undefined;
  const n = (hf.vision_config as { num_hidden_layers: number }).num_hidden_layers;
  const all = Array.from({ length: n }, (_, i) => i);
  return { adaln_layers: all, temporal_layers: all.slice(n - PVC_TEMPORAL_LAYERS) };
}

/**
 * Random bf16 values uniform in ±scale (xorshift; fast enough for GBs): weights at 1/sqrt(fan_in) keep
 * activations O(1) like a trained model's, so timings see ordinary numbers (no overflow, no NaN).
 */
function fillRandomBf16(out: Uint16Array, seed: number, scale: number): void {
  let x = seed | 1;
  const f = new Float32Array(1);
  const u = new Uint16Array(f.buffer);
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    f[0] = ((x >>> 0) / 4294967296 - 0.5) * 2 * scale;
    out[i] = u[1];
  }
}

/** Scale of a tensor's random values: norms and layer scales near 1, matrices 1/sqrt(fan_in), the rest small. */
function scaleOf(name: string, shape: number[]): number {
  if (shape.length >= 2) return 1 / Math.sqrt(shape.slice(1).reduce((a, b) => a * b, 1));
  if ((/norm|ls[12]$/.test(name) && name.endsWith('weight')) || /ls[12]$/.test(name)) return 1;
  return 0.1;
}

/** Ids of the tiny fixtures' tokenizer: its sentencepiece pieces, then InternVL's added tokens (<img> ... </box>). */
const TEST_TOKENIZER_IDS = 1015;

/** A protobuf length-delimited field: tag, varint length, bytes. */
function protoBytes(field: number, bytes: Uint8Array): Buffer {
  const len: number[] = [];
  for (let n = bytes.length; ; n >>>= 7) {
    len.push(n > 0x7f ? (n & 0x7f) | 0x80 : n);
    if (n <= 0x7f) break;
  }
  return Buffer.concat([Buffer.from([(field << 3) | 2, ...len]), bytes]);
}

/**
 * The tiny fixtures' sentencepiece model with pieces appended up to `vocabSize` ids, so that every id
 * a full-size model's head can produce decodes (sentencepiece, like our tokenizer, refuses an id past
 * its pieces). The ids of the added tokens get a piece each (the added tokens rename them), then
 * "<extra_N>" pieces: NORMAL, the lowest score, no merge forms them, so text never encodes to them.
 * Appended ModelProto.pieces entries (field 1) follow the model's other fields, which protobuf allows.
 */
export function syntheticTokenizerModel(vocabSize: number): Buffer {
  const base = fs.readFileSync(path.join(checkpointDir('tiny-internvl2'), 'tokenizer.model'));
  if (vocabSize <= TEST_TOKENIZER_IDS) return base;
  const score = Buffer.alloc(5);
  score[0] = (2 << 3) | 5;
  score.writeFloatLE(-1e9, 1);
  const pieces: Buffer[] = [];
  const pieceCount = TEST_TOKENIZER_IDS - 9; // the 9 added tokens of added_tokens.json follow the pieces
  for (let id = pieceCount; id < vocabSize; id++) {
    const text = Buffer.from(id < TEST_TOKENIZER_IDS ? `<added_${id}>` : `<extra_${id}>`);
    pieces.push(protoBytes(1, Buffer.concat([protoBytes(1, text), score, Buffer.from([(3 << 3) | 0, 1])])));
  }
  return Buffer.concat([base, ...pieces]);
}

export function writeSyntheticCheckpoint(outDir: string, hf: Record<string, unknown>): number {
  fs.mkdirSync(outDir, { recursive: true });
  // Floats that are whole numbers keep their ".0" (upstream's config validation wants a float factor).
  fs.writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(hf, null, 2).replace(/"factor": (\d+)([,\n])/g, '"factor": $1.0$2'));
  for (const f of ['tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json']) {
    fs.copyFileSync(path.join(checkpointDir('tiny-internvl2'), f), path.join(outDir, f));
  }
  const vocabSize = (hf.llm_config as { vocab_size?: number } | undefined)?.vocab_size ?? TEST_TOKENIZER_IDS;
  fs.writeFileSync(path.join(outDir, 'tokenizer.model'), syntheticTokenizerModel(vocabSize));
  const rules = tensorRules(normalizeHFConfig(hf, 'synthetic config', syntheticPVCLayers(hf)));
  // Group into shards of about SHARD_BYTES, in rule order.
  const groups: { name: string; shape: number[] }[][] = [[]];
  let used = 0;
  for (const r of rules) {
    const bytes = numElements(r.hfShape) * 2;
    if (used > 0 && used + bytes > SHARD_BYTES) {
      groups.push([]);
      used = 0;
    }
    groups[groups.length - 1].push({ name: r.hf, shape: r.hfShape });
    used += bytes;
  }
  const weightMap: Record<string, string> = {};
  let total = 0;
  groups.forEach((group, g) => {
    const file = `model-${String(g + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`;
    const writer = new SafetensorsWriter(
      path.join(outDir, file),
      group.map((t) => ({ ...t, dtype: 'BF16' as const })),
      { format: 'pt' },
    );
    group.forEach((t, k) => {
      const data = new Uint16Array(numElements(t.shape));
      fillRandomBf16(data, g * 1000 + k + 1, scaleOf(t.name, t.shape));
      writer.write(t.name, new Uint8Array(data.buffer));
      weightMap[t.name] = file;
      total += data.byteLength;
    });
    writer.close();
    if (groups.length > 1) process.stderr.write(`  wrote ${file}\n`);
  });
  fs.writeFileSync(path.join(outDir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  return total;
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const out = args[0];
  const i = args.indexOf('--llm-layers');
  const layers = i >= 0 ? Number(args[i + 1]) : 3;
  if (!out || !Number.isInteger(layers) || layers < 1) {
    process.stderr.write('usage: synthetic-checkpoint.ts <out-dir> [--llm-layers N] [--pvc]\n');
    process.exit(2);
  }
  const bytes = writeSyntheticCheckpoint(out, syntheticConfig(layers, args.includes('--pvc')));
  process.stderr.write(`synthetic checkpoint: ${(bytes / 2 ** 30).toFixed(2)} GiB of bf16 tensors in ${out}\n`);
}

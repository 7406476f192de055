// Benchmark: encoding a 64-frame clip frame by frame with PVC's temporal cache against encoding it
// at once (same weights, same frames). Random weights of a medium InternViT (no files needed).
//   npx tsx test/bench/pvc-streaming.ts [--backend wasm|cpu|tensorflow] [--frames 64]
import * as tf from '@tensorflow/tfjs';
import { BackendName, initBackend } from '../../src/backend';
import { ModelConfig, validateConfig } from '../../src/config';
import { Weights } from '../../src/io/weights';
import { kernelsFor } from '../../src/model/kernels';
import { VisionLanguageModel } from '../../src/model/vlm';
import { FrameCache } from '../../src/vision/temporal';
import { tensorRules } from '../../converter/names';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

export function mediumPVCConfig(): ModelConfig {
  return validateConfig(
    {
      format: 'pvc-tfjs',
      format_version: 1,
      model_type: 'pvc_internvl',
      template: 'internlm2-chat',
      system_message: '',
      image_size: 224,
      downsample_ratio: 0.25,
      ps_version: 'v2',
      select_layer: -1,
      num_image_token: 16,
      dynamic_image_size: true,
      use_thumbnail: true,
      min_dynamic_patch: 1,
      max_dynamic_patch: 12,
      vision: {
        hidden_size: 256,
        intermediate_size: 1024,
        num_attention_heads: 4,
        num_hidden_layers: 6,
        image_size: 224,
        patch_size: 14,
        num_channels: 3,
        norm_type: 'layer_norm',
        layer_norm_eps: 1e-6,
        hidden_act: 'gelu',
        qkv_bias: true,
        qk_normalization: false,
      },
      projector: { input_size: 4096, hidden_size: 256, layer_norm_eps: 1e-5 },
      llm: {
        architecture: 'InternLM2ForCausalLM',
        vocab_size: 16,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        hidden_act: 'silu',
        rms_norm_eps: 1e-5,
        rope_theta: 1e6,
        rope_scaling: null,
        max_position_embeddings: 4096,
        bos_token_id: 1,
        eos_token_id: 2,
        pad_token_id: 2,
      },
      pvc: {
        use_temporal: true,
        image_repeat_time: 4,
        video_repeat_time: 1,
        adaln_layers: [0, 1, 2, 3, 4, 5],
        temporal_layers: [4, 5],
        time_embed_freq_dim: 256,
      },
    },
    'medium PVC config',
  );
}

/** Random weights for every project tensor of a config (scaled like a trained model's). */
export function randomWeights(config: ModelConfig): Weights {
  const tensors = new Map<string, tf.Tensor>();
  let seed = 1;
  for (const rule of tensorRules(config)) {
    for (const out of rule.out) {
      const fanIn = out.shape.length === 2 ? out.shape[0] : 1;
      const isNorm = /norm|\.ls$|ls[12]$/.test(out.name) && out.shape.length === 1 && !out.name.endsWith('.bias');
      tensors.set(
        out.name,
        tf.tidy(() => {
          const r = tf.randomNormal(out.shape, 0, 1, 'float32', seed++);
          return isNorm ? tf.add(1, tf.mul(0.1, r)) : tf.div(r, Math.sqrt(fanIn));
        }),
      );
    }
  }
  return Weights.fromTensors('random weights', tensors);
}

async function main() {
  const backend = await initBackend({ backend: arg('--backend', 'wasm') as BackendName });
  const frames = Number(arg('--frames', '64'));
  const config = mediumPVCConfig();
  const weights = randomWeights(config);
  const model = new VisionLanguageModel('random weights', config, weights, kernelsFor(backend.name));
  const clip = tf.randomNormal([frames, 3, config.image_size, config.image_size], 0, 1, 'float32', 99) as tf.Tensor4D;

  const whole = () =>
    tf.tidy(() => {
      const cache = new FrameCache();
      const out = model.encodeFrames(clip, 1, cache);
      cache.dispose();
      return out;
    });
  const streamed = () => {
    const encoder = model.videoEncoder();
    const parts: tf.Tensor3D[] = [];
    for (let i = 0; i < frames; i++) parts.push(tf.tidy(() => encoder.encode(clip.slice([i, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D)));
    encoder.dispose();
    const out = tf.concat(parts) as tf.Tensor3D;
    tf.dispose(parts);
    return out;
  };
  // Warm up both paths once (kernel compilation, allocation).
  tf.dispose([whole(), streamed()]);
  const time = async (f: () => tf.Tensor) => {
    const t = performance.now();
    const out = f();
    await out.data();
    const ms = performance.now() - t;
    return { ms, out };
  };
  const a = await time(whole);
  const b = await time(streamed);
  const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(a.out, b.out))).dataSync()[0]);
  const result = {
    backend: backend.name,
    frames,
    vision: `${config.vision.num_hidden_layers} layers x ${config.vision.hidden_size}, ${config.image_size}px, temporal layers [${config.pvc!.temporal_layers}]`,
    wholeClipMs: +a.ms.toFixed(1),
    frameByFrameMs: +b.ms.toFixed(1),
    ratio: +(b.ms / a.ms).toFixed(3),
    maxAbsDiff: diff,
  };
  console.log(JSON.stringify(result, null, 2));
  tf.dispose([a.out, b.out, clip]);
  weights.dispose();
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

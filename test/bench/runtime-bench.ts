// One runtime measurement in a process of its own (peak RSS is per process), JSON on stdout. Run by
// `npm run bench` (test/bench/run.ts); not part of `npm test`.
//   --measure prefill --model DIR --backend B --tokens N    a prompt of N positions through the LLM as chat
//                                                           runs it (chunks of limits.prefillChunk), time and RSS
//   --measure video --backend B --frames N --tokenizer DIR  a PVC chat over N frames at 448 px, ViT of InternViT-300M's
//                                                           width (1 layer, AdaLN + temporal attention), random weights
//   --measure live --backend B --frames N --tokenizer DIR   a live session (model.liveVideo) on the video config: time per
//                                                           added frame, RSS after N/2 and N frames, a question after N/2
//                                                           frames against chat() on the same frames (time to first token)
//   --measure loop --model DIR --backend B [--worker]       event-loop delay p50/p99/max in the main thread during a chat
import { monitorEventLoopDelay } from 'perf_hooks';
import * as tf from '@tensorflow/tfjs';
import { BackendName, initBackend } from '../../src/backend';
import { chatGenerationConfig, prepareChat, runTurn } from '../../src/chat/chat';
import { LiveVideo } from '../../src/chat/live';
import { withImagePlaceholders } from '../../src/chat/prompt';
import { validateConfig } from '../../src/config';
import { runYielding } from '../../src/event_loop';
import { kernelsFor } from '../../src/model/kernels';
import { VisionLanguageModel } from '../../src/model/vlm';
import { ChatModel, PVCModel } from '../../src/pvc_model';
import { WorkerModel } from '../../src/runtime/worker';
import { PVCTokenizer } from '../../src/tokenizer';
import { randomWeights } from './pvc-streaming';

const arg = (name: string, fallback?: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const peakRssMB = () => process.resourceUsage().maxRSS / 1024;
const rssMB = () => process.memoryUsage().rss / 2 ** 20;

async function prefill(dir: string, backend: BackendName, tokens: number) {
  const model = await PVCModel.load(dir, { backend });
  const D = model.config.llm.hidden_size;
  const embeds = tf.randomNormal([1, tokens, D], 0, 1, 'float32', 5) as tf.Tensor3D;
  const rssBefore = peakRssMB();
  const cache = model.llm.newCache(1);
  const t = performance.now();
  const logits = await runYielding(model.llm.prefillSteps(embeds, cache, { chunkSize: model.limits.prefillChunk }));
  await logits.data();
  const ms = performance.now() - t;
  tf.dispose([logits, embeds]);
  cache.dispose();
  return { measure: 'prefill', backend: tf.getBackend(), tokens, chunk: model.limits.prefillChunk, ms, peakRssMB: peakRssMB(), rssBeforeMB: rssBefore };
}

/** PVC at InternViT-300M's width and 448 px, one ViT layer with AdaLN and temporal attention; a small LLM. */
function videoConfig(frames: number) {
  return validateConfig(
    {
      format: 'pvc-tfjs',
      format_version: 1,
      model_type: 'pvc_internvl',
      template: 'internlm2-chat',
      system_message: 'You are a helpful assistant.',
      image_size: 448,
      downsample_ratio: 0.25,
      ps_version: 'v2',
      select_layer: -1,
      num_image_token: 64,
      dynamic_image_size: true,
      use_thumbnail: true,
      min_dynamic_patch: 1,
      max_dynamic_patch: 12,
      vision: {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_attention_heads: 16,
        num_hidden_layers: 1,
        image_size: 448,
        patch_size: 14,
        num_channels: 3,
        norm_type: 'layer_norm',
        layer_norm_eps: 1e-6,
        hidden_act: 'gelu',
        qkv_bias: true,
        qk_normalization: false,
      },
      projector: { input_size: 16384, hidden_size: 512, layer_norm_eps: 1e-5 },
      llm: {
        architecture: 'InternLM2ForCausalLM',
        vocab_size: 1015,
        hidden_size: 512,
        intermediate_size: 1024,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 64,
        hidden_act: 'silu',
        rms_norm_eps: 1e-5,
        rope_theta: 1e6,
        rope_scaling: null,
        max_position_embeddings: frames * 64 + 1024,
        bos_token_id: 1,
        eos_token_id: 2,
        pad_token_id: 2,
      },
      pvc: { use_temporal: true, image_repeat_time: 4, video_repeat_time: 1, adaln_layers: [0], temporal_layers: [0], time_embed_freq_dim: 256 },
    },
    'runtime-bench video config',
  );
}

/** The video config's model (random weights) on `backend`, with the tiny tokenizer and 4 new tokens an answer. */
async function videoModel(backend: BackendName, frames: number, tokenizerDir: string) {
  const info = await initBackend({ backend });
  const config = videoConfig(frames);
  const model = new VisionLanguageModel('random weights', config, randomWeights(config), kernelsFor(info.name));
  const tokenizer = PVCTokenizer.load(tokenizerDir);
  return { model, tokenizer, generation: chatGenerationConfig(tokenizer, { maxNewTokens: 4, minNewTokens: 4 }) };
}

/** chat() on a clip (one tile a frame, data flag 3): its prompt length, time to the first token and in all. */
async function timedVideoChat({ model, tokenizer, generation }: Awaited<ReturnType<typeof videoModel>>, pixels: tf.Tensor4D) {
  const frames = pixels.shape[0];
  const question = withImagePlaceholders('What happens?', frames, 'video');
  const t = performance.now();
  let firstToken = 0;
  const turn = prepareChat(model, tokenizer, pixels, question, generation, { dataFlag: 3, numPatchesList: new Array(frames).fill(1) });
  const out = await runTurn(model, tokenizer, turn, { onToken: () => (firstToken ||= performance.now()) });
  return { promptTokens: out.inputIds.length, firstTokenMs: firstToken - t, ms: performance.now() - t };
}

async function video(backend: BackendName, frames: number, tokenizerDir: string) {
  const vm = await videoModel(backend, frames, tokenizerDir);
  const pixels = tf.randomUniform([frames, 3, 448, 448], -1, 1, 'float32', 9) as tf.Tensor4D;
  const chat = await timedVideoChat(vm, pixels);
  pixels.dispose();
  return {
    measure: 'video',
    backend: tf.getBackend(),
    frames,
    promptTokens: chat.promptTokens,
    framesPerPass: vm.model.limits.framesPerPass,
    promptMs: chat.firstTokenMs,
    ms: chat.ms,
    peakRssMB: peakRssMB(),
  };
}

/**
 * A live session of N frames on the video config: each frame's addFrame timed (after a one-frame
 * warm-up session: first-use costs out of the way), RSS (now and peak) after N/2 and N frames, a
 * question after N/2 frames, then chat() on those N/2 frames, both timed to their first token.
 */
async function live(backend: BackendName, frames: number, tokenizerDir: string) {
  const vm = await videoModel(backend, Math.ceil(frames * 1.25), tokenizerDir); // room for each frame's "FrameN: " and tags
  const { model, tokenizer, generation } = vm;
  const half = frames / 2;
  const clips = [0, 1].map((k) => tf.randomUniform([half, 3, 448, 448], -1, 1, 'float32', 9 + k) as tf.Tensor4D);
  const frame = (i: number) => clips[Math.floor(i / half)].slice([i % half, 0, 0, 0], [1, -1, -1, -1]) as tf.Tensor4D;
  const warm = new LiveVideo(model, tokenizer);
  const f0 = frame(0);
  await warm.addFrame(f0);
  await warm.ask('What happens?', generation);
  warm.dispose();
  f0.dispose();
  const session = new LiveVideo(model, tokenizer);
  const frameMs: number[] = [];
  const at: Record<string, number> = {};
  let askFirstTokenMs = 0;
  let askPromptTokens = 0;
  for (let i = 0; i < frames; i++) {
    const f = frame(i);
    const t = performance.now();
    await session.addFrame(f);
    frameMs.push(performance.now() - t);
    f.dispose();
    if (i + 1 === half || i + 1 === frames) {
      at[`rssAfter${i + 1}MB`] = rssMB();
      at[`peakRssAfter${i + 1}MB`] = peakRssMB();
      at[`positionsAfter${i + 1}`] = session.positions;
    }
    if (i + 1 === half) {
      const t0 = performance.now();
      let first = 0;
      const answer = await session.ask('What happens?', generation, { onToken: () => (first ||= performance.now()) });
      askFirstTokenMs = first - t0;
      askPromptTokens = answer.inputIds.length;
    }
  }
  session.dispose();
  // chat() on the same first N/2 frames: every frame encoded and the whole prompt read again.
  const chat = await timedVideoChat(vm, clips[0]);
  tf.dispose(clips);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return {
    measure: 'live',
    backend: tf.getBackend(),
    frames,
    frameMs: { 1: frameMs[0], 16: frameMs[15], [half]: frameMs[half - 1], [frames]: frameMs[frames - 1] },
    // Medians of 5 frames around each point (one frame's time on a shared machine varies by tens of percent).
    frameMsMedian: {
      1: median(frameMs.slice(0, 5)),
      16: median(frameMs.slice(13, 18)),
      [half]: median(frameMs.slice(half - 5, half)),
      [frames]: median(frameMs.slice(frames - 5)),
    },
    askAfter: half,
    askPromptTokens,
    askFirstTokenMs,
    chatPromptTokens: chat.promptTokens,
    chatFirstTokenMs: chat.firstTokenMs,
    ...at,
    peakRssMB: peakRssMB(),
  };
}

async function loop(dir: string, backend: BackendName, inWorker: boolean) {
  const model: ChatModel = inWorker ? await WorkerModel.load(dir, { backend }) : await PVCModel.load(dir, { backend });
  const S = model.config.image_size;
  if (!inWorker) await initBackend({ backend });
  else await initBackend({ backend: 'cpu', log: null }); // the main thread only holds the pixels
  const pixels = tf.randomUniform([2, 3, S, S], -1, 1, 'float32', 3) as tf.Tensor4D;
  const chat = () => model.chat(pixels, 'Describe the image.', { maxNewTokens: 32, minNewTokens: 32 }, { dataFlag: 1 });
  await chat(); // first-use costs (wasm compiles lazily) out of the way
  const histogram = monitorEventLoopDelay({ resolution: 5 });
  histogram.enable();
  const t = performance.now();
  await chat();
  const ms = performance.now() - t;
  histogram.disable();
  pixels.dispose();
  if (model instanceof WorkerModel) await model.dispose();
  return {
    measure: 'loop',
    backend,
    worker: inWorker,
    chatMs: ms,
    p50Ms: histogram.percentile(50) / 1e6,
    p99Ms: histogram.percentile(99) / 1e6,
    maxMs: histogram.max / 1e6,
    peakRssMB: peakRssMB(),
  };
}

async function main() {
  const measure = arg('--measure');
  const backend = arg('--backend', 'wasm') as BackendName;
  let result: Record<string, unknown>;
  if (measure === 'prefill') result = await prefill(arg('--model')!, backend, Number(arg('--tokens', '1024')));
  else if (measure === 'video') result = await video(backend, Number(arg('--frames', '96')), arg('--tokenizer')!);
  else if (measure === 'live') result = await live(backend, Number(arg('--frames', '128')), arg('--tokenizer')!);
  else if (measure === 'loop') result = await loop(arg('--model')!, backend, process.argv.includes('--worker'));
  else throw new Error(`--measure prefill | video | live | loop, not ${measure}`);
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`${e instanceof Error ? e.stack : e}\n`);
  process.exit(1);
});

// The `pvc` command.
//   pvc chat --model DIR (--image F ... | --video F [--frames N]) [--max-new-tokens N]
//            [--sample --temperature T --top-p P --top-k K --seed S] [--num-beams N ...] [--stop S ...]
//            [--backend B] [--json] "question"
// Streams the answer to stdout; load time, prefill time and tokens/s go to stderr.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { BACKEND_NAMES } from '../backend';
import { GenerationOptions } from '../chat/chat';
import { loadChatInputs } from '../chat/inputs';
import { reportTaps, ReportInputs } from '../inspect/report';
import { imageAttentionMap, renderHeatmap } from '../inspect/heatmap';
import { formatSummaries, logitLens, summarize } from '../inspect/lens';
import { writeSafetensors } from '../io/safetensors';
import { PVCModel } from '../pvc_model';
import { decodeAnswer } from '../tokenizer';
import { flag, list, number, oneOf, optionName, orNone, parseOptions, text, value, Values, WEIGHT_OPTIONS, WEIGHT_USAGE, weightLoadOptions } from './args';
import { doctorCommand } from './doctor';
import { serveCommand } from './serve';
import { watchCommand } from './watch';
import { evalCommand } from './eval';

const USAGE = `usage: pvc chat --model DIR [--image FILE ...] [--video FILE [--frames N]] [options] "question"
       pvc inspect --model DIR [--image FILE ... | --video FILE [--frames N] | --frame FILE ... | --frames-from DIR]
                   [--taps PATTERN ...] [--out DIR] [--heatmap] [--logit-lens] [--html FILE] [--max-new-tokens N] "question"
       pvc doctor [--backend B] [--json]   versions, backends, GPU, memory, and a self-check (exit 1 on failure)
       pvc serve --model DIR [--host H] [--port P] [--api-key K] ...   an OpenAI-compatible server (pvc serve --help)
       pvc watch --model DIR (--video FILE | --stdin) [--fps F] [--ask "Q" --every N]   live video (pvc watch --help)
       pvc eval --model DIR --benchmark mvbench|mmbench --data PATH --out FILE.jsonl [--queue redis://H:P]   PVC's protocol (pvc eval --help)

options:
  --max-new-tokens N   most tokens to generate (default 512)
  --max-tiles N        tiles per image (default: the model's max_dynamic_patch)
  --max-pixels N|none  Pillow's decompression-bomb limit: warn above N pixels, refuse above 2N (default 89478485)
  --sample             sample instead of greedy decoding, with:
  --temperature T  --top-p P  --top-k K  --seed S
  --num-beams N        beam search (as upstream's num_beams; the answer comes at the end), with:
  --length-penalty X  --early-stopping true|false|never
  --stop S             end the answer before S (repeatable)
  --backend B          tensorflow | wasm | cpu (default: the first that works)
${WEIGHT_USAGE}
  --json               print one JSON object (answer, timings) instead of streaming text

inspect writes DIR/taps.safetensors (prompt pass; generation step k as "step{k}.NAME"), DIR/summary.txt
(name, shape, mean, std, min, max), with --heatmap DIR/heatmap.png (attention of the generated tokens
over the image, the image's size) and with --logit-lens DIR/logit-lens.json (top tokens per LLM layer).
--html FILE writes one self-contained HTML report (where the model looked: attention over the images or
frames by layer and head with an overview of all of them, attention to the prompt, logit lens, PVC temporal
attention, tap statistics); it records the taps it needs. A video can also be given as its frame images:
--frame FILE (repeatable, in order) or --frames-from DIR (its .png/.jpg/.jpeg/.webp files, by name).
inspect prints the answer.
Tap patterns: vision.layers.*.out, llm.layers.{0..3}.attn.probs, projector.out, llm.logits, ...`;

/** Counts: tokens, tiles, frames, pixels. */
const COUNT = number({ integer: true, min: 0 });
const POSITIVE = number({ integer: true, min: 1 });

/** The options pvc chat and pvc inspect share. */
const MODEL_OPTIONS = {
  model: value(text),
  video: value(text),
  maxPixels: value(orNone(POSITIVE)),
  backend: value(oneOf(BACKEND_NAMES)),
  ...WEIGHT_OPTIONS,
};

const earlyStopping = (s: string) => {
  const v = oneOf(['true', 'false', 'never'])(s);
  return v === 'never' ? v : v === 'true';
};

const CHAT_OPTIONS = {
  ...MODEL_OPTIONS,
  image: list(text),
  frames: value(POSITIVE, 32),
  maxNewTokens: value(COUNT, 512),
  maxTiles: value(POSITIVE),
  sample: flag(),
  temperature: value(number({ above: 0 })),
  topP: value(number({ above: 0, max: 1 })),
  topK: value(COUNT),
  seed: value(number({ integer: true })),
  numBeams: value(number({ integer: true, min: 1, max: 64 })),
  lengthPenalty: value(number()),
  earlyStopping: value(earlyStopping),
  stop: list(text),
  json: flag(),
};

type ChatArgs = Omit<Values<typeof CHAT_OPTIONS>, 'image'> & { model: string; images: string[]; question: string };

function parseChatArgs(argv: string[]): ChatArgs {
  const { values, positionals: rest, given } = parseOptions(argv, CHAT_OPTIONS, { positionals: true });
  const { image: images, model, ...a } = values;
  if (!model) throw new Error('--model DIR is required');
  if (rest.length !== 1) throw new Error(`expected one question, got ${rest.length} argument(s)`);
  if (a.video && images.length > 0) throw new Error('give --image or --video, not both');
  if (given.has('frames') && !a.video) throw new Error('--frames applies to --video (an image is tiled, not sampled)');
  if (!a.sample) {
    // As transformers warns: these only shape sampling, and greedy decoding ignores them.
    const ignored = (['temperature', 'topP', 'topK'] as const).filter((k) => a[k] !== undefined).map(optionName);
    if (ignored.length) process.stderr.write(`pvc chat: ${ignored.join(', ')} only apply with --sample; decoding greedily\n`);
  }
  return { ...a, model, images, question: rest[0] };
}

async function chat(args: ChatArgs): Promise<void> {
  const t0 = Date.now();
  const model = await PVCModel.load(args.model, { backend: args.backend, ...weightLoadOptions(args) });
  const loadSeconds = (Date.now() - t0) / 1000;
  let pixelValues: tf.Tensor4D | null = null;
  try {
    const files = args.video ? { video: args.video } : { images: args.images };
    const { media, inputs } = await loadChatInputs(files, {
      inputSize: model.config.image_size,
      maxNum: args.maxTiles ?? model.config.max_dynamic_patch,
      maxPixels: args.maxPixels,
      numFrames: args.frames,
    });
    const { numPatchesList, dataFlag } = inputs;
    pixelValues = inputs.pixelValues;
    if (media?.video?.frameCount === 1) throw new Error(`${args.video} has a single frame: a still image; pass it with --image`);
    const question = inputs.withPlaceholders(args.question);
    const generation: GenerationOptions = { maxNewTokens: args.maxNewTokens, doSample: args.sample };
    for (const key of ['temperature', 'topP', 'topK', 'seed', 'numBeams', 'lengthPenalty', 'earlyStopping'] as const)
      if (args[key] !== undefined) generation[key] = args[key] as never;
    if (args.stop.length > 0) generation.stop = args.stop;
    const started = Date.now();
    let firstAt = 0;
    let tokens = 0;
    const onToken = () => {
      if (tokens++ === 0) firstAt = Date.now();
    };
    let answer = '';
    for await (const piece of model.stream(pixelValues, question, generation, { numPatchesList, dataFlag, onToken })) {
      answer += piece;
      if (!args.json) process.stdout.write(piece);
    }
    const end = Date.now();
    const prefillSeconds = ((firstAt || end) - started) / 1000;
    const decodeSeconds = (end - (firstAt || end)) / 1000;
    // Beam search hands out its tokens only at the end: there the time is the whole search.
    const beams = (args.numBeams ?? 1) > 1;
    const stats = {
      loadSeconds,
      prefillSeconds,
      decodeSeconds,
      // The first token comes with the prefill; the rest are decode steps.
      tokens,
      tokensPerSecond: decodeSeconds > 0 && !beams ? (tokens - 1) / decodeSeconds : null,
      tiles: pixelValues?.shape[0] ?? 0,
      backend: tf.getBackend(),
      ...(beams ? { numBeams: args.numBeams, prefillSeconds: null, decodeSeconds: null, searchSeconds: (end - started) / 1000 } : {}),
    };
    if (args.json) {
      process.stdout.write(JSON.stringify({ answer, question, numPatchesList: numPatchesList ?? [], ...stats }) + '\n');
    } else {
      process.stdout.write('\n');
      process.stderr.write(
        beams
          ? `load ${loadSeconds.toFixed(2)}s  beam search (${args.numBeams} beams, ${stats.tiles} tiles) ${((end - started) / 1000).toFixed(2)}s  [${stats.backend}]\n`
          : `load ${loadSeconds.toFixed(2)}s  prefill ${prefillSeconds.toFixed(2)}s (${stats.tiles} tiles)  ` +
              `decode ${stats.tokensPerSecond === null ? '-' : stats.tokensPerSecond.toFixed(1)} tokens/s  [${stats.backend}]\n`,
      );
    }
  } finally {
    pixelValues?.dispose();
    model.dispose();
  }
}

const INSPECT_OPTIONS = {
  ...MODEL_OPTIONS,
  image: list(text),
  frame: list(text),
  framesFrom: value(text),
  frames: value(POSITIVE, 8),
  taps: list(text, { greedy: true }),
  out: value(text),
  html: value(text),
  heatmap: flag(),
  logitLens: flag(),
  maxNewTokens: value(COUNT, 8),
};

type InspectArgs = Omit<Values<typeof INSPECT_OPTIONS>, 'image' | 'frame' | 'framesFrom'> & {
  model: string;
  question: string;
  images: string[];
  frameFiles: string[];
};

/** The frame images of a folder, by name: .png, .jpg, .jpeg, .webp (other files are ignored). */
export function frameFilesIn(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    throw new Error(`--frames-from ${dir}: ${(e as Error).message}`, { cause: e });
  }
  const files = names
    .filter((n) => /\.(png|jpe?g|webp)$/i.test(n))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    .map((n) => path.join(dir, n));
  if (files.length === 0) throw new Error(`--frames-from ${dir}: no .png, .jpg, .jpeg or .webp files in it`);
  return files;
}

function parseInspectArgs(argv: string[]): InspectArgs {
  const { values, positionals: rest, given } = parseOptions(argv, INSPECT_OPTIONS, { positionals: true });
  const { model, image: images, frame, framesFrom, ...a } = values;
  if (!model) throw new Error('--model DIR is required');
  if (!a.out && !a.html) throw new Error('--out DIR or --html FILE is required');
  if (frame.length > 0 && framesFrom) throw new Error('give --frame FILE ... or --frames-from DIR, not both');
  const frameFiles = framesFrom ? frameFilesIn(framesFrom) : frame;
  if ([images.length > 0, a.video !== undefined, frameFiles.length > 0].filter(Boolean).length > 1)
    throw new Error('give --image, --video or the frames of a video (--frame, --frames-from), one of them');
  if (given.has('frames') && !a.video) throw new Error('--frames applies to --video (the number of frames sampled from it)');
  // The question is the last positional argument (it may follow the tap patterns).
  if (rest.length === 0 && a.taps.length > 0) rest.push(a.taps.pop()!);
  if (rest.length !== 1) throw new Error(`expected one question, got ${rest.length} argument(s)`);
  if (a.heatmap && images.length !== 1) throw new Error('--heatmap needs one --image');
  return { ...a, model, images, frameFiles, question: rest[0] };
}

async function inspect(args: InspectArgs): Promise<void> {
  const model = await PVCModel.load(args.model, { backend: args.backend, ...weightLoadOptions(args) });
  const taps = new Set(args.taps);
  if (args.heatmap) taps.add('llm.layers.*.attn.probs');
  if (args.logitLens) taps.add('llm.layers.*.out');
  if (args.html) for (const t of reportTaps(model)) taps.add(t);
  const files = args.video ? { video: args.video } : args.frameFiles.length > 0 ? { frames: args.frameFiles } : { images: args.images };
  const { media, inputs } = await loadChatInputs(files, {
    inputSize: model.config.image_size,
    maxNum: model.config.max_dynamic_patch,
    maxPixels: args.maxPixels,
    numFrames: args.frames,
  });
  try {
    const generate =
      args.heatmap || args.html ? { maxNewTokens: Math.max(args.maxNewTokens, 1) } : args.maxNewTokens > 0 ? { maxNewTokens: args.maxNewTokens } : undefined;
    const { pixelValues, numPatchesList, dataFlag } = inputs;
    const result = await model.inspect({ pixelValues, taps: [...taps], generate, question: inputs.withPlaceholders(args.question), dataFlag, numPatchesList });
    const image = media?.images?.[0];
    try {
      const answer = decodeAnswer(model.tokenizer, result.outputIds);
      if (args.html) {
        const reportInputs: ReportInputs = media?.images
          ? { images: media.images.map((loaded, i) => ({ source: args.images[i], ...loaded })) }
          : media?.video
            ? { video: media.video }
            : media?.frames
              ? { video: { pixelValues: pixelValues!, numPatchesList: numPatchesList! }, frames: args.frameFiles }
              : {};
        const html = await result.toHTML(reportInputs);
        // Whole or not at all: written beside, then renamed over.
        const partial = `${args.html}.partial-${process.pid}`;
        try {
          fs.writeFileSync(partial, html);
          fs.renameSync(partial, args.html);
        } catch (e) {
          fs.rmSync(partial, { force: true });
          throw e;
        }
        process.stdout.write(`report: ${args.html} (${Buffer.byteLength(html)} bytes)\n`);
      }
      if (args.out === undefined) {
        process.stdout.write(`answer: ${answer}\n`);
        return;
      }
      fs.mkdirSync(args.out, { recursive: true });
      const all: [string, tf.Tensor][] = [
        ...Object.entries(result.taps),
        ...result.steps.flatMap((s, k) => Object.entries(s).map(([n, t]) => [`step${k}.${n}`, t] as [string, tf.Tensor])),
      ];
      writeSafetensors(
        path.join(args.out, 'taps.safetensors'),
        all.map(([name, t]) => ({ name, dtype: 'F32', shape: t.shape, data: t.dataSync() as Float32Array })),
      );
      const summary = formatSummaries(all.map(([n, t]) => summarize(n, t)));
      fs.writeFileSync(path.join(args.out, 'summary.txt'), summary + '\n');
      process.stdout.write(summary + '\n');
      process.stdout.write(`answer: ${answer}\n`);
      if (args.heatmap && image) {
        const probs = result.steps.flatMap((s) =>
          Object.entries(s)
            .filter(([n]) => n.endsWith('.attn.probs') && n.startsWith('llm.'))
            .map(([, t]) => t),
        );
        const layout = { grid: image.grid, tokensPerFrame: model.numImageToken, framesPerTile: model.tokensPerTile(1) / model.numImageToken };
        const png = await renderHeatmap(args.images[0], imageAttentionMap(probs, result.imageTokenPositions, layout));
        fs.writeFileSync(path.join(args.out, 'heatmap.png'), png);
        process.stdout.write(`heatmap: ${path.join(args.out, 'heatmap.png')} (${image.width}x${image.height})\n`);
      }
      if (args.logitLens) {
        const states = new Map(
          Object.entries(result.taps)
            .filter(([n]) => /^llm\.layers\.\d+\.out$/.test(n))
            .map(([n, t]) => [Number(n.split('.')[2]), t]),
        );
        const lens = logitLens(model.llm, model.tokenizer, states, 5);
        fs.writeFileSync(path.join(args.out!, 'logit-lens.json'), JSON.stringify(lens, null, 1) + '\n');
        for (const l of lens) process.stdout.write(`layer ${l.layer}: ${l.top.map((t) => `${JSON.stringify(t.token)} ${t.prob.toFixed(3)}`).join('  ')}\n`);
      }
    } finally {
      result.dispose();
    }
  } finally {
    inputs.pixelValues?.dispose();
    model.dispose();
  }
}

export async function main(argv = process.argv.slice(2)): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(USAGE + '\n');
    return command === undefined ? 2 : 0;
  }
  if (command === 'doctor') return doctorCommand(rest);
  if (command === 'serve') return serveCommand(rest);
  if (command === 'watch') return watchCommand(rest);
  if (command === 'eval') return evalCommand(rest);
  const commands: Record<string, [(a: string[]) => unknown, (a: never) => Promise<void>]> = {
    chat: [parseChatArgs, chat],
    inspect: [parseInspectArgs, inspect],
  };
  const entry = commands[command];
  if (entry === undefined) {
    process.stderr.write(`pvc: unknown command '${command}'\n${USAGE}\n`);
    return 2;
  }
  let args: unknown;
  try {
    args = entry[0](rest);
  } catch (e) {
    process.stderr.write(`pvc ${command}: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  try {
    await entry[1](args as never);
    return 0;
  } catch (e) {
    process.stderr.write(`pvc ${command}: ${(e as Error).message}\n`);
    return 1;
  }
}

// The `pvc` command.
//   pvc chat --model DIR (--image F ... | --video F [--frames N]) [--max-new-tokens N]
//            [--sample --temperature T --top-p P --top-k K --seed S] [--backend B] [--json] "question"
// Streams the answer to stdout; load time, prefill time and tokens/s go to stderr.
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { BackendName } from '../backend';
import { GenerationOptions } from '../chat/chat';
import { withImagePlaceholders } from '../chat/prompt';
import { imageAttentionMap, renderHeatmap } from '../inspect/heatmap';
import { formatSummaries, logitLens, summarize } from '../inspect/lens';
import { writeSafetensors } from '../io/safetensors';
import { DataFlag } from '../model/samples';
import { PVCModel } from '../pvc_model';
import { loadImage } from '../preprocess/image';
import { loadVideo } from '../preprocess/video';
import { decodeAnswer, loadTokenizer } from '../tokenizer';
import { doctorCommand } from './doctor';
import { serveCommand } from '../server/command';

const USAGE = `usage: pvc chat --model DIR [--image FILE ...] [--video FILE [--frames N]] [options] "question"
       pvc inspect --model DIR [--image FILE] --taps PATTERN [PATTERN ...] --out DIR [--heatmap] [--logit-lens]
                   [--max-new-tokens N] "question"
       pvc doctor [--backend B] [--json]   versions, backends, GPU, memory, and a self-check (exit 1 on failure)
       pvc serve --model DIR [--host H] [--port P] [--api-key K] ...   an OpenAI-compatible server (pvc serve --help)

options:
  --max-new-tokens N   most tokens to generate (default 512)
  --max-tiles N        tiles per image (default: the model's max_dynamic_patch)
  --sample             sample instead of greedy decoding, with:
  --temperature T  --top-p P  --top-k K  --seed S
  --backend B          tensorflow | wasm | cpu (default: the first that works)
  --json               print one JSON object (answer, timings) instead of streaming text

inspect writes DIR/taps.safetensors (prompt pass; generation step k as "step{k}.NAME"), DIR/summary.txt
(name, shape, mean, std, min, max), with --heatmap DIR/heatmap.png (attention of the generated tokens
over the image, the image's size) and with --logit-lens DIR/logit-lens.json (top tokens per LLM layer).
Tap patterns: vision.layers.*.out, llm.layers.{0..3}.attn.probs, projector.out, llm.logits, ...`;

interface ChatArgs {
  model: string;
  images: string[];
  video?: string;
  frames: number;
  maxNewTokens: number;
  maxTiles?: number;
  sample: boolean;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  backend?: BackendName;
  json: boolean;
  question: string;
}

/** Walks the arguments: each flag, the value after it, and a look at what comes next. */
class ArgReader {
  private i = -1;
  constructor(private readonly argv: string[]) {}

  next(): string | undefined {
    return this.argv[++this.i];
  }

  peek(): string | undefined {
    return this.argv[this.i + 1];
  }

  value(flag: string): string {
    if (this.i + 1 >= this.argv.length) throw new Error(`${flag} needs a value`);
    return this.argv[++this.i];
  }

  number(flag: string): number {
    const v = Number(this.value(flag));
    if (!Number.isFinite(v)) throw new Error(`${flag} expects a number`);
    return v;
  }
}

function parseChatArgs(argv: string[]): ChatArgs {
  const a: Partial<ChatArgs> & { images: string[] } = { images: [], frames: 32, maxNewTokens: 512, sample: false, json: false };
  const rest: string[] = [];
  const args = new ArgReader(argv);
  for (let flag = args.next(); flag !== undefined; flag = args.next()) {
    const value = () => args.value(flag!);
    const number = (name: string) => args.number(name);
    switch (flag) {
      case '--model': a.model = value(); break;
      case '--image': a.images.push(value()); break;
      case '--video': a.video = value(); break;
      case '--frames': a.frames = number(flag); break;
      case '--max-new-tokens': a.maxNewTokens = number(flag); break;
      case '--max-tiles': a.maxTiles = number(flag); break;
      case '--sample': a.sample = true; break;
      case '--temperature': a.temperature = number(flag); break;
      case '--top-p': a.topP = number(flag); break;
      case '--top-k': a.topK = number(flag); break;
      case '--seed': a.seed = number(flag); break;
      case '--backend': a.backend = value() as BackendName; break;
      case '--json': a.json = true; break;
      default:
        if (flag.startsWith('--')) throw new Error(`unknown option ${flag}`);
        rest.push(flag);
    }
  }
  if (!a.model) throw new Error('--model DIR is required');
  if (rest.length !== 1) throw new Error(`expected one question, got ${rest.length} argument(s)`);
  if (a.video && a.images.length > 0) throw new Error('give --image or --video, not both');
  return { ...(a as ChatArgs), question: rest[0] };
}

async function chat(args: ChatArgs): Promise<void> {
  const t0 = Date.now();
  const model = await PVCModel.load(args.model, { backend: args.backend });
  const tokenizer = await loadTokenizer(args.model);
  const loadSeconds = (Date.now() - t0) / 1000;
  const inputSize = model.config.image_size;
  let pixelValues: tf.Tensor4D | null = null;
  let numPatchesList: number[] | undefined;
  let question = args.question;
  let dataFlag: DataFlag | undefined;
  try {
    if (args.video) {
      const video = await loadVideo(args.video, { numSegments: args.frames, inputSize, maxNum: 1 });
      pixelValues = video.pixelValues;
      numPatchesList = video.numPatchesList;
      question = withImagePlaceholders(question, numPatchesList.length, 'video');
      dataFlag = 3;
    } else if (args.images.length > 0) {
      const maxNum = args.maxTiles ?? model.config.max_dynamic_patch;
      const images = [];
      for (const file of args.images) images.push(await loadImage(file, { inputSize, maxNum }));
      pixelValues = tf.concat(images.map((i) => i.pixelValues)) as tf.Tensor4D;
      images.forEach((i) => i.pixelValues.dispose());
      numPatchesList = images.map((i) => i.numPatches);
      question = withImagePlaceholders(question, images.length, 'images');
      dataFlag = images.length > 1 ? 2 : 1;
    }
    const generation: GenerationOptions = { maxNewTokens: args.maxNewTokens, doSample: args.sample };
    for (const key of ['temperature', 'topP', 'topK', 'seed'] as const) if (args[key] !== undefined) generation[key] = args[key];
    const started = Date.now();
    let firstAt = 0;
    let tokens = 0;
    const onToken = () => {
      if (tokens++ === 0) firstAt = Date.now();
    };
    let answer = '';
    for await (const piece of model.stream(tokenizer, pixelValues, question, generation, { numPatchesList, dataFlag, onToken })) {
      answer += piece;
      if (!args.json) process.stdout.write(piece);
    }
    const end = Date.now();
    const prefillSeconds = ((firstAt || end) - started) / 1000;
    const decodeSeconds = (end - (firstAt || end)) / 1000;
    const stats = {
      loadSeconds, prefillSeconds, decodeSeconds,
      // The first token comes with the prefill; the rest are decode steps.
      tokens, tokensPerSecond: decodeSeconds > 0 ? (tokens - 1) / decodeSeconds : null,
      tiles: pixelValues?.shape[0] ?? 0, backend: tf.getBackend(),
    };
    if (args.json) {
      process.stdout.write(JSON.stringify({ answer, question, numPatchesList: numPatchesList ?? [], ...stats }) + '\n');
    } else {
      process.stdout.write('\n');
      process.stderr.write(`load ${loadSeconds.toFixed(2)}s  prefill ${prefillSeconds.toFixed(2)}s (${stats.tiles} tiles)  ` +
        `decode ${stats.tokensPerSecond === null ? '-' : stats.tokensPerSecond.toFixed(1)} tokens/s  [${stats.backend}]\n`);
    }
  } finally {
    pixelValues?.dispose();
    model.dispose();
  }
}

interface InspectArgs {
  model: string;
  image?: string;
  taps: string[];
  out: string;
  heatmap: boolean;
  logitLens: boolean;
  maxNewTokens: number;
  backend?: BackendName;
  question: string;
}

function parseInspectArgs(argv: string[]): InspectArgs {
  const a: Partial<InspectArgs> & { taps: string[] } = { taps: [], heatmap: false, logitLens: false, maxNewTokens: 8 };
  const rest: string[] = [];
  const args = new ArgReader(argv);
  for (let flag = args.next(); flag !== undefined; flag = args.next()) {
    const value = () => args.value(flag!);
    switch (flag) {
      case '--model': a.model = value(); break;
      case '--image': a.image = value(); break;
      case '--out': a.out = value(); break;
      case '--heatmap': a.heatmap = true; break;
      case '--logit-lens': a.logitLens = true; break;
      case '--max-new-tokens': a.maxNewTokens = args.number(flag); break;
      case '--backend': a.backend = value() as BackendName; break;
      case '--taps':
        for (let next = args.peek(); next !== undefined && !next.startsWith('--'); next = args.peek()) a.taps.push(args.next()!);
        break;
      default:
        if (flag.startsWith('--')) throw new Error(`unknown option ${flag}`);
        rest.push(flag);
    }
  }
  if (!a.model) throw new Error('--model DIR is required');
  if (!a.out) throw new Error('--out DIR is required');
  // The question is the last positional argument (it may follow the tap patterns).
  if (rest.length === 0 && a.taps.length > 0) rest.push(a.taps.pop()!);
  if (rest.length !== 1) throw new Error(`expected one question, got ${rest.length} argument(s)`);
  if (a.heatmap && !a.image) throw new Error('--heatmap needs --image');
  return { ...(a as InspectArgs), question: rest[0] };
}

async function inspect(args: InspectArgs): Promise<void> {
  const model = await PVCModel.load(args.model, { backend: args.backend });
  const taps = new Set(args.taps);
  if (args.heatmap) taps.add('llm.layers.*.attn.probs');
  if (args.logitLens) taps.add('llm.layers.*.out');
  const image = args.image ? await loadImage(args.image, { inputSize: model.config.image_size, maxNum: model.config.max_dynamic_patch }) : null;
  try {
    const generate = args.heatmap ? { maxNewTokens: Math.max(args.maxNewTokens, 1) } : args.maxNewTokens > 0 ? { maxNewTokens: args.maxNewTokens } : undefined;
    const result = await model.inspect({ pixelValues: image?.pixelValues ?? null, question: args.question, taps: [...taps], generate, dataFlag: image ? 1 : undefined });
    try {
      fs.mkdirSync(args.out, { recursive: true });
      const all: [string, tf.Tensor][] = [
        ...Object.entries(result.taps),
        ...result.steps.flatMap((s, k) => Object.entries(s).map(([n, t]) => [`step${k}.${n}`, t] as [string, tf.Tensor])),
      ];
      writeSafetensors(path.join(args.out, 'taps.safetensors'), all.map(([name, t]) => ({ name, dtype: 'F32', shape: t.shape, data: t.dataSync() as Float32Array })));
      const summary = formatSummaries(all.map(([n, t]) => summarize(n, t)));
      fs.writeFileSync(path.join(args.out, 'summary.txt'), summary + '\n');
      process.stdout.write(summary + '\n');
      process.stdout.write(`answer: ${decodeAnswer(model.tokenizer(), result.outputIds)}\n`);
      if (args.heatmap && image) {
        const probs = result.steps.flatMap((s) => Object.entries(s).filter(([n]) => n.endsWith('.attn.probs') && n.startsWith('llm.')).map(([, t]) => t));
        const layout = { grid: image.grid, tokensPerFrame: model.numImageToken, framesPerTile: model.tokensPerTile(1) / model.numImageToken };
        const png = await renderHeatmap(args.image!, imageAttentionMap(probs, result.imageTokenPositions, layout));
        fs.writeFileSync(path.join(args.out, 'heatmap.png'), png);
        process.stdout.write(`heatmap: ${path.join(args.out, 'heatmap.png')} (${image.width}x${image.height})\n`);
      }
      if (args.logitLens) {
        const states = new Map(Object.entries(result.taps).filter(([n]) => /^llm\.layers\.\d+\.out$/.test(n)).map(([n, t]) => [Number(n.split('.')[2]), t]));
        const lens = logitLens(model.llm, model.tokenizer(), states, 5);
        fs.writeFileSync(path.join(args.out, 'logit-lens.json'), JSON.stringify(lens, null, 1) + '\n');
        for (const l of lens) process.stdout.write(`layer ${l.layer}: ${l.top.map((t) => `${JSON.stringify(t.token)} ${t.prob.toFixed(3)}`).join('  ')}\n`);
      }
    } finally {
      result.dispose();
    }
  } finally {
    image?.pixelValues.dispose();
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

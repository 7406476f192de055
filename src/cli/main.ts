// The `pvc` command.
//   pvc chat --model DIR (--image F ... | --video F [--frames N]) [--max-new-tokens N]
//            [--sample --temperature T --top-p P --top-k K --seed S] [--backend B] [--json] "question"
// Streams the answer to stdout; load time, prefill time and tokens/s go to stderr.
import * as tf from '@tensorflow/tfjs';
import { BackendName } from '../backend';
import { GenerationOptions, PVCModel } from '../chat/model';
import { loadImage } from '../preprocess/image';
import { loadVideo } from '../preprocess/video';
import { loadTokenizer } from '../tokenizer';

const USAGE = `usage: pvc chat --model DIR [--image FILE ...] [--video FILE [--frames N]] [options] "question"

options:
  --max-new-tokens N   most tokens to generate (default 512)
  --max-tiles N        tiles per image (default: the model's max_dynamic_patch)
  --sample             sample instead of greedy decoding, with:
  --temperature T  --top-p P  --top-k K  --seed S
  --backend B          tensorflow | wasm | cpu (default: the first that works)
  --json               print one JSON object (answer, timings) instead of streaming text`;

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

function parseChatArgs(argv: string[]): ChatArgs {
  const a: Partial<ChatArgs> & { images: string[] } = { images: [], frames: 32, maxNewTokens: 512, sample: false, json: false };
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    const number = (name: string) => {
      const v = Number(value());
      if (!Number.isFinite(v)) throw new Error(`${name} expects a number`);
      return v;
    };
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
  let dataFlag: 1 | 2 | 3 | undefined;
  try {
    if (args.video) {
      const video = await loadVideo(args.video, { numSegments: args.frames, inputSize, maxNum: 1 });
      pixelValues = video.pixelValues;
      numPatchesList = video.numPatchesList;
      // Upstream's video prompt: one "FrameK: <image>" line per frame, then the question.
      if (!question.includes('<image>')) question = numPatchesList.map((_, k) => `Frame${k + 1}: <image>\n`).join('') + question;
      dataFlag = 3;
    } else if (args.images.length > 0) {
      const maxNum = args.maxTiles ?? model.config.max_dynamic_patch;
      const images = [];
      for (const file of args.images) images.push(await loadImage(file, { inputSize, maxNum }));
      pixelValues = tf.concat(images.map((i) => i.pixelValues)) as tf.Tensor4D;
      images.forEach((i) => i.pixelValues.dispose());
      numPatchesList = images.map((i) => i.numPatches);
      if (images.length > 1 && !question.includes('<image>')) question = images.map((_, k) => `Image-${k + 1}: <image>\n`).join('') + question;
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

export async function main(argv = process.argv.slice(2)): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(USAGE + '\n');
    return command === undefined ? 2 : 0;
  }
  if (command !== 'chat') {
    process.stderr.write(`pvc: unknown command '${command}'\n${USAGE}\n`);
    return 2;
  }
  let args: ChatArgs;
  try {
    args = parseChatArgs(rest);
  } catch (e) {
    process.stderr.write(`pvc chat: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  try {
    await chat(args);
    return 0;
  } catch (e) {
    process.stderr.write(`pvc chat: ${(e as Error).message}\n`);
    return 1;
  }
}

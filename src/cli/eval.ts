// pvc eval --model DIR --benchmark mvbench|mmbench --data PATH --out results.jsonl [--queue redis://HOST:PORT]
// pvc eval worker --queue redis://HOST:PORT --model DIR [--data DIR]
// A benchmark under PVC's protocol (src/eval/): one JSON line per item in --out, appended as each is
// answered, so that a rerun goes on where a run stopped; with --queue, BullMQ on Redis hands the items
// to `pvc eval worker` processes. The accuracy per task and overall at the end (also of a finished
// file: a rerun with nothing left answers nothing and loads no model).
import { SingleBar } from 'cli-progress';
import * as os from 'os';
import { BACKEND_NAMES } from '../backend';
import { InputError } from '../errors';
import { MMBENCH_PROTOCOL, readMMBench } from '../eval/mmbench';
import { MVBENCH_PROTOCOL, readMVBench } from '../eval/mvbench';
import { coordinate, redisConnection, work } from '../eval/queue';
import { accuracyOf, BENCHMARKS, EvalItem, EvalProtocol, EvalResult, ResultsFile, runEval } from '../eval/run';
import { PVCModel } from '../pvc_model';
import { flag, number, oneOf, parseOptions, text, value, Values, WEIGHT_OPTIONS, WEIGHT_USAGE, weightLoadOptions } from './args';

export const EVAL_USAGE = `usage: pvc eval --model DIR --benchmark mvbench|mmbench --data PATH --out FILE.jsonl [--queue redis://HOST:PORT] [options]
       pvc eval worker --queue redis://HOST:PORT --model DIR [--data DIR] [--queue-name N] [--lock-seconds S]
  A benchmark as PVC's evaluation runs it, with its prompt and answer parsing. --data is the benchmark in
  its published layout:
    mvbench  a folder: json/<task>.json and video/...; --num-segments 96 frames a video, one tile each,
             data flag 3, beam search with 5 beams, up to 1000 tokens
    mmbench  one .tsv file (index, question, hint, A..E, answer, category, image); --dynamic: each image
             in up to --max-num 6 tiles plus the thumbnail, then 1 beam (PVC's script), else one tile and
             5 beams; up to 100 tokens. Right: the letter read from the answer is the answer column's
  Each answer is one JSON line of --out (id, task, promptIds, answer, option, correct, seconds), written as
  it comes: a rerun skips the items already there. The accuracy per task and overall ('Avg', percent) at
  the end.
  --queue URL          put the items in a BullMQ queue on Redis; \`pvc eval worker\` processes answer them
                       (a worker needs --data for video benchmarks: the folder as it sees it)
  --queue-name N       the queue (default pvc-eval; one evaluation per queue at a time)
  --num-segments N     frames sampled from each video (default 96)
  --dynamic            images in tiles (with --max-num N, default 6)
  --num-beams N        beams (default 5; 1 with --dynamic)  --max-new-tokens N (default 1000 mvbench, 100 mmbench)
  --lock-seconds S     worker: how long a job stays taken without word from its worker (default 60);
                       a worker that dies holds its item that long, then another takes it
  --json               no progress bar; the summary as one JSON object
  --backend B          tensorflow | wasm | cpu (default: the first that works)
${WEIGHT_USAGE}`;

const EVAL_OPTIONS = {
  model: value(text),
  benchmark: value(oneOf(BENCHMARKS)),
  data: value(text),
  out: value(text),
  queue: value(text),
  queueName: value(text, 'pvc-eval'),
  numSegments: value(number({ integer: true, min: 1, max: 512 }), MVBENCH_PROTOCOL.numSegments),
  dynamic: flag(),
  maxNum: value(number({ integer: true, min: 1, max: 40 }), MMBENCH_PROTOCOL.maxNum),
  numBeams: value(number({ integer: true, min: 1, max: 64 })),
  maxNewTokens: value(number({ integer: true, min: 1 })),
  lockSeconds: value(number({ min: 1, max: 86400 }), 60),
  json: flag(),
  backend: value(oneOf(BACKEND_NAMES)),
  ...WEIGHT_OPTIONS,
  help: flag('h'),
};

type EvalArgs = Values<typeof EVAL_OPTIONS>;

function parseEvalArgs(argv: string[], worker: boolean): EvalArgs {
  const { values: o, given } = parseOptions(argv, EVAL_OPTIONS);
  if (o.help) return o;
  if (o.queue) redisConnection(o.queue); // a URL it cannot use is refused here, before any work
  const flagName = (k: string) => `--${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`;
  if (worker) {
    if (!o.queue) throw new Error('--queue redis://HOST:PORT is required');
    if (!o.model) throw new Error('--model DIR is required');
    for (const k of ['out', 'benchmark', 'numSegments', 'dynamic', 'maxNum', 'numBeams', 'maxNewTokens'] as const)
      if (given.has(k)) throw new Error(`${flagName(k)} is the coordinator's (the jobs carry the protocol)`);
    return o;
  }
  if (!o.data) throw new Error('--data PATH is required (the benchmark in its published layout)');
  if (!o.out) throw new Error('--out FILE.jsonl is required');
  if (!o.benchmark) throw new Error(`--benchmark is required (${BENCHMARKS.join(' or ')})`);
  if (given.has('lockSeconds')) throw new Error("--lock-seconds is a worker's (pvc eval worker)");
  const own = o.benchmark === 'mvbench' ? ['numSegments'] : ['dynamic', 'maxNum'];
  for (const k of ['numSegments', 'dynamic', 'maxNum'] as const)
    if (given.has(k) && !own.includes(k)) throw new Error(`${flagName(k)} is not an option of ${o.benchmark}`);
  if (given.has('maxNum') && !o.dynamic) throw new Error('--max-num tiles an image: it needs --dynamic');
  if (o.dynamic && given.has('numBeams')) throw new Error("--num-beams with --dynamic: PVC's script decodes tiled images with 1 beam");
  return o;
}

/** The benchmark's items and protocol (PVC's defaults, with the options given). */
function benchmarkOf(args: EvalArgs): { items: EvalItem[]; protocol: EvalProtocol } {
  let items: EvalItem[];
  let base: EvalProtocol;
  if (args.benchmark === 'mvbench') {
    items = readMVBench(args.data!);
    base = { ...MVBENCH_PROTOCOL, numSegments: args.numSegments };
  } else {
    items = readMMBench(args.data!);
    // PVC's script: with --dynamic, 1 beam; without, the image is one tile and --num-beams (5) holds.
    base = args.dynamic ? { ...MMBENCH_PROTOCOL, maxNum: args.maxNum } : { ...MMBENCH_PROTOCOL, maxNum: 1, numBeams: 5 };
  }
  return { items, protocol: { ...base, numBeams: args.numBeams ?? base.numBeams, maxNewTokens: args.maxNewTokens ?? base.maxNewTokens } };
}

export async function evalCommand(argv: string[]): Promise<number> {
  const worker = argv[0] === 'worker';
  const name = worker ? 'pvc eval worker' : 'pvc eval';
  let args: EvalArgs;
  try {
    args = parseEvalArgs(worker ? argv.slice(1) : argv, worker);
    if (args.help) {
      process.stdout.write(EVAL_USAGE + '\n');
      return 0;
    }
  } catch (e) {
    process.stderr.write(`${name}: ${(e as Error).message}\n${EVAL_USAGE}\n`);
    return 2;
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (worker) await runWorker(args, stop.signal);
    else await runCoordinator(args, stop.signal);
    return 0;
  } catch (e) {
    if (stop.signal.aborted) return 130;
    process.stderr.write(`${name}: ${(e as Error).message}\n`);
    return e instanceof InputError ? 2 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function runWorker(args: EvalArgs, signal: AbortSignal): Promise<void> {
  const model = await PVCModel.load(args.model!, { backend: args.backend, ...weightLoadOptions(args) });
  try {
    // The name a job's processedBy shows: this host and process.
    const name = `${os.hostname()}:${process.pid}`;
    process.stderr.write(`pvc eval worker ${name}: taking items from ${args.queue} (queue ${args.queueName})\n`);
    await work(args.queue!, args.queueName, model, args.data ?? null, {
      signal,
      name,
      lockSeconds: args.lockSeconds,
      onResult: (r) => process.stderr.write(`${r.id}: ${JSON.stringify(r.answer)} ${r.correct ? 'right' : 'wrong'} (${r.seconds.toFixed(1)} s)\n`),
    });
  } finally {
    model.dispose();
  }
}

async function runCoordinator(args: EvalArgs, signal: AbortSignal): Promise<void> {
  const { items, protocol } = benchmarkOf(args);
  const results = ResultsFile.open(args.out!);
  try {
    const pending = items.filter((i) => !results.has(i.id)).length;
    const bar =
      args.json || pending === 0
        ? null
        : new SingleBar({ format: 'pvc eval {bar} {value}/{total} items | {speed} items/s | ETA {eta_formatted}', stream: process.stderr });
    const started = Date.now();
    bar?.start(items.length, items.length - pending, { speed: '0.00' });
    let answered = 0;
    const onResult = (_: EvalResult) => bar?.increment({ speed: ((++answered * 1000) / (Date.now() - started)).toFixed(2) });
    try {
      if (pending > 0 && args.queue) await coordinate(args.queue, args.queueName, items, protocol, results, { signal, onResult });
      else if (pending > 0) {
        const model = await PVCModel.load(args.model ?? missingModel(), { backend: args.backend, ...weightLoadOptions(args) });
        try {
          await runEval(model, args.data!, items, protocol, results, { signal, onResult });
        } finally {
          model.dispose();
        }
      }
    } finally {
      bar?.stop();
    }
    const ids = new Set(items.map((i) => i.id));
    const acc = accuracyOf([...results.results.values()].filter((r) => ids.has(r.id)));
    if (args.json) {
      process.stdout.write(
        JSON.stringify({ benchmark: args.benchmark, out: args.out, items: acc.items, answeredNow: pending, accuracy: acc.tasks, avg: acc.avg }) + '\n',
      );
    } else {
      for (const [task, t] of Object.entries(acc.tasks)) process.stdout.write(`${task}: ${t.accuracy.toFixed(2)}% (${t.correct} of ${t.total})\n`);
      process.stdout.write(`Avg: ${acc.avg.toFixed(2)}% (${acc.items} items; ${pending} answered now)\n`);
    }
  } finally {
    results.close();
  }
}

function missingModel(): never {
  throw new InputError('model', '--model DIR is required (items are left to answer)');
}

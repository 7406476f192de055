// pvc watch --model DIR (--video FILE|URL | --stdin) [--fps F] [--ask "Q" [--every N]] [--realtime] [--follow]
// A live video session (model.liveVideo) fed by a frame stream (frameStream): frames are added as they
// come, and questions are answered about what has been seen so far: --ask every N frames, or typed on
// stdin one per line (interactive, when stdin is not the video). Answers go to stdout; frames added and
// dropped, and timings, to stderr.
import * as readline from 'readline';
import { BACKEND_NAMES } from '../backend';
import { LiveVideo } from '../chat/live';
import { InputError } from '../errors';
import { throwIfAborted } from '../event_loop';
import { frameStream, FrameStream } from '../preprocess/stream';
import { PVCModel } from '../pvc_model';
import { flag, list, number, oneOf, parseOptions, text, value, Values, WEIGHT_OPTIONS, WEIGHT_USAGE, weightLoadOptions } from './args';

export const WATCH_USAGE = `usage: pvc watch --model DIR (--video FILE|URL | --stdin) [--fps F] [--ask "Q" ... [--every N]]
                 [--realtime] [--follow] [--max-frames N] [--max-new-tokens N] [--json] [--backend B] [--weights W]
  A live video session: frames taken from the video at --fps are added one by one (each costs its own
  tokens: the vision and LLM caches of earlier frames are kept) and questions are answered about the
  frames seen so far, as chat() on those frames would answer.
  --video FILE|URL     a video file, a file still being written (with --follow), or a URL ffmpeg reads
  --stdin              read the video from stdin (a pipe: e.g. ffmpeg ... -f mpegts - | pvc watch --stdin ...)
  --fps F              frames a second taken from the video (default 1)
  --ask Q              the question to ask (repeatable: each in turn), after every --every N frames (default 1)
                       without --ask (and without --stdin), questions are read from stdin, one per line
  --realtime           read a file at its own frame rate, as a camera: frames the model is too slow for are dropped
  --follow             keep reading a file that is still growing (stop with Ctrl-C)
  --max-frames N       most frames the session holds (default: as many as the context allows); then it stops adding
  --max-new-tokens N   most tokens per answer (default 64)
  --json               one JSON object per line (frames, answers, the summary) instead of text
${WEIGHT_USAGE}`;

const WATCH_OPTIONS = {
  model: value(text),
  video: value(text),
  stdin: flag(),
  fps: value(number({ above: 0, max: 240 }), 1),
  ask: list(text),
  every: value(number({ integer: true, min: 1 }), 1),
  realtime: flag(),
  follow: flag(),
  maxFrames: value(number({ integer: true, min: 1 })),
  maxNewTokens: value(number({ integer: true, min: 1 }), 64),
  json: flag(),
  backend: value(oneOf(BACKEND_NAMES)),
  ...WEIGHT_OPTIONS,
  help: flag('h'),
};

type WatchArgs = Values<typeof WATCH_OPTIONS> & { model: string };

function parseWatchArgs(argv: string[]): WatchArgs {
  const { values: o, given } = parseOptions(argv, WATCH_OPTIONS);
  if (o.help) return o as WatchArgs;
  if (!o.model) throw new Error('--model DIR is required');
  if (!o.video === !o.stdin) throw new Error('give --video FILE|URL or --stdin (one of them)');
  if (o.stdin && o.ask.length === 0) throw new Error('--stdin takes the video from stdin: give the questions with --ask');
  if (given.has('every') && o.ask.length === 0) throw new Error('--every applies to --ask');
  if (o.follow && !o.video) throw new Error('--follow applies to --video FILE');
  return o as WatchArgs;
}

export async function watchCommand(argv: string[]): Promise<number> {
  let args: WatchArgs;
  try {
    args = parseWatchArgs(argv);
    if (args.help) {
      process.stdout.write(WATCH_USAGE + '\n');
      return 0;
    }
  } catch (e) {
    process.stderr.write(`pvc watch: ${(e as Error).message}\n${WATCH_USAGE}\n`);
    return 2;
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let model: PVCModel | null = null;
  try {
    model = await PVCModel.load(args.model, { backend: args.backend, ...weightLoadOptions(args) });
    await watch(model, args, stop.signal);
    return 0;
  } catch (e) {
    if (stop.signal.aborted) return 130;
    process.stderr.write(`pvc watch: ${(e as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    model?.dispose();
  }
}

async function watch(model: PVCModel, args: WatchArgs, signal: AbortSignal): Promise<void> {
  const print = (event: Record<string, unknown>, line: string, to: NodeJS.WriteStream = process.stdout) =>
    (args.json ? process.stdout : to).write(args.json ? JSON.stringify(event) + '\n' : line + '\n');
  const live = model.liveVideo({ maxFrames: args.maxFrames });
  const generation = model.generationConfig({ maxNewTokens: args.maxNewTokens });
  const stream = frameStream(args.stdin ? { fd: 0, name: 'stdin' } : args.video!, {
    fps: args.fps,
    realtime: args.realtime,
    follow: args.follow,
    signal,
  });
  let seenAt = 0;
  /** Answers `question` about the frames so far (queued behind the frame being added), streaming it as text. */
  const answer = async (question: string) => {
    const frames = live.frames;
    let text = '';
    if (!args.json) process.stdout.write(`[${frames} frame${frames === 1 ? '' : 's'}, ${seenAt.toFixed(1)} s] ${question}\n`);
    for await (const piece of live.stream(question, generation, { signal })) {
      text += piece;
      if (!args.json) process.stdout.write(piece);
    }
    if (args.json) print({ event: 'answer', frames, time: seenAt, question, answer: text }, '');
    else process.stdout.write('\n');
  };
  // Interactive: questions typed on stdin, each answered once the frame being added is in.
  const interactive = args.ask.length === 0 ? readline.createInterface({ input: process.stdin, terminal: false }) : null;
  const questions: Promise<void>[] = [];
  interactive?.on('line', (line) => {
    const q = line.trim();
    if (q === '') return;
    questions.push(
      answer(q).catch((e) => {
        process.stderr.write(`pvc watch: ${(e as Error).message}\n`);
      }),
    );
  });
  const stdinClosed = interactive ? new Promise<void>((resolve) => interactive.once('close', resolve)) : Promise.resolve();
  const started = Date.now();
  let frameMs = 0;
  try {
    const reason = await addFrames(live, stream, args, signal, async (time, ms) => {
      seenAt = time;
      frameMs += ms;
      print(
        { event: 'frame', frames: live.frames, time, ms, dropped: stream.dropped },
        `frame ${live.frames} (${time.toFixed(1)} s): ${ms.toFixed(0)} ms${stream.dropped ? `, ${stream.dropped} dropped so far` : ''}`,
        process.stderr,
      );
      if (args.ask.length > 0 && live.frames % args.every === 0) await answer(args.ask[(live.frames / args.every - 1) % args.ask.length]);
    });
    const summary = {
      event: 'end',
      reason,
      frames: live.frames,
      dropped: stream.dropped,
      received: stream.received,
      msPerFrame: live.frames ? frameMs / live.frames : null,
      seconds: (Date.now() - started) / 1000,
    };
    print(
      summary,
      `pvc watch: ${reason}: ${live.frames} frames added, ${stream.dropped} dropped (the model was busy), ${summary.msPerFrame?.toFixed(0) ?? '-'} ms per frame`,
      process.stderr,
    );
    if (interactive) {
      if (!args.json) process.stderr.write('pvc watch: ask about what was seen, one question per line (end with Ctrl-D)\n');
      await Promise.race([stdinClosed, new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }))]);
    }
    await Promise.all(questions);
    throwIfAborted(signal); // Ctrl-C while waiting for questions: exit 130, as during the frames
  } finally {
    interactive?.close();
    stream.close();
    // The questions still running end (aborted or answered) before the session and the model are freed.
    await Promise.all(questions);
    live.dispose();
  }
}

/** Adds the stream's frames until it ends or the session is full; returns why it stopped. */
async function addFrames(
  live: LiveVideo,
  stream: FrameStream,
  args: WatchArgs,
  signal: AbortSignal,
  onAdded: (time: number, ms: number) => Promise<void>,
): Promise<string> {
  const full = () => `the session holds its --max-frames ${args.maxFrames}`;
  for await (const frame of stream) {
    if (live.frames === live.maxFrames) return full();
    const t0 = performance.now();
    try {
      await live.addFrame(frame.image, { signal });
    } catch (e) {
      // The context is full: the session stops growing; questions about it can still be asked.
      if (e instanceof InputError) return (e as Error).message;
      throw e;
    }
    await onAdded(frame.time, performance.now() - t0);
    if (live.frames === live.maxFrames) return full(); // now, not when a next frame comes (a live source may send none)
  }
  return 'the video ended';
}

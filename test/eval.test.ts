// pvc eval: MVBench as PVC's evaluation runs it, on the MVBench-format scenes set
// (test/fixtures/mvbench-scenes, made by test/reference/make_mvbench_scenes.py) with the scenes toy,
// against PyTorch's answers under the same protocol (reference.json, make_mvbench_reference.py: PVC's own
// eval script on the PVC spec oracle); resumable after a kill; shared out through BullMQ on a local
// redis-server (Debian's redis-server; without one these tests are skipped, and fail under CI=true).
// MMBench the same way on the MMBench-format scenes set (test/fixtures/mmbench-scenes,
// make_mmbench_scenes.py; reference.json from make_mmbench_reference.py).
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Queue } from 'bullmq';
import { MMBENCH_PROTOCOL, mmbenchOption, readMMBench } from '../src/eval/mmbench';
import { checkAnswer, MVBENCH_PROTOCOL, mvbenchQuestion, readMVBench } from '../src/eval/mvbench';
import { accuracyOf, EvalResult, ResultsFile, runEval } from '../src/eval/run';
import { PVCModel } from '../src/pvc_model';
import { convertFixture, FIXTURES } from './helpers';

const DATA = path.join(FIXTURES, 'mvbench-scenes');
const PVC = path.join(__dirname, '..', 'src', 'cli', 'pvc.js');
const REF = JSON.parse(fs.readFileSync(path.join(DATA, 'reference.json'), 'utf8')) as {
  num_segments: number;
  num_beams: number;
  accuracy: Record<string, number>;
  items: { id: string; task: string; question: string; prompt_ids: number; pred: string; gt: string; correct: boolean }[];
};
const OUT = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-eval-'));
/** The scenes toy, converted from its committed checkpoint. */
let MODEL = '';
beforeAll(() => (MODEL = convertFixture('scenes-pvc')));
afterAll(() => {
  fs.rmSync(OUT, { recursive: true, force: true });
  fs.rmSync(path.dirname(MODEL), { recursive: true, force: true });
});

/** A results file's lines without the timings, in order. */
const lines = (file: string) =>
  fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const { seconds: _, ...r } = JSON.parse(l) as EvalResult;
      return JSON.stringify(r);
    });

const run = (args: string[]) => spawn(process.execPath, [PVC, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
const exited = (child: ChildProcess) =>
  new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))));
const until = async (what: string, ok: () => boolean | Promise<boolean>, ms = 60000) => {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};
const EVAL = ['eval', '--benchmark', 'mvbench', '--data', DATA, '--json'];

const redis = (() => {
  try {
    return execFileSync('which', ['redis-server'], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
})();
const redisTest = redis || process.env.CI === 'true' ? test : test.skip;
if (!redis)
  console.warn(
    `eval.test.ts: no redis-server: the BullMQ tests are ${process.env.CI === 'true' ? 'FAILED under CI' : 'skipped'} (sudo apt-get install -y redis-server)`,
  );

/** A redis-server of its own on a random port, ready for connections (the caller kills `child`). */
async function startRedis(): Promise<{ child: ChildProcess; port: number; url: string }> {
  if (!redis) throw new Error('no redis-server: sudo apt-get install -y redis-server');
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = spawn(redis, ['--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let ready = '';
  child.stdout!.on('data', (d) => (ready += d));
  await until('redis-server', () => ready.includes('Ready to accept connections'), 20000);
  return { child, port, url: `redis://127.0.0.1:${port}` };
}

test("the benchmark's layout, PVC's prompt and PVC's reading of the answer", () => {
  const items = readMVBench(DATA);
  expect(items.map((i) => i.id).sort()).toEqual(REF.items.map((i) => i.id).sort());
  for (const r of REF.items) {
    const item = items.find((i) => i.id === r.id)!;
    expect([item.task, mvbenchQuestion(item, REF.num_segments), item.answer]).toEqual([r.task, r.question, r.gt]);
  }
  expect([REF.num_segments, REF.num_beams]).toEqual([MVBENCH_PROTOCOL.numSegments, MVBENCH_PROTOCOL.numBeams]);
  // The first word is the option: a letter in parentheses or alone, "Answer: " dropped, dots ignored.
  for (const [answer, correct] of [
    ['(B) left', true],
    ['(b)', true],
    ['B.', true],
    ['Answer: (B) left', true],
    ['(C) left', false],
    ['left', false],
    ['The answer is (B)', false],
  ] as const)
    expect([answer, checkAnswer(answer, '(B) left').correct]).toEqual([answer, correct]);
  // Bad data: named.
  const bad = path.join(OUT, 'bad');
  expect(() => readMVBench(bad)).toThrow(/no json\/ folder/);
  fs.mkdirSync(path.join(bad, 'json'), { recursive: true });
  expect(() => readMVBench(bad)).toThrow(/none of MVBench's task files/);
  fs.writeFileSync(
    path.join(bad, 'json', 'state_change.json'),
    JSON.stringify([{ video: '../../../etc/passwd', question: 'q', candidates: ['a'], answer: 'a' }]),
  );
  expect(() => readMVBench(bad)).toThrow(/state_change.json item 0: video "..\/..\/..\/etc\/passwd" leaves the data folder/);
  fs.writeFileSync(path.join(bad, 'json', 'state_change.json'), JSON.stringify([]));
  fs.writeFileSync(path.join(bad, 'json', 'action_sequence.json'), JSON.stringify([{ video: 'a.mp4', question: 'q', candidates: ['a'], answer: 'a' }]));
  expect(() => readMVBench(bad)).toThrow(/action_sequence.json item 0: start and end \(seconds\) are needed/);
});

describe('the scenes toy under the protocol', () => {
  const uninterrupted = path.join(OUT, 'uninterrupted.jsonl');

  test('every answer, prompt length and verdict, and the accuracy, equal upstream PyTorch (the PVC spec oracle)', async () => {
    const model = await PVCModel.load(MODEL);
    const results = ResultsFile.open(uninterrupted);
    try {
      await runEval(model, DATA, readMVBench(DATA), MVBENCH_PROTOCOL, results);
    } finally {
      results.close();
      model.dispose();
    }
    for (const r of REF.items) {
      const ours = results.results.get(r.id)!;
      expect([r.id, ours.answer, ours.promptIds, ours.correct]).toEqual([r.id, r.pred, r.prompt_ids, r.correct]);
    }
    const acc = accuracyOf(results.results.values());
    expect(acc.avg).toBe(REF.accuracy.Avg);
    for (const [task, t] of Object.entries(acc.tasks)) expect(t.accuracy).toBe(REF.accuracy[task]);
    // The toy was trained on one-word answers, not on MVBench's option letters: PVC's parsing finds no option.
    expect(acc.avg).toBe(0);
  });

  test('killed midway (SIGKILL, a line cut short), a rerun ends with the results of an uninterrupted run; a finished file needs no model', async () => {
    const out = path.join(OUT, 'killed.jsonl');
    const first = run([...EVAL, '--model', MODEL, '--out', out]);
    try {
      await until('5 results', () => fs.existsSync(out) && fs.readFileSync(out, 'utf8').split('\n').length > 5);
    } finally {
      first.kill('SIGKILL');
    }
    await exited(first);
    const kept = lines(out).length;
    expect(kept).toBeLessThan(REF.items.length);
    fs.appendFileSync(out, '{"id":"state_change/5","task":"State Ch'); // a write the kill cut short
    const second = run([...EVAL, '--model', MODEL, '--out', out]);
    let stdout = '';
    second.stdout!.on('data', (d) => (stdout += d));
    expect(await exited(second)).toBe(0);
    expect(JSON.parse(stdout).answeredNow).toBe(REF.items.length - kept);
    expect(lines(out)).toEqual(lines(uninterrupted));
    // Nothing left: the accuracy from the file alone.
    const third = run([...EVAL, '--out', out]);
    let summary = '';
    third.stdout!.on('data', (d) => (summary += d));
    expect(await exited(third)).toBe(0);
    expect(JSON.parse(summary)).toMatchObject({ items: REF.items.length, answeredNow: 0, avg: REF.accuracy.Avg });
  });

  redisTest(
    'two workers through BullMQ on a local redis-server: the accuracy of one process, each item once; a worker killed mid-item: its item is retried',
    async () => {
      const { child: server, port, url } = await startRedis();
      const children: ChildProcess[] = [server];
      const queue = new Queue('pvc-eval-test', { connection: { host: '127.0.0.1', port } });
      try {
        const worker = (label: string) => {
          const child = run(['eval', 'worker', '--queue', url, '--queue-name', 'pvc-eval-test', '--model', MODEL, '--data', DATA, '--lock-seconds', '2']);
          let log = '';
          child.stderr!.on('data', (d) => (log += d));
          children.push(child);
          return { label, child, name: `${os.hostname()}:${child.pid}`, log: () => log };
        };
        const a = worker('a');
        const b = worker('b');
        const out = path.join(OUT, 'queue.jsonl');
        const coordinator = run([...EVAL, '--out', out, '--queue', url, '--queue-name', 'pvc-eval-test']);
        children.push(coordinator);
        let summary = '';
        coordinator.stdout!.on('data', (d) => (summary += d));
        // Worker a dies in the middle of an item.
        let killed = '';
        await until('worker a to take an item', async () => {
          const job = (await queue.getActive()).find((j) => j.processedBy === a.name);
          if (job) {
            a.child.kill('SIGKILL');
            killed = (job.data as { item: { id: string } }).item.id;
          }
          return killed !== '';
        });
        expect(await exited(coordinator)).toBe(0);
        expect(lines(out).sort()).toEqual(lines(uninterrupted).sort());
        expect(new Set(lines(out).map((l) => JSON.parse(l).id)).size).toBe(REF.items.length);
        expect(JSON.parse(summary)).toMatchObject({ items: REF.items.length, answeredNow: REF.items.length, avg: REF.accuracy.Avg });
        // The killed worker's item was answered again, by the other.
        expect(a.log()).not.toContain(`${killed}: `);
        expect(b.log()).toContain(`${killed}: `);
        b.child.kill('SIGTERM');
        expect(await exited(b.child)).toBe(0);
      } finally {
        await queue.close();
        for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
      }
    },
    120000,
  );
});

describe('MMBench', () => {
  const TSV = path.join(FIXTURES, 'mmbench-scenes', 'mmbench_dev_en_scenes.tsv');
  const MREF = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'mmbench-scenes', 'reference.json'), 'utf8')) as {
    max_num: number;
    num_beams: number;
    accuracy: Record<string, number>;
    items: { id: string; task: string; question: string; tiles: number; prompt_ids: number; pred: string; option: string; gt: string; correct: boolean }[];
  };
  const out = path.join(OUT, 'mmbench.jsonl');

  test("the TSV read as pandas reads it, PVC's question, and PVC's post_process", () => {
    const items = readMMBench(TSV);
    expect(items.map((i) => [i.id, i.task, i.question, i.answer])).toEqual(MREF.items.map((r) => [r.id, r.task, r.question, r.gt]));
    expect(items.some((i) => Object.keys(i.options).length === 3) && items.some((i) => i.question.split('\n').length > 6)).toBe(true); // fewer options; a hint
    expect([MREF.max_num, MREF.num_beams]).toEqual([MMBENCH_PROTOCOL.maxNum, MMBENCH_PROTOCOL.numBeams]);
    const options = { A: 'red', B: 'dark blue', C: '3' };
    for (const [answer, option] of [
      ['B', 'B'], // one character: itself
      [' C ', 'C'],
      ['A. red', 'A'], // an option letter first
      ['dark blue', 'B'], // else the first option whose text it contains
      ['It is red.', 'A'],
      ['green', 'green'], // none: the answer itself
      ['x', 'x'],
    ] as const)
      expect([answer, mmbenchOption(answer, options)]).toEqual([answer, option]);
    // Bad files: named.
    const bad = path.join(OUT, 'bad.tsv');
    expect(() => readMMBench(bad)).toThrow(/bad.tsv: no such file/);
    fs.writeFileSync(bad, 'index\tquestion\tA\n1\tq\ta\n');
    expect(() => readMMBench(bad)).toThrow(/no 'image' column/);
    fs.writeFileSync(bad, 'index\tquestion\tA\timage\n1\tq\ta\tx\n1\tq\ta\tx\n');
    expect(() => readMMBench(bad)).toThrow(/row 3: index 1 is there twice/);
    fs.writeFileSync(bad, 'index\tquestion\tA\timage\n1\tq\ta\n');
    expect(() => readMMBench(bad)).toThrow(/row 2: 3 cells, the header has 4/);
    // pandas' missing values: "NA" as an option is no option, as PVC's script sees it.
    fs.writeFileSync(bad, 'index\tquestion\thint\tA\tB\timage\n7\tq\tnan\tyes\tNA\tx\n');
    expect(readMMBench(bad)[0]).toMatchObject({
      id: '7',
      options: { A: 'yes' },
      question: "q\nA. yes\nAnswer with the option's letter from the given choices directly.",
      answer: null,
    });
  });

  test('the scenes toy with --dynamic --max-num 6: every answer, prompt length, option read and verdict, and the accuracy, equal upstream PyTorch', async () => {
    const model = await PVCModel.load(MODEL);
    const results = ResultsFile.open(out);
    try {
      await runEval(model, TSV, readMMBench(TSV), MMBENCH_PROTOCOL, results);
    } finally {
      results.close();
      model.dispose();
    }
    for (const r of MREF.items) {
      const ours = results.results.get(r.id)!;
      expect([r.id, ours.answer, ours.promptIds, ours.option, ours.correct]).toEqual([r.id, r.pred, r.prompt_ids, r.option, r.correct]);
    }
    expect(MREF.items.some((r) => r.tiles > 1)).toBe(true); // images in several tiles plus the thumbnail
    const acc = accuracyOf(results.results.values());
    expect(acc.avg).toBe(MREF.accuracy.Avg);
    for (const [task, t] of Object.entries(acc.tasks)) expect(t.accuracy).toBe(MREF.accuracy[task]);
    // The toy was trained on "<image>\nquestion" prompts, not on lettered options: it answers with words,
    // which post_process maps to a letter only where an option's text is in them (so the accuracy is 0).
    expect(MREF.items.some((r) => r.option !== r.pred && r.option.length === 1)).toBe(true);
  });

  test('pvc eval --benchmark mmbench: the accuracy of the results file; options of the other benchmark refused', async () => {
    const cli = run(['eval', '--benchmark', 'mmbench', '--data', TSV, '--dynamic', '--out', out, '--json']);
    let summary = '';
    cli.stdout!.on('data', (d) => (summary += d));
    expect(await exited(cli)).toBe(0);
    expect(JSON.parse(summary)).toMatchObject({ benchmark: 'mmbench', items: MREF.items.length, answeredNow: 0, avg: MREF.accuracy.Avg });
    for (const [args, message] of [
      [['--num-segments', '8'], '--num-segments is not an option of mmbench'],
      [['--max-num', '4'], '--max-num tiles an image: it needs --dynamic'],
      [['--dynamic', '--num-beams', '5'], "--num-beams with --dynamic: PVC's script decodes tiled images with 1 beam"],
    ] as const) {
      const bad = run(['eval', '--benchmark', 'mmbench', '--data', TSV, '--out', out, ...args]);
      let err = '';
      bad.stderr!.on('data', (d) => (err += d));
      expect(await exited(bad)).toBe(2);
      expect(err).toContain(message);
    }
  });

  redisTest(
    'through BullMQ: a worker without --data (the jobs carry the images) gives the results of one process',
    async () => {
      const { child: server, url } = await startRedis();
      const children: ChildProcess[] = [server];
      try {
        const worker = run(['eval', 'worker', '--queue', url, '--queue-name', 'pvc-eval-mmbench', '--model', MODEL, '--lock-seconds', '5']);
        children.push(worker);
        const queued = path.join(OUT, 'mmbench-queue.jsonl');
        const coordinator = run([
          'eval',
          '--benchmark',
          'mmbench',
          '--data',
          TSV,
          '--dynamic',
          '--out',
          queued,
          '--json',
          '--queue',
          url,
          '--queue-name',
          'pvc-eval-mmbench',
        ]);
        children.push(coordinator);
        let summary = '';
        coordinator.stdout!.on('data', (d) => (summary += d));
        expect(await exited(coordinator)).toBe(0);
        expect(JSON.parse(summary)).toMatchObject({ benchmark: 'mmbench', items: MREF.items.length, answeredNow: MREF.items.length, avg: MREF.accuracy.Avg });
        // The lines of the single-process run above (the order in which workers answer may differ).
        expect(lines(queued).sort()).toEqual(lines(out).sort());
        worker.kill('SIGTERM');
        expect(await exited(worker)).toBe(0);
      } finally {
        for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
      }
    },
    120000,
  );
});

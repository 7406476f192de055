// `pvc eval --queue redis://HOST:PORT`: the items go into a BullMQ queue on Redis (one job per item,
// its id the item's under its benchmark, see jobIdOf), `pvc eval worker` processes (one model each,
// on this machine or others that see the same data folder) answer them, and the coordinator writes
// each finished job's result into the results file and removes the job. A worker that dies mid-item
// holds its job's lock until it expires (lockSeconds); another worker's stalled-job check (every
// lockSeconds) then puts the job back, and it is answered again: within about twice lockSeconds.
import { Job, Queue, Worker } from 'bullmq';
import * as path from 'path';
import { InputError } from '../errors';
import { PVCModel } from '../pvc_model';
import { mmbenchItemError } from './mmbench';
import { mvbenchItemError } from './mvbench';
import { answerItem, EvalItem, EvalProtocol, EvalResult, ResultsFile } from './run';

/** What a job carries: the item and the protocol (the worker brings the model and the data folder). */
interface JobData {
  item: EvalItem;
  protocol: EvalProtocol;
}

/**
 * An item's job id: "benchmark/id". BullMQ refuses custom ids that read as integers (MMBench's are its
 * index column) and most with a ':'.
 */
export function jobIdOf(item: EvalItem): string {
  return `${item.benchmark}/${item.id}`;
}

/** BullMQ's connection options for a redis://HOST:PORT URL. */
export function redisConnection(url: string): { host: string; port: number; maxRetriesPerRequest: null } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InputError('queue', `--queue ${url}: expected redis://HOST:PORT`);
  }
  if (u.protocol !== 'redis:' || !u.hostname) throw new InputError('queue', `--queue ${url}: expected redis://HOST:PORT`);
  return { host: u.hostname, port: Number(u.port || 6379), maxRetriesPerRequest: null };
}

/**
 * Puts the items the results file does not hold into the queue (a job already there is not added
 * twice) and writes the results as jobs finish, until every item has its line. `onResult` after each.
 * A job that fails (its item could not be answered, twice) ends the run with an error naming it.
 */
export async function coordinate(
  url: string,
  queueName: string,
  items: EvalItem[],
  protocol: EvalProtocol,
  results: ResultsFile,
  options: { signal?: AbortSignal; onResult?: (r: EvalResult) => void; pollMs?: number } = {},
): Promise<void> {
  const queue = new Queue<JobData, EvalResult>(queueName, { connection: redisConnection(url) });
  try {
    const pending = items.filter((item) => !results.has(item.id));
    // A failed job of an earlier run keeps its id and would block its item: it goes, and is added again
    // (a job that finished while no coordinator was there to record it is taken as it is, below).
    for (const item of pending) {
      const old = await queue.getJob(jobIdOf(item));
      if (old && (await old.isFailed())) await old.remove();
    }
    const add = (list: EvalItem[]) =>
      queue.addBulk(list.map((item) => ({ name: 'item', data: { item, protocol }, opts: { jobId: jobIdOf(item), attempts: 2, removeOnFail: false } })));
    await add(pending);
    const wanted = new Map(pending.map((i) => [jobIdOf(i), i]));
    for (let poll = 1; [...wanted.values()].some((item) => !results.has(item.id)); poll++) {
      options.signal?.throwIfAborted();
      for (const job of await queue.getJobs(['completed'])) {
        const item = wanted.get(job.id!);
        if (item === undefined) continue; // another evaluation's
        if (!results.has(item.id)) {
          const r = job.returnvalue as EvalResult | null;
          if (r === null || typeof r !== 'object' || r.id !== item.id || typeof r.correct !== 'boolean' || typeof r.task !== 'string')
            throw new Error(`job ${job.id} finished without a result of its item (${JSON.stringify(r)?.slice(0, 200)})`);
          results.append(r);
          options.onResult?.(r);
        }
        await job.remove();
      }
      const failed = (await queue.getJobs(['failed'])).filter((j) => wanted.has(j.id!));
      if (failed.length > 0) throw new Error(`failed: ${failed.map((j) => `${j.id}: ${j.failedReason}`).join('; ')}`);
      // Every 40 polls: an item whose job is gone (Redis restarted, the queue emptied) is added again.
      if (poll % 40 === 0) {
        const gone = [];
        for (const [jobId, item] of wanted) if (!results.has(item.id) && !(await queue.getJob(jobId))) gone.push(item);
        if (gone.length > 0) await add(gone);
      }
      await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 250));
    }
  } finally {
    await queue.close();
  }
}

/** A job's data as a worker takes it (it comes from Redis): an error names what is wrong. */
function checkJob(job: Job<JobData, EvalResult>, root: string | null): JobData {
  const { item, protocol } = job.data ?? ({} as JobData);
  const bad = (what: string) => new Error(`job ${job.id}: ${what}`);
  if (typeof item?.id !== 'string' || typeof item.task !== 'string') throw bad('an item with an id and a task is needed');
  let error: string | null;
  if (item.benchmark === 'mmbench') error = mmbenchItemError(item);
  else if (item.benchmark === 'mvbench')
    error = root === null ? 'an MVBench item needs the data folder (pvc eval worker --data DIR)' : mvbenchItemError(item, root);
  else error = `benchmark ${JSON.stringify((item as { benchmark: unknown }).benchmark)}: expected mvbench or mmbench`;
  if (error !== null) throw bad(error);
  const int = (v: unknown, min: number, max: number) => Number.isInteger(v) && (v as number) >= min && (v as number) <= max;
  if (
    !protocol ||
    !int(protocol.numSegments, 1, 512) ||
    !int(protocol.maxNum, 1, 40) ||
    !int(protocol.numBeams, 1, 64) ||
    !int(protocol.maxNewTokens, 1, 1 << 20) ||
    !int(protocol.minNewTokens, 0, 1 << 20)
  )
    throw bad(`protocol ${JSON.stringify(protocol)}: numSegments 1-512, maxNum 1-40, numBeams 1-64, maxNewTokens and minNewTokens integers`);
  return { item, protocol };
}

/**
 * A worker: takes jobs one at a time and answers them with `model` (video items from the data folder
 * `dir`; image items carry their image), until
 * `signal` aborts (the job in hand is finished first). Returns when it has stopped.
 */
export async function work(
  url: string,
  queueName: string,
  model: PVCModel,
  dir: string | null,
  options: { signal?: AbortSignal; lockSeconds?: number; name?: string; onResult?: (r: EvalResult) => void } = {},
): Promise<void> {
  const root = dir === null ? null : path.resolve(dir);
  const lockDuration = 1000 * (options.lockSeconds ?? 60);
  const worker = new Worker<JobData, EvalResult>(
    queueName,
    async (job: Job<JobData, EvalResult>) => {
      const { item, protocol } = checkJob(job, root);
      const r = await answerItem(model, root ?? '', item, protocol);
      options.onResult?.(r);
      return r;
    },
    { connection: redisConnection(url), concurrency: 1, lockDuration, stalledInterval: lockDuration, maxStalledCount: 1, name: options.name },
  );
  try {
    await worker.waitUntilReady();
    // Until the signal, or an error of the worker itself (its connection, its run loop): then it stops with it.
    await new Promise<void>((resolve, reject) => {
      if (options.signal?.aborted) resolve();
      options.signal?.addEventListener('abort', () => resolve(), { once: true });
      worker.on('error', (e) => reject(new Error(`the worker stopped: ${e.message}`, { cause: e })));
    });
  } finally {
    await worker.close();
  }
}

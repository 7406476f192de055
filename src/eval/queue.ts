// `pvc eval --queue redis://HOST:PORT`: the items go into a BullMQ queue on Redis (one job per item,
// its id the item's), `pvc eval worker` processes (one model each, on this machine or others that see
// the same data folder) answer them, and the coordinator writes each finished job's result into the
// results file and removes the job. A worker that dies mid-item holds its job's lock until it expires
// (lockSeconds); then another worker's stalled-job check puts the job back and it is answered again.
import { Job, Queue, Worker } from 'bullmq';
import * as path from 'path';
import { InputError } from '../errors';
import { PVCModel } from '../pvc_model';
import { EvalItem, EvalProtocol } from './mvbench';
import { answerItem, EvalResult, ResultsFile } from './run';

/** What a job carries: the item and the protocol (the worker brings the model and the data folder). */
interface JobData {
  item: EvalItem;
  protocol: EvalProtocol;
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
    await queue.addBulk(pending.map((item) => ({ name: 'item', data: { item, protocol }, opts: { jobId: item.id, attempts: 2, removeOnFail: false } })));
    const wanted = new Set(pending.map((i) => i.id));
    while ([...wanted].some((id) => !results.has(id))) {
      options.signal?.throwIfAborted();
      for (const job of await queue.getJobs(['completed'])) {
        if (wanted.has(job.id!) && !results.has(job.id!)) {
          results.append(job.returnvalue);
          options.onResult?.(job.returnvalue);
        }
        await job.remove();
      }
      const failed = (await queue.getJobs(['failed'])).filter((j) => wanted.has(j.id!));
      if (failed.length > 0) throw new Error(`pvc eval: ${failed.map((j) => `${j.id}: ${j.failedReason}`).join('; ')}`);
      await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 250));
    }
  } finally {
    await queue.close();
  }
}

/**
 * A worker: takes jobs one at a time and answers them with `model` on the items of `dir`, until
 * `signal` aborts (the job in hand is finished first). Returns when it has stopped.
 */
export async function work(
  url: string,
  queueName: string,
  model: PVCModel,
  dir: string,
  options: { signal?: AbortSignal; lockSeconds?: number; name?: string; onResult?: (r: EvalResult) => void } = {},
): Promise<void> {
  const root = path.resolve(dir);
  const lockDuration = 1000 * (options.lockSeconds ?? 60);
  const worker = new Worker<JobData, EvalResult>(
    queueName,
    async (job: Job<JobData, EvalResult>) => {
      const { item, protocol } = job.data;
      // Job data comes from Redis: the media must be inside this worker's data folder.
      if (typeof item?.media !== 'string' || !path.resolve(root, item.media).startsWith(root + path.sep))
        throw new Error(`job ${job.id}: media ${JSON.stringify(item?.media)} is not inside ${root}`);
      const r = await answerItem(model, root, item, protocol);
      options.onResult?.(r);
      return r;
    },
    { connection: redisConnection(url), concurrency: 1, lockDuration, stalledInterval: lockDuration, maxStalledCount: 1, name: options.name },
  );
  try {
    await worker.waitUntilReady();
    await new Promise<void>((resolve) => {
      if (options.signal?.aborted) resolve();
      options.signal?.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    await worker.close();
  }
}

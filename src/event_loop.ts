// Cooperative scheduling: long computations are written as generators that yield between their steps
// (layers, chunks of frames or tokens, decode steps), so that one code path runs either at once
// (`runSync`, for tools and tests) or giving Node's event loop a turn between steps (`runYielding`:
// timers, I/O, HTTP and AbortSignal keep working while a model runs). Work that cannot be cut into
// short steps goes to a worker thread (`startThread`). A leaf module.
import { Worker } from 'worker_threads';

/** Node's AbortError ("The operation was aborted", code ABORT_ERR), with the signal's reason as cause. */
export class AbortError extends Error {
  readonly code = 'ABORT_ERR';

  constructor(reason?: unknown) {
    super('The operation was aborted', { cause: reason });
    this.name = 'AbortError';
  }
}

/** Throws an AbortError if `signal` has been aborted (whatever its reason: abort(), a timeout, ...). */
export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortError(signal.reason);
}

/** Lets the event loop run once (timers, I/O, other callbacks), then checks `signal`. */
export async function yieldToEventLoop(signal?: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  throwIfAborted(signal);
}

/** Steps of a computation: each `yield` is a point where it may pause; the return value is its result. */
export type Steps<T> = Generator<void, T, void>;

/** Runs `steps` to the end without pausing. */
export function runSync<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * Runs `steps`, giving the event loop a turn at each pause. An abort of `signal` stops it at the next
 * pause with an AbortError; the generator's `finally` blocks run (they free what it holds).
 */
export async function runYielding<T>(steps: Steps<T>, signal?: AbortSignal): Promise<T> {
  try {
    for (;;) {
      throwIfAborted(signal);
      const r = steps.next();
      if (r.done) return r.value;
      await yieldToEventLoop(signal);
    }
  } catch (e) {
    steps.return(undefined as never);
    throw e;
  }
}

/**
 * A worker thread running the module `entry` (a .js file, or a .ts source under tsx in development
 * and tests), with `workerData`.
 */
export function startThread(entry: string, workerData?: unknown): Worker {
  if (entry.endsWith('.ts')) {
    // tsx as this package finds it (a worker's eval resolves modules from the process's directory).
    const tsx = require.resolve('tsx/cjs');
    return new Worker(`require(${JSON.stringify(tsx)}); require(${JSON.stringify(entry)});`, { eval: true, workerData });
  }
  return new Worker(entry, { workerData });
}

// Admission of requests to the model: up to `capacity` run at once (their decoding is batched, see
// generation/batch.ts), the others wait in order up to `maxQueue`; a request that would wait beyond
// that is refused (429). A request that needs the model alone (a beam search, a live session's step)
// takes every slot. A waiting request whose client leaves is taken out of the line.
import { AbortError } from '../event_loop';
import { ApiError } from './errors';

interface Waiting {
  exclusive: boolean;
  start: () => void;
  fail: (e: unknown) => void;
}

export class GenerationQueue {
  private running = 0;
  private exclusiveRunning = false;
  private readonly waiting: Waiting[] = [];

  constructor(
    readonly maxQueue: number,
    readonly capacity = 1,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`GenerationQueue: capacity ${capacity}, expected an integer >= 1`);
  }

  /** Requests running and waiting. */
  get depth(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.waiting.length };
  }

  /** Waits for a slot (every slot when `exclusive`); resolves to its release function (call it exactly once). */
  acquire(signal: AbortSignal, exclusive = false): Promise<() => void> {
    if (signal.aborted) return Promise.reject(new AbortError(signal.reason));
    if (this.waiting.length === 0 && this.fits(exclusive)) return Promise.resolve(this.take(exclusive));
    if (this.waiting.length >= this.maxQueue) {
      return Promise.reject(
        new ApiError(
          429,
          `the server is busy: ${this.running} requests running and ${this.waiting.length} waiting (--max-queue ${this.maxQueue}); retry later`,
          null,
          'queue_full',
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const entry: Waiting = {
        exclusive,
        start: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(this.take(exclusive));
        },
        fail: reject,
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new AbortError(signal.reason));
        this.admit(); // an exclusive request that left may have held others back
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  /** Refuses every waiting request (shutdown). */
  rejectWaiting(error: unknown): void {
    for (const entry of this.waiting.splice(0)) entry.fail(error);
  }

  private fits(exclusive: boolean): boolean {
    return !this.exclusiveRunning && (exclusive ? this.running === 0 : this.running < this.capacity);
  }

  private take(exclusive: boolean): () => void {
    this.running++;
    this.exclusiveRunning = exclusive;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running--;
      if (exclusive) this.exclusiveRunning = false;
      this.admit();
    };
  }

  /** Starts waiting requests in order while they fit (an exclusive one at the head holds the rest back). */
  private admit(): void {
    while (this.waiting.length > 0 && this.fits(this.waiting[0].exclusive)) this.waiting.shift()!.start();
  }
}

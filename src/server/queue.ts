// One generation at a time (the model's tensors and the CPU are shared), the others waiting in order up
// to `maxQueue`; a request that would wait beyond that is refused (429). A waiting request whose client
// leaves is taken out of the line.
import { AbortError } from '../event_loop';
import { ApiError } from './errors';

export class GenerationQueue {
  private busy = false;
  private readonly waiting: { start: () => void; fail: (e: unknown) => void }[] = [];

  constructor(readonly maxQueue: number) {}

  /** Requests running (0 or 1) and waiting. */
  get depth(): { running: number; waiting: number } {
    return { running: this.busy ? 1 : 0, waiting: this.waiting.length };
  }

  /** Waits for the slot; resolves to its release function (call it exactly once). */
  acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) return Promise.reject(new AbortError(signal.reason));
    if (!this.busy) {
      this.busy = true;
      return Promise.resolve(this.releaser());
    }
    if (this.waiting.length >= this.maxQueue) {
      return Promise.reject(
        new ApiError(
          429,
          `the server is busy: 1 request running and ${this.waiting.length} waiting (--max-queue ${this.maxQueue}); retry later`,
          null,
          'queue_full',
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(this.releaser());
        },
        fail: reject,
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new AbortError(signal.reason));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  /** Refuses every waiting request (shutdown). */
  rejectWaiting(error: unknown): void {
    for (const entry of this.waiting.splice(0)) entry.fail(error);
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next.start();
      else this.busy = false;
    };
  }
}

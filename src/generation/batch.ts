// Continuous batching: independent generations decoded together. On a CPU (and a GPU at small batch)
// a decode step is bound by reading the weights, so B sequences stepped together cost little more
// than one. A generation joins between steps: its prompt is prefilled in chunks, a layer of its
// prefill between layers of the running decode step, so the running rows keep streaming; a row that
// ends (eos, stop string, its token limit) or is left (abort, consumer gone) leaves at the next step.
//
// Each row keeps its own KV cache and rotary state (a fresh one: a row is answered as on a freshly
// loaded model) and its own logits processors and seeded sampler, so its tokens are those that
// generateSteps gives for it alone. Greedy and sampling only; beam search runs on its own.
import * as tf from '@tensorflow/tfjs';
import { AbortError, Steps, throwIfAborted, yieldToEventLoop } from '../event_loop';
import { KVCache } from '../llm/cache';
import { DecodeRow, InternLM2 } from '../llm/internlm2';
import { RotaryEmbedding } from '../llm/rope';
import { GenerationConfig } from './config';
import { chooseToken, GenerationStep, stopStrings } from './generate';
import { SeededRandom } from './processors';
import { StopStrings } from './stop';

export interface BatchedGenerationInput {
  /** The prompt's embeddings [1, T, D] (the caller keeps its own; the batcher holds a clone until the prefill ends). */
  embeds: tf.Tensor3D;
  /** The ids the logits processors treat as seen (see GenerationInput.seenIds), of the one row. */
  seenIds: number[];
}

export interface BatchedRunOptions {
  /** Takes the row out at the next step; the generation throws an AbortError. */
  signal?: AbortSignal;
  /** The text of generated ids, for stop strings (required when config.stop is not empty). */
  decode?: (ids: readonly number[]) => string;
}

export interface BatcherOptions {
  /** Prompt positions per prefill pass (default: the whole prompt). */
  prefillChunk?: number;
}

class Row implements DecodeRow {
  readonly cache: KVCache;
  readonly rotary: RotaryEmbedding;
  readonly seen: number[];
  readonly generated: number[] = [];
  readonly rng: SeededRandom;
  /** Steps made and not yet taken by the consumer. */
  readonly ready: GenerationStep[] = [];
  /** The token the next decode step feeds (after the prefill). */
  next = -1;
  step = 0;
  ended = false;
  /** Why the row ended other than by finishing (abort, a failed step). */
  error: unknown = null;
  private wake: (() => void) | null = null;

  constructor(
    model: InternLM2,
    public embeds: tf.Tensor3D | null,
    seenIds: number[],
    readonly config: GenerationConfig,
    readonly stop: StopStrings | undefined,
  ) {
    this.cache = model.newCache(1);
    this.rotary = new RotaryEmbedding(model.config);
    this.seen = [...seenIds];
    this.rng = new SeededRandom(config.seed);
  }

  /** Chooses the token from this row's logits [V]; returns false when the row has finished. */
  take(logits: Float32Array): boolean {
    const token = chooseToken(logits, this.seen, this.step, this.config, this.rng);
    this.seen.push(token);
    this.generated.push(token);
    const finished = this.config.eosTokenId.includes(token) || (this.stop?.reached(this.generated) ?? false);
    this.ready.push({ step: this.step, tokens: [token], unfinished: [!finished] });
    this.step++;
    this.next = token;
    this.notify();
    return !finished && this.step < this.config.maxNewTokens;
  }

  /** In a step now running (its cache is in use: freed when the step is over). */
  inStep = false;

  end(error: unknown = null): void {
    if (this.ended) return;
    this.ended = true;
    this.error ??= error;
    if (!this.inStep) this.free();
    this.notify();
  }

  /** The prompt's clone, no longer needed once it is in the cache. */
  dropEmbeds(): void {
    this.embeds?.dispose();
    this.embeds = null;
  }

  free(): void {
    this.dropEmbeds();
    this.cache.dispose();
    this.freed();
  }

  private freed!: () => void;
  /** Resolves once the row's tensors are freed (at the end of a step it was in). */
  readonly released = new Promise<void>((resolve) => (this.freed = resolve));

  /** Resolves when a step is ready or the row has ended. */
  waitForStep(): Promise<void> {
    if (this.ready.length > 0 || this.ended) return Promise.resolve();
    return new Promise((resolve) => (this.wake = resolve));
  }

  notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/**
 * Runs the generations given to `generate` together: one decode step for all rows in decode, between
 * the layers of the prefill of the next row waiting. One per model (it runs on the model's thread).
 */
export class ContinuousBatcher {
  private prefills: Row[] = [];
  private decoding: Row[] = [];
  private running = false;

  constructor(
    readonly model: InternLM2,
    readonly options: BatcherOptions = {},
  ) {}

  /** Rows decoding now, and rows waiting for or in their prefill. */
  get size(): { decoding: number; prefilling: number } {
    const live = (rows: Row[]) => rows.filter((r) => !r.ended).length;
    return { decoding: live(this.decoding), prefilling: live(this.prefills) };
  }

  /**
   * One generation in the batch, as generateSteps would run it for this row alone (steps of one row).
   * Leaving the iteration early (return, throw, abort) takes the row out at the next step.
   */
  async *generate(input: BatchedGenerationInput, config: GenerationConfig, options: BatchedRunOptions = {}): AsyncGenerator<GenerationStep> {
    if (config.numBeams > 1) throw new Error('ContinuousBatcher.generate: beam search runs on its own (generateSteps)');
    if (input.embeds.shape[0] !== 1) throw new Error(`ContinuousBatcher.generate: one row at a time, got embeddings [${input.embeds.shape}]`);
    const { signal } = options;
    throwIfAborted(signal);
    const row = new Row(this.model, input.embeds.clone(), input.seenIds, config, stopStrings(config, options));
    const onAbort = () => row.end(new AbortError(signal!.reason));
    signal?.addEventListener('abort', onAbort, { once: true });
    this.prefills.push(row);
    this.start();
    try {
      for (;;) {
        await row.waitForStep();
        const step = row.ready.shift();
        if (step !== undefined) {
          yield step;
          continue;
        }
        if (row.error !== null) throw row.error;
        return;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      row.end();
      await row.released; // a row in a running step is freed when the step ends
    }
  }

  private start(): void {
    if (this.running) return;
    this.running = true;
    void this.loop().finally(() => (this.running = false));
  }

  /**
   * Until no row is left: a layer of the decode step of the rows in decode (a new step starts with
   * whichever rows are in decode then), then a layer of the oldest waiting prefill, then a turn of the
   * event loop.
   */
  private async loop(): Promise<void> {
    let decode: { rows: Row[]; steps: Steps<tf.Tensor3D> } | null = null;
    let prefill: { row: Row; steps: Steps<tf.Tensor3D> } | null = null;
    const begin = (rows: Row[]) => rows.forEach((r) => (r.inStep = true));
    // A step over: rows that ended meanwhile are freed now.
    const over = (rows: Row[]) => rows.forEach((r) => ((r.inStep = false), r.ended && r.free()));
    for (;;) {
      this.decoding = this.decoding.filter((r) => !r.ended);
      if (decode?.rows.every((r) => r.ended)) {
        decode.steps.return(null as never);
        over(decode.rows);
        decode = null;
      }
      if (prefill?.row.ended) {
        prefill.steps.return(null as never);
        this.prefills.shift();
        over([prefill.row]);
        prefill = null;
      }
      this.prefills = this.prefills.filter((r) => !r.ended);
      if (decode === null && this.decoding.length > 0) {
        const rows = [...this.decoding];
        begin(rows);
        decode = {
          rows,
          steps: this.model.decodeRowsSteps(
            rows.map((r) => r.next),
            rows,
          ),
        };
      }
      if (prefill === null && this.prefills.length > 0) {
        const row = this.prefills[0];
        begin([row]);
        prefill = { row, steps: this.model.prefillSteps(row.embeds!, row.cache, { chunkSize: this.options.prefillChunk, rotary: row.rotary }) };
      }
      if (decode === null && prefill === null) return;
      if (decode !== null) {
        const { rows, steps } = decode;
        const done = this.advance(steps, rows);
        if (done !== undefined) {
          decode = null;
          over(rows);
          if (done !== null) await this.takeTokens(done, rows);
        }
      }
      if (prefill !== null) {
        const { row, steps } = prefill;
        const done = this.advance(steps, [row]);
        if (done !== undefined) {
          prefill = null;
          this.prefills.shift();
          over([row]);
          row.dropEmbeds();
          if (done !== null && (await this.takeTokens(done, [row]))) this.decoding.push(row);
        }
      }
      await yieldToEventLoop();
    }
  }

  /** One layer of `steps`: undefined while it goes on, its logits at its end, null if it failed (its rows ended with the error). */
  private advance(steps: Steps<tf.Tensor3D>, rows: Row[]): tf.Tensor3D | null | undefined {
    try {
      const r = steps.next();
      return r.done ? r.value : undefined;
    } catch (e) {
      for (const row of rows) row.end(e);
      return null;
    }
  }

  /** Each live row's token from its logits [rows, 1, V] (frees them); rows that finish end. For one row: whether it goes on. */
  private async takeTokens(logits: tf.Tensor3D, rows: Row[]): Promise<boolean> {
    let data: Float32Array;
    try {
      data = (await logits.data()) as Float32Array;
    } catch (e) {
      for (const row of rows) row.end(e);
      return false;
    } finally {
      logits.dispose();
    }
    const V = data.length / rows.length;
    let goesOn = false;
    rows.forEach((row, b) => {
      if (row.ended) return;
      goesOn = row.take(data.slice(b * V, (b + 1) * V));
      if (!goesOn) row.end();
    });
    return goesOn;
  }
}

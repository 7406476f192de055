// WorkerModel: a PVCModel in a worker thread, with the same async API (chat, chatIds, stream, batchChat,
// inspect), for apps where even one layer's compute must not run on the main thread. The model in the
// main thread (PVCModel) stays the default: it already yields to the event loop between layers.
//
// What crosses the thread boundary: pixelValues as their data (copied out of the main thread's tfjs),
// strings, plain options; onToken and AbortSignal stay here and talk to the worker by messages. The
// worker uses its model directory's own tokenizer (a `tokenizer` option is refused); inspect returns arrays ({ shape, data }).
import type * as tf from '@tensorflow/tfjs';
import * as path from 'path';
import type { Worker } from 'worker_threads';
import { BackendName, setTensorflowEnvironment } from '../backend';
import type { BatchChatOptions, ChatIds, ChatOptions, GenerationOptions } from '../chat/chat';
import type { History } from '../chat/template';
import type { ModelConfig } from '../config';
import { InputError } from '../errors';
import { AbortError, startThread } from '../event_loop';
import type { Inspection, InspectRequest, TapArray } from '../inspect/inspect';
import type { WeightPrecision } from '../io/weights';
import type { RunLimits } from '../model/vlm';
import type { ChatModel } from '../pvc_model';
import { ErrorData, HostData, Method, Reply, Request, TensorData } from './protocol';

export interface WorkerLoadOptions {
  /** The backend inside the worker (see README: which backends run in a worker thread). */
  backend?: BackendName;
  limits?: Partial<RunLimits>;
  /** As PVCModel.load's (matmul 'fast' wants TF_ENABLE_ONEDNN_OPTS=1 in the process environment before the first worker starts). */
  weights?: WeightPrecision;
  matmul?: 'exact' | 'fast';
}

interface Pending {
  onToken?: (id: number) => void;
  onPiece?: (piece: string) => void;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  signal?: AbortSignal;
}

function toError(e: ErrorData, signal?: AbortSignal): Error {
  if (e.name === 'AbortError') return new AbortError(signal?.reason);
  if (e.name === 'InputError') return new InputError(e.param ?? '', e.message);
  const error = new Error(e.message);
  error.name = e.name;
  return error;
}

/** The worker entry: the compiled host next to this file, or the TypeScript source through tsx. */
function startWorker(data: HostData): Worker {
  setTensorflowEnvironment();
  return startThread(path.join(__dirname, `host${path.extname(__filename)}`), data);
}

export class WorkerModel implements ChatModel {
  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private closed: Promise<void> | null = null;

  private constructor(
    private readonly worker: Worker,
    readonly dir: string,
    readonly config: ModelConfig,
    /** The backend the worker runs on. */
    readonly backend: string,
  ) {
    worker.on('message', (reply: Reply) => this.receive(reply));
    worker.on('error', (e) => this.failAll(e));
    worker.on('exit', (code) => this.failAll(new Error(`the model's worker thread exited (code ${code})`)));
  }

  /** Starts a worker thread and loads the converted model `dir` in it. */
  static load(dir: string, options: WorkerLoadOptions = {}): Promise<WorkerModel> {
    const worker = startWorker({
      dir: path.resolve(dir),
      backend: options.backend,
      limits: options.limits as Record<string, number> | undefined,
      weights: options.weights,
      matmul: options.matmul,
    });
    return new Promise((resolve, reject) => {
      const fail = (e: Error) => {
        void worker.terminate();
        reject(e);
      };
      worker.once('error', fail);
      worker.once('message', (reply: Reply) => {
        worker.off('error', fail);
        if (reply.kind === 'ready') resolve(new WorkerModel(worker, dir, reply.config, reply.backend));
        else fail(toError(reply.kind === 'load-error' ? reply.error : { name: 'Error', message: `unexpected message ${reply.kind}` }));
      });
    });
  }

  chat(
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions,
    options: ChatOptions & { returnHistory: true },
  ): Promise<{ response: string; history: History }>;
  chat(pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): Promise<string>;
  chat(pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): Promise<unknown> {
    return this.call('chat', pixelValues, [question, generation], options);
  }

  chatIds(pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): Promise<ChatIds> {
    return this.call('chatIds', pixelValues, [question, generation], options) as Promise<ChatIds>;
  }

  batchChat(pixelValues: tf.Tensor4D | null, questions: string[], generation: GenerationOptions = {}, options: BatchChatOptions = {}): Promise<string[]> {
    return this.call('batchChat', pixelValues, [questions, generation], options) as Promise<string[]>;
  }

  /** Taps come back as arrays. */
  inspect(request: InspectRequest): Promise<Inspection<TapArray>> {
    const { pixelValues, signal, ...rest } = request;
    return this.call('inspect', pixelValues ?? null, [], { ...rest, signal }, true).then((r) => ({ ...(r as Inspection<TapArray>), dispose: () => {} }));
  }

  /** chat() as text pieces; breaking out of the loop aborts the generation in the worker. */
  async *stream(pixelValues: tf.Tensor4D | null, question: string, generation: GenerationOptions = {}, options: ChatOptions = {}): AsyncGenerator<string> {
    const pieces: string[] = [];
    let wake: (() => void) | null = null;
    let done = false;
    let failure: Error | null = null;
    const id = this.nextId;
    const finished = this.call('stream', pixelValues, [question, generation], options, false, (piece) => {
      pieces.push(piece);
      wake?.();
    });
    finished.then(
      () => ((done = true), wake?.()),
      (e: Error) => ((failure = e), (done = true), wake?.()),
    );
    try {
      for (;;) {
        if (pieces.length > 0) yield pieces.shift()!;
        else if (done) break;
        else await new Promise<void>((r) => (wake = r));
        wake = null;
      }
      if (failure) throw failure;
    } finally {
      if (!done) {
        this.post({ kind: 'abort', id });
        await finished.catch(() => undefined);
      }
    }
  }

  /** Frees the model and ends the worker thread. */
  dispose(): Promise<void> {
    this.closed ??= new Promise<void>((resolve) => {
      this.worker.once('exit', () => resolve());
      this.post({ kind: 'dispose' });
    });
    return this.closed;
  }

  private post(request: Request, transfer: ArrayBuffer[] = []): void {
    this.worker.postMessage(request, transfer);
  }

  private call(
    method: Method,
    pixelValues: tf.Tensor4D | null,
    args: unknown[],
    options: { signal?: AbortSignal; onToken?: (id: number) => void; tokenizer?: unknown },
    optionsFirst = false,
    onPiece?: (piece: string) => void,
  ): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error(`${this.dir}: the WorkerModel was disposed`));
    const { signal, onToken, tokenizer, ...plain } = options;
    if (tokenizer !== undefined)
      return Promise.reject(
        new InputError('tokenizer', "a WorkerModel uses its model directory's own tokenizer; options.tokenizer cannot cross to the worker"),
      );
    if (signal?.aborted) return Promise.reject(new AbortError(signal.reason));
    const id = this.nextId++;
    const pixels: TensorData | null = pixelValues ? { shape: pixelValues.shape, data: (pixelValues.dataSync() as Float32Array).slice() } : null;
    return new Promise((resolve, reject) => {
      const onAbort = () => this.post({ kind: 'abort', id });
      signal?.addEventListener('abort', onAbort, { once: true });
      const cleanup = () => signal?.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        onToken,
        onPiece,
        signal,
        resolve: (v) => (cleanup(), resolve(v)),
        reject: (e) => (cleanup(), reject(e)),
      });
      this.post(
        { kind: 'call', id, method, pixels, args: optionsFirst ? [plain] : [...args, plain], wantTokens: onToken !== undefined },
        pixels ? [pixels.data.buffer as ArrayBuffer] : [],
      );
    });
  }

  private receive(reply: Reply): void {
    if (reply.kind === 'ready' || reply.kind === 'load-error' || reply.kind === 'disposed') return;
    const p = this.pending.get(reply.id);
    if (!p) return;
    if (reply.kind === 'token') p.onToken?.(reply.token);
    else if (reply.kind === 'piece') p.onPiece?.(reply.piece);
    else {
      this.pending.delete(reply.id);
      if (reply.kind === 'result') p.resolve(reply.value);
      else p.reject(toError(reply.error, p.signal));
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}

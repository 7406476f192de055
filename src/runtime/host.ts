// The worker-thread side of WorkerModel: loads a PVCModel and runs the calls the main thread posts,
// one at a time, streaming tokens and pieces back; an abort message aborts the call's signal.
import * as tf from '@tensorflow/tfjs';
import { parentPort, workerData } from 'worker_threads';
import { BackendName } from '../backend';
import type { WeightPrecision } from '../io/weights';
import type { InputError } from '../errors';
import { AbortError } from '../event_loop';
import { InspectRequest } from '../inspect/inspect';
import { PVCModel } from '../pvc_model';
import { ErrorData, HostData, Reply, Request } from './protocol';

const port = parentPort!;
const send = (reply: Reply) => port.postMessage(reply);
const errorData = (e: unknown): ErrorData => ({
  name: (e as Error)?.name ?? 'Error',
  message: (e as Error)?.message ?? String(e),
  param: (e as InputError)?.param,
});

async function main(): Promise<void> {
  const { dir, backend, limits, weights, matmul } = workerData as HostData;
  let model: PVCModel;
  try {
    model = await PVCModel.load(dir, {
      backend: backend as BackendName | undefined,
      limits,
      weights: weights as WeightPrecision | undefined,
      matmul: matmul as 'exact' | 'fast' | undefined,
    });
    send({ kind: 'ready', config: model.config, backend: tf.getBackend() });
  } catch (e) {
    send({ kind: 'load-error', error: errorData(e) });
    return;
  }
  const running = new Map<number, AbortController>();
  // Calls run one after another, as on a single model in one thread.
  let queue: Promise<void> = Promise.resolve();
  port.on('message', (request: Request) => {
    if (request.kind === 'abort') return running.get(request.id)?.abort(new AbortError());
    if (request.kind === 'dispose') {
      queue = queue.then(() => {
        model.dispose();
        send({ kind: 'disposed' });
        port.close();
      });
      return;
    }
    const controller = new AbortController();
    running.set(request.id, controller);
    queue = queue.then(() => call(model, request, controller.signal)).finally(() => running.delete(request.id));
  });
}

async function call(model: PVCModel, request: Extract<Request, { kind: 'call' }>, signal: AbortSignal): Promise<void> {
  const { id, method, args } = request;
  const pixels = request.pixels ? tf.tensor4d(request.pixels.data, request.pixels.shape as [number, number, number, number]) : null;
  const onToken = request.wantTokens ? (token: number) => send({ kind: 'token', id, token }) : undefined;
  try {
    if (signal.aborted) throw new AbortError(signal.reason);
    let value: unknown;
    if (method === 'inspect') {
      const [req] = args as [InspectRequest];
      const { dispose: _dispose, toHTML: _toHTML, ...inspection } = await model.inspect({ ...req, pixelValues: pixels, asArrays: true, signal });
      value = inspection;
    } else if (method === 'batchChat') {
      const [questions, generation, options] = args as [string[], Record<string, unknown>, Record<string, unknown>];
      value = await model.batchChat(pixels, questions, generation, { ...options, signal });
    } else {
      const [question, generation, options] = args as [string, Record<string, unknown>, Record<string, unknown>];
      const opts = { ...options, signal, onToken };
      if (method === 'stream') {
        for await (const piece of model.stream(pixels, question, generation, opts)) send({ kind: 'piece', id, piece });
      } else if (method === 'chatIds') value = await model.chatIds(pixels, question, generation, opts);
      else value = await model.chat(pixels, question, generation, opts);
    }
    send({ kind: 'result', id, value });
  } catch (e) {
    send({ kind: 'error', id, error: errorData(e) });
  } finally {
    pixels?.dispose();
  }
}

void main();

// The messages between a WorkerModel (main thread) and its host (worker thread). Tensors cross as
// { shape, data } with the data's buffer transferred; errors as { name, message }.
import type { ModelConfig } from '../config';

export interface TensorData {
  shape: number[];
  data: Float32Array;
}

export type Method = 'chat' | 'chatIds' | 'stream' | 'batchChat' | 'inspect';

/** Main -> worker. */
export type Request =
  | { kind: 'call'; id: number; method: Method; pixels: TensorData | null; args: unknown[]; wantTokens: boolean }
  | { kind: 'abort'; id: number }
  | { kind: 'dispose' };

export interface ErrorData {
  name: string;
  message: string;
  /** InputError's. */
  param?: string;
}

/** Worker -> main. */
export type Reply =
  | { kind: 'ready'; config: ModelConfig; backend: string }
  | { kind: 'load-error'; error: ErrorData }
  | { kind: 'token'; id: number; token: number }
  | { kind: 'piece'; id: number; piece: string }
  | { kind: 'result'; id: number; value: unknown }
  | { kind: 'error'; id: number; error: ErrorData }
  | { kind: 'disposed' };

export interface HostData {
  dir: string;
  backend?: string;
  limits?: Record<string, number>;
  weights?: string;
  matmul?: string;
}

// What greedy/sampled generation (generate.ts) and beam search (beam.ts) share: their input, the
// prompt's prefill and one decode step, each pausing after every layer (abortable between them).
import * as tf from '@tensorflow/tfjs';
import { runYielding } from '../event_loop';
import { KVCache } from '../llm/cache';
import { InternLM2 } from '../llm/internlm2';
import { Tap } from '../nn/layers';

export interface GenerationInput {
  /** Prompt embeddings [B, T, D] (the caller keeps ownership). */
  embeds: tf.Tensor3D;
  /** [B, T]: 1 for tokens, 0 for left padding. Default: no padding. */
  attentionMask?: number[][];
  /**
   * The ids the logits processors treat as already seen, per row (HF's `input_ids`). Upstream's chat
   * passes embeddings to generate(), where this is just [bos]; a caller generating from ids passes them.
   */
  seenIds: number[][];
}

export interface StepOptions {
  /** Stops the generation at its next pause (between layers) with an AbortError. */
  signal?: AbortSignal;
  tap?: Tap;
}

/**
 * The prompt through the model into `cache`: the logits of each row's last position [B, 1, V] (the
 * caller owns them). `prefillChunk` positions per pass (see InternLM2.prefillSteps).
 */
export function prefill(model: InternLM2, cache: KVCache, input: GenerationInput, options: StepOptions & { prefillChunk?: number }): Promise<tf.Tensor3D> {
  const [B, T] = input.embeds.shape;
  const attentionMask = input.attentionMask ?? Array.from({ length: B }, () => new Array(T).fill(1));
  // Taps record the prompt pass whole ([1, heads, L, L] attention), so with a tap it is one chunk.
  const chunkSize = options.tap ? T : options.prefillChunk;
  return runYielding(model.prefillSteps(input.embeds, cache, { attentionMask, chunkSize, tap: options.tap }), options.signal);
}

/** One decode step: token i of `tokens` continues cache row i; the logits of the new position [rows, 1, V]. */
export async function decodeStep(model: InternLM2, cache: KVCache, tokens: number[], options: StepOptions): Promise<tf.Tensor3D> {
  const next = model.embedTokens(tokens.map((t) => [t]));
  try {
    const logits = await runYielding(
      model.forwardSteps(next, cache, { attentionMask: tokens.map(() => [1]), logits: 'last', tap: options.tap }),
      options.signal,
    );
    return logits!;
  } finally {
    next.dispose();
  }
}

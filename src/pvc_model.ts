// PVCModel, the model as applications use it: a VisionLanguageModel (src/model/) with upstream's
// chat(), batch_chat(), a streaming chat (src/chat/) and layer inspection (src/inspect/). Each method
// is the function of that folder applied to this model.
import type * as tf from '@tensorflow/tfjs';
import { batchChat, BatchChatOptions, chat, ChatIds, ChatOptions, chatIds, GenerationOptions, streamChat } from './chat/chat';
import { PreparedPrompt, preparePrompt, PromptOptions } from './chat/prompt';
import { History } from './chat/template';
import { Inspection, inspect, InspectRequest, TapArray } from './inspect/inspect';
import { renderInspectionHTML, ReportInputs, ReportOptions } from './inspect/report';
import { Sample } from './model/samples';
import { loadModel, LoadOptions, VisionLanguageModel } from './model/vlm';
import { PVCTokenizer } from './tokenizer';

export class PVCModel extends VisionLanguageModel {
  private ownTokenizer: PVCTokenizer | null = null;

  /** Loads a model converted by pvc-convert. */
  static override async load(dir: string, options: LoadOptions = {}): Promise<PVCModel> {
    return loadModel(PVCModel, dir, options);
  }

  /** The tokenizer converted with the model (loaded on first use). */
  tokenizer(): PVCTokenizer {
    this.ownTokenizer ??= PVCTokenizer.load(this.dir);
    return this.ownTokenizer;
  }

  /** The prompt, ids and samples chat() would use (see src/chat/prompt.ts). */
  preparePrompt(
    tokenizer: PVCTokenizer,
    pixelValues: tf.Tensor4D | null,
    question: string,
    options: PromptOptions = {},
  ): PreparedPrompt & { samples: Sample[] } {
    return preparePrompt(this, tokenizer, pixelValues, question, options);
  }

  /** The prompt chat() builds and the token ids it generates (eos included), without decoding them. */
  chatIds(
    tokenizer: PVCTokenizer,
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions = {},
    options: ChatOptions = {},
  ): Promise<ChatIds> {
    return chatIds(this, tokenizer, pixelValues, question, generation, options);
  }

  /** Upstream's chat(): the answer (and the history with this turn appended, with returnHistory). */
  chat(
    tokenizer: PVCTokenizer,
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions,
    options: ChatOptions & { returnHistory: true },
  ): Promise<{ response: string; history: History }>;
  chat(tokenizer: PVCTokenizer, pixelValues: tf.Tensor4D | null, question: string, generation?: GenerationOptions, options?: ChatOptions): Promise<string>;
  chat(
    tokenizer: PVCTokenizer,
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions = {},
    options: ChatOptions = {},
  ): Promise<string | { response: string; history: History }> {
    return chat(this, tokenizer, pixelValues, question, generation, options);
  }

  /** chat() as a stream of text pieces whose concatenation is chat()'s answer. */
  stream(
    tokenizer: PVCTokenizer,
    pixelValues: tf.Tensor4D | null,
    question: string,
    generation: GenerationOptions = {},
    options: ChatOptions = {},
  ): AsyncGenerator<string> {
    return streamChat(this, tokenizer, pixelValues, question, generation, options);
  }

  /** Upstream's batch_chat(): several questions at once (left-padded), no history. */
  batchChat(
    tokenizer: PVCTokenizer,
    pixelValues: tf.Tensor4D | null,
    questions: string[],
    generation: GenerationOptions = {},
    options: BatchChatOptions = {},
  ): Promise<string[]> {
    return batchChat(this, tokenizer, pixelValues, questions, generation, options);
  }

  /**
   * Runs a prompt (and optionally generation) recording the selected taps (see src/inspect/inspect.ts).
   * `toHTML(inputs)` on the result renders it as one self-contained HTML report (src/inspect/report.ts).
   */
  inspect(request: InspectRequest & { asArrays: true }): Promise<Inspection<TapArray> & InspectionReport>;
  inspect(request: InspectRequest): Promise<Inspection<tf.Tensor> & InspectionReport>;
  async inspect(request: InspectRequest): Promise<(Inspection<tf.Tensor> | Inspection<TapArray>) & InspectionReport> {
    const tokenizer = request.tokenizer ?? this.tokenizer();
    const result = await inspect(this, tokenizer, request);
    return Object.assign(result, {
      toHTML: (inputs?: ReportInputs, options?: ReportOptions) => renderInspectionHTML(this, tokenizer, result, inputs, options),
    });
  }
}

export interface InspectionReport {
  /** The inspection as one self-contained HTML page (call before dispose()); see src/inspect/report.ts. */
  toHTML(inputs?: ReportInputs, options?: ReportOptions): Promise<string>;
}

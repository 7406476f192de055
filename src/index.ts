// pvc-tfjs: PVC-InternVL2 / InternVL2 in TensorFlow.js for Node.
//
//   const model = await PVCModel.load('weights/tiny-internvl2');
//   const tokenizer = await loadTokenizer('weights/tiny-internvl2');
//   const img = await loadImage('a.jpg', { maxNum: 12 });
//   const answer = await model.chat(tokenizer, img.pixelValues, 'What is in the image?', { maxNewTokens: 64 });
export { PVCModel } from './pvc_model';
export { mergeEmbeddings, VideoEncoder, VisionLanguageModel } from './model/vlm';
export type { LoadOptions } from './model/vlm';
export type { DataFlag } from './model/samples';
export type { BatchChatOptions, ChatOptions, GenerationOptions } from './chat/chat';
export { withImagePlaceholders } from './chat/prompt';
export type { PreparedPrompt, PromptOptions } from './chat/prompt';
export type { History } from './chat/template';
export { loadImage } from './preprocess/image';
export type { ImageOptions, LoadedImage } from './preprocess/image';
export { loadVideo } from './preprocess/video';
export type { LoadedVideo, VideoOptions } from './preprocess/video';
export { loadTokenizer, PVCTokenizer, StreamDecoder } from './tokenizer';
export { initBackend } from './backend';
export type { BackendInfo, BackendName } from './backend';
export type { ModelConfig } from './config';
export type { GenerationConfig } from './generation/generate';
export type { InspectRequest, Inspection, TapArray } from './inspect/inspect';
export { formatSummaries, logitLens, summarize } from './inspect/lens';
export { imageAttentionMap, renderHeatmap } from './inspect/heatmap';
export type { TileLayout } from './inspect/heatmap';

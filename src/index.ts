// pvc-tfjs: PVC-InternVL2 / InternVL2 in TensorFlow.js for Node.
//
//   const model = await PVCModel.load('weights/tiny-internvl2');
//   const tokenizer = await loadTokenizer('weights/tiny-internvl2');
//   const img = await loadImage('a.jpg', { maxNum: 12 });
//   const answer = await model.chat(tokenizer, img.pixelValues, 'What is in the image?', { maxNewTokens: 64 });
export { PVCModel } from './chat/model';
export type { ChatOptions, GenerationOptions, LoadOptions, PreparedPrompt } from './chat/model';
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
export type { DataFlag, InspectRequest, Inspection, TapArray } from './chat/model';
export { formatSummaries, imageAttentionMap, logitLens, renderHeatmap, summarize, tapNames } from './chat/inspect';
export { TemporalEncoder } from './vision/temporal';

// What the inspection report's page is drawn from: the JSON block #report-data, built by
// src/inspect/report.ts and read by the page script (src/inspect/report_script.ts). Types only: both
// the Node program and the page's own (tsconfig.page.json, with the DOM) read this file.

/** One tile of a panel: where it sits on the picture (fractions) and its visual tokens (g x g per frame). */
export interface Tile {
  rect: [number, number, number, number];
  /** Index of the tile's first visual token among all visual tokens of the prompt. */
  first: number;
  g: number;
  frames: number;
}

export interface Picture {
  url: string;
  width: number;
  height: number;
}

/** A picture the attention is drawn over: an image's tiles, its thumbnail, or a video frame. */
export interface Panel {
  label: string;
  kind: 'tiles' | 'thumbnail' | 'frame';
  picture: number;
  /** The picture's width / height as shown (a frame of a video file: the video's, not the model's square tile). */
  aspect: number;
  tiles: Tile[];
  tokens: number;
}

/** The attention maps of the generated tokens: base64 of 8-bit maps and of their float32 scales. */
export interface ReportAttention {
  layers: number[];
  tokens: number;
  headsKept: number;
  g: number;
  pool: number;
  maps: string;
  /** Each map's largest value (the attention on its most attended cell). */
  scales: string;
  /** The view the page opens on: the layer (mean of heads) whose heads put the largest share of token 0's attention on the visual tokens. */
  initial: { layer: number; head: number; share: number };
  /** The visual tokens' prompt positions, as runs [first position, count]. */
  positions: [number, number][];
}

/** Attention to the whole prompt: the positions grouped (an image or frame's tokens, the system prompt, each other token). */
export interface ReportText {
  groups: { label: string; kind: 'first' | 'system' | 'special' | 'text' | 'image' | 'generated'; count: number }[];
  /** [token][layer][0 = mean of heads, 1 + h][group]: attention mass (groups after the token's own predictor are absent). */
  values: number[][][][];
}

/** One logit-lens cell: the top tokens (indices into ReportLens.tokens) with their probabilities, and the probability and rank (1 = top) of the token that came next. */
export interface LensCell {
  top: [number, number][];
  next: [number, number] | null;
}

/** Logit lens: a column per position, a cell per row (the embeddings when recorded, then each layer's output). */
export interface ReportLens {
  columns: { label: string; part: 'prompt' | 'question' | 'generated'; input: string; next: string | null; cells: LensCell[] }[];
  /** The rows: -1 the embeddings (llm.embeds), then the layers. */
  layers: number[];
  /** The tokens the cells name, each once. */
  tokens: string[];
}

/** PVC's temporal attention of one ViT layer: [mean of heads, head 0, ...][F * F]. */
export interface ReportTemporal {
  layer: number;
  frames: number;
  heads: number;
  sequences: number;
  tokens: number;
  maps: number[][];
}

/** What the page is drawn from: the JSON block #report-data. */
export interface ReportData {
  title: string;
  model: { dir: string; llmLayers: number; heads: number; numImageToken: number; pvc: boolean; dataFlag: number | null };
  prompt: string | null;
  promptTokens: number;
  visualTokens: number;
  generated: string[];
  answer: string;
  attention: ReportAttention;
  text: ReportText;
  notes: string[];
  pictures: Picture[];
  panels: Panel[];
  lens: ReportLens;
  temporal: ReportTemporal[];
  /** [token][layer][head][panel]: the attention mass on each panel's tokens. */
  frameMass: number[][][][];
  /** Per tap: name, shape, mean, std, min, max. */
  stats: [string, number[], number, number, number, number][];
}

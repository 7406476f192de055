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

/** A picture the attention is drawn over: an image, its thumbnail, or a video frame. */
export interface Panel {
  label: string;
  picture: number;
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
  scales: string;
}

/** Logit lens: a column per position, a cell per layer (top tokens and whether the first came next). */
export interface ReportLens {
  columns: { label: string; input: string; next: string | null; cells: { top: [string, number][]; hit: boolean }[] }[];
  layers: number[];
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

// A model that can see: the tiny PVC model trained here on synthetic scenes (test/reference/train_scenes.py)
// answers questions about held-out scenes (images, image pairs, 8-frame videos), then shows where it
// looked for one answer as an attention heatmap.
//   npx tsx examples/scenes.ts [--model DIR] [--out DIR]   a few questions and a heatmap
//   npx tsx examples/scenes.ts --measure                    attention share on the asked object, whole set
import * as tf from '@tensorflow/tfjs';
import * as fs from 'fs';
import * as path from 'path';
import { DataFlag, imageAttentionMap, Inspection, loadImage, PVCModel, PVCTokenizer, renderHeatmap, reportTaps, TileLayout } from '../src';
import { modelDir, seconds } from './common';

/** The held-out evaluation set written by train_scenes.py (PNG files and eval.json). */
export const SCENES_EVAL = path.join(__dirname, '..', 'test', 'fixtures', 'scenes-eval');

export interface SceneObject {
  shape: string;
  colour: string;
  /** Centre as fractions of the width and height; radius as a fraction of the shorter side. */
  x: number;
  y: number;
  r: number;
}

export interface SceneRecord {
  id: string;
  kind: 'colour' | 'shape' | 'exists' | 'count' | 'position' | 'multi' | 'video';
  event?: string;
  files: string[];
  data_flag: DataFlag;
  num_patches_list: number[];
  question: string;
  answer: string;
  torch_answer: string;
  scenes: { w: number; h: number; objects: SceneObject[] }[];
}

export interface ScenesEval {
  /** The directory it was read from (the files are relative to it). */
  dir: string;
  image_size: number;
  /** max_num of the image tiling (video frames are one tile each). */
  max_num: number;
  torch_accuracy: Record<string, number>;
  questions: SceneRecord[];
}

export function readScenesEval(dir = SCENES_EVAL): ScenesEval {
  return { ...(JSON.parse(fs.readFileSync(path.join(dir, 'eval.json'), 'utf8')) as Omit<ScenesEval, 'dir'>), dir };
}

export interface SceneInputs {
  pixelValues: tf.Tensor4D;
  numPatchesList: number[];
  grids: [number, number][];
}

/** A record's files as chat() takes them: images tiled (max_num, thumbnail), video frames one tile each. */
export async function sceneInputs(model: PVCModel, set: ScenesEval, record: SceneRecord): Promise<SceneInputs> {
  const maxNum = record.data_flag === 3 ? 1 : set.max_num;
  const images = [];
  for (const f of record.files) images.push(await loadImage(path.join(set.dir, f), { inputSize: model.config.image_size, maxNum }));
  const pixelValues = tf.concat(images.map((i) => i.pixelValues)) as tf.Tensor4D;
  tf.dispose(images.map((i) => i.pixelValues));
  return { pixelValues, numPatchesList: images.map((i) => i.numPatches), grids: images.map((i) => i.grid) };
}

/** The model's greedy answer to a record's question. */
export async function askScene(model: PVCModel, tokenizer: PVCTokenizer, set: ScenesEval, record: SceneRecord): Promise<string> {
  const inputs = await sceneInputs(model, set, record);
  try {
    return await model.chat(inputs.pixelValues, record.question, { maxNewTokens: 8 }, { dataFlag: record.data_flag, numPatchesList: inputs.numPatchesList });
  } finally {
    inputs.pixelValues.dispose();
  }
}

/**
 * The HTML report (model.inspect, then toHTML) of the model's answer to a record: where it looked, by
 * layer and head. `keep` gets the inspection before it is disposed (its taps, for a closer look).
 */
export async function sceneReport(model: PVCModel, set: ScenesEval, record: SceneRecord, keep?: (trace: Inspection<tf.Tensor>) => void): Promise<string> {
  const inputs = await sceneInputs(model, set, record);
  const files = record.files.map((f) => path.join(set.dir, f));
  try {
    const trace = await model.inspect({
      pixelValues: inputs.pixelValues,
      question: record.question,
      dataFlag: record.data_flag,
      numPatchesList: inputs.numPatchesList,
      taps: reportTaps(model),
      generate: { maxNewTokens: 4 },
    });
    try {
      keep?.(trace);
      const reportInputs =
        record.data_flag === 3
          ? { video: { pixelValues: inputs.pixelValues, numPatchesList: inputs.numPatchesList }, frames: files }
          : { images: files.map((source, i) => ({ source, grid: inputs.grids[i], numPatches: inputs.numPatchesList[i] })) };
      return await trace.toHTML(reportInputs);
    } finally {
      trace.dispose();
    }
  } finally {
    inputs.pixelValues.dispose();
  }
}

/** The object a single-image question names (by its shape or its colour), if any. */
export function askedObject(record: SceneRecord): SceneObject | undefined {
  const words = record.question.replace(/[?\n]/g, ' ').split(' ');
  return record.scenes[0].objects.find((o) => words.includes(o.shape) || words.includes(o.colour));
}

export interface AttentionShare {
  /** Share of the attention to the image's tiles that falls on the token cell under the object's centre. */
  onObjectCell: number;
  /** That cell's share of the image's area (1 / cells). */
  cellArea: number;
  /** The object's own share of the image's area (its disc). */
  objectArea: number;
  map: { map: Float32Array; width: number; height: number };
}

/**
 * Where the model looked while it chose its first answer token: the attention of the last prompt position
 * to the image's visual tokens, averaged over layers and heads, laid out on the tile grid (thumbnail left
 * out), and the share of it on the asked object's cell.
 */
export async function attentionOnObject(model: PVCModel, set: ScenesEval, record: SceneRecord, object: SceneObject): Promise<AttentionShare> {
  const inputs = await sceneInputs(model, set, record);
  const result = await model.inspect({
    pixelValues: inputs.pixelValues,
    question: record.question,
    dataFlag: record.data_flag,
    numPatchesList: inputs.numPatchesList,
    taps: ['llm.layers.*.attn.probs'],
  });
  try {
    const last = result.inputIds.length - 1; // the prompt's last position: it chooses the first answer token
    const lastRows = Object.values(result.taps).map((p) => p.slice([0, 0, last, 0], [1, -1, 1, -1]));
    const layout: TileLayout = { grid: inputs.grids[0], tokensPerFrame: model.numImageToken, framesPerTile: model.tokensPerTile(1) / model.numImageToken };
    const map = imageAttentionMap(lastRows, result.imageTokenPositions, layout);
    tf.dispose(lastRows);
    const total = map.map.reduce((a, b) => a + b, 0);
    const cx = Math.min(map.width - 1, Math.floor(object.x * map.width));
    const cy = Math.min(map.height - 1, Math.floor(object.y * map.height));
    const { w, h } = record.scenes[0];
    return {
      onObjectCell: map.map[cy * map.width + cx] / total,
      cellArea: 1 / (map.width * map.height),
      objectArea: (Math.PI * (object.r * Math.min(w, h)) ** 2) / (w * h),
      map,
    };
  } finally {
    result.dispose();
    inputs.pixelValues.dispose();
  }
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

async function measure(model: PVCModel, set: ScenesEval) {
  // Single-image questions that name one object, on wide or tall images (2 x 1 tiles: an 8 x 4 token grid, one cell per object).
  const records = set.questions.filter((r) => (r.kind === 'colour' || r.kind === 'shape' || r.kind === 'position') && r.num_patches_list[0] > 1);
  let on = 0;
  let cell = 0;
  let area = 0;
  for (const r of records) {
    const s = await attentionOnObject(model, set, r, askedObject(r)!);
    on += s.onObjectCell / records.length;
    cell += s.cellArea / records.length;
    area += s.objectArea / records.length;
  }
  console.log(
    `${records.length} questions naming one object (2-tile images): attention on the object's cell ${pct(on)} on average, ` +
      `the cell's share of the area ${pct(cell)}, the object's own ${pct(area)}`,
  );
}

async function main() {
  const dir = modelDir();
  const model = await PVCModel.load(dir);
  const tokenizer = model.tokenizer;
  const set = readScenesEval();
  if (process.argv.includes('--measure')) {
    await measure(model, set);
    model.dispose();
    return;
  }

  // One question of each kind, and one more video.
  const picks = ['colour-000', 'shape-000', 'exists-000', 'count-000', 'position-000', 'multi-000', 'video-000', 'video-001'];
  let right = 0;
  for (const id of picks) {
    const record = set.questions.find((r) => r.id === id)!;
    const t = Date.now();
    const answer = await askScene(model, tokenizer, set, record);
    right += answer === record.answer ? 1 : 0;
    const files = record.files.length > 2 ? `${record.files[0]} .. ${record.files.length} frames` : record.files.join(', ');
    console.log(
      `[${record.kind}] ${files}\n  Q: ${record.question.split('\n').pop()}\n  A: ${answer}   (true: ${record.answer}) ${answer === record.answer ? 'right' : 'WRONG'} ${seconds(t)}`,
    );
  }
  console.log(`${right} of ${picks.length} right (the whole held-out set: npm test -- scenes)`);

  // Where it looked: a colour question about one object of a wide image.
  const record = set.questions.find((r) => r.kind === 'colour' && r.num_patches_list[0] > 1)!;
  const object = askedObject(record)!;
  const share = await attentionOnObject(model, set, record, object);
  const i = process.argv.indexOf('--out');
  const out = i >= 0 ? process.argv[i + 1] : path.join(process.cwd(), 'inspect-out');
  fs.mkdirSync(out, { recursive: true });
  const png = path.join(out, `${record.id}-heatmap.png`);
  fs.writeFileSync(png, await renderHeatmap(path.join(set.dir, record.files[0]), share.map));
  console.log(
    `heatmap for "${record.question.split('\n').pop()}" (${record.files[0]}): ${path.relative(process.cwd(), png)}\n` +
      `  attention on the ${object.shape}'s cell: ${pct(share.onObjectCell)} (the cell is ${pct(share.cellArea)} of the image, the ${object.shape} ${pct(share.objectArea)})`,
  );
  model.dispose();
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}

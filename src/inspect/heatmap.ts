// Attention over an image: the attention of generated tokens to the image's visual tokens, laid out
// on the image's tile grid, and rendered over the image as a heatmap (sharp).
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { decodeRGB } from '../preprocess/image';

/** Where each tile sits in the image (cols x rows grid, thumbnail excluded) and its visual tokens per frame. */
export interface TileLayout {
  grid: [number, number];
  /** Tokens of one frame of a tile form a g x g grid. */
  tokensPerFrame: number;
  /** Frames per tile (PVC's image repeats; 1 for InternVL2). */
  framesPerTile: number;
}

/**
 * Average attention from generated tokens to each visual token of one image, laid out on the image:
 * a [rows * g, cols * g] map (tiles of the grid only; the thumbnail, if any, is left out).
 * `stepProbs` are llm attention probabilities [1, heads, 1, keys] of the generation steps (any layers).
 */
export function imageAttentionMap(stepProbs: tf.Tensor[], imagePositions: number[], layout: TileLayout): { map: Float32Array; width: number; height: number } {
  const perImageToken = new Float32Array(imagePositions.length);
  for (const probs of stepProbs) {
    const p = tf.tidy(() => tf.mean(probs, [0, 1, 2]).dataSync() as Float32Array); // average heads -> [keys]
    imagePositions.forEach((pos, k) => (perImageToken[k] += p[pos] / stepProbs.length));
  }
  const [cols, rows] = layout.grid;
  const g = Math.round(Math.sqrt(layout.tokensPerFrame));
  const map = new Float32Array(rows * g * cols * g);
  const perTile = layout.tokensPerFrame * layout.framesPerTile;
  for (let tile = 0; tile < cols * rows; tile++) {
    const tr = Math.floor(tile / cols);
    const tc = tile % cols;
    for (let f = 0; f < layout.framesPerTile; f++) {
      for (let t = 0; t < layout.tokensPerFrame; t++) {
        const v = perImageToken[tile * perTile + f * layout.tokensPerFrame + t] / layout.framesPerTile;
        const y = tr * g + Math.floor(t / g);
        const x = tc * g + (t % g);
        map[y * cols * g + x] += v;
      }
    }
  }
  return { map, width: cols * g, height: rows * g };
}

/** A heat colour (black, red, yellow, white) for t in [0, 1]. */
function heatColor(t: number): [number, number, number] {
  const c = (x: number) => Math.round(255 * Math.min(Math.max(x, 0), 1));
  return [c(3 * t), c(3 * t - 1), c(3 * t - 2)];
}

/** Renders an attention map over an image (same size as the image) as PNG bytes. */
export async function renderHeatmap(
  imageFile: string | Buffer,
  attention: { map: Float32Array; width: number; height: number },
  opacity = 0.55,
): Promise<Buffer> {
  // The image as the model saw it (decoded as Pillow does, within its pixel limits).
  const image = await decodeRGB(imageFile);
  const { width, height } = image;
  const base = sharp(Buffer.from(image.data.buffer, image.data.byteOffset, image.data.length), { raw: { width, height, channels: 3 } });
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of attention.map) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const rgba = Buffer.alloc(attention.width * attention.height * 4);
  attention.map.forEach((v, i) => {
    const [r, g, b] = heatColor(hi > lo ? (v - lo) / (hi - lo) : 0);
    rgba.set([r, g, b, Math.round(255 * opacity)], i * 4);
  });
  const overlay = await sharp(rgba, { raw: { width: attention.width, height: attention.height, channels: 4 } })
    .resize(width, height, { kernel: 'cubic', fit: 'fill' })
    .png()
    .toBuffer();
  return base
    .composite([{ input: overlay }])
    .png()
    .toBuffer();
}

// The projector between InternViT and the LLM (upstream's extract_feature after the ViT):
//   drop CLS -> pixel shuffle (space-to-depth by 1/downsample_ratio) -> mlp1 = LayerNorm, Linear, GELU, Linear
import * as tf from '@tensorflow/tfjs';
import { ModelConfig } from '../config';
import { Weights } from '../io/weights';
import { gelu, Kernels, LayerNorm, Linear, Tap } from '../nn/layers';

/**
 * Pixel shuffle of a [N, G, G, C] grid with s = 1/ratio: output cell (i, j) concatenates, for di, dj in
 * 0..s-1, the cells (s*i + di, s*j + dj), giving [N, (G/s)^2, s*s*C] row-major. `v1` (upstream's first
 * version) leaves the output grid transposed: token index j*(G/s) + i holds cell (i, j).
 */
export function pixelShuffle(grid: tf.Tensor4D, ratio: number, version: 'v1' | 'v2'): tf.Tensor3D {
  const [N, G, G2, C] = grid.shape;
  const s = Math.round(1 / ratio);
  if (G !== G2 || G % s !== 0) throw new Error(`pixel shuffle: a ${G}x${G2} grid does not divide by 1/downsample_ratio = ${s}`);
  const g = G / s;
  const cells = grid.reshape([N, g, s, g, s, C]); // [N, i, di, j, dj, C]
  const order = version === 'v2' ? [0, 1, 3, 2, 4, 5] : [0, 3, 1, 2, 4, 5];
  return cells.transpose(order).reshape([N, g * g, s * s * C]) as tf.Tensor3D;
}

export class Projector {
  readonly norm: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(
    w: Weights,
    readonly config: ModelConfig,
    kernels: Kernels,
  ) {
    this.norm = new LayerNorm(w, 'projector.norm', config.projector.layer_norm_eps);
    this.fc1 = new Linear(w, 'projector.fc1', true, kernels);
    this.fc2 = new Linear(w, 'projector.fc2', true, kernels);
  }

  tapNames(): string[] {
    return ['projector.out'];
  }

  /** ViT hidden state [N, G*G + 1, C] -> visual tokens [N, (G*r)^2, D]. Call inside tf.tidy. */
  forward(vitOut: tf.Tensor3D, tap?: Tap): tf.Tensor3D {
    const [N, T, C] = vitOut.shape;
    const G = Math.round(Math.sqrt(T - 1));
    if (G * G !== T - 1) throw new Error(`projector: ${T - 1} patch tokens do not form a square grid`);
    const grid = vitOut.slice([0, 1, 0], [N, T - 1, C]).reshape([N, G, G, C]) as tf.Tensor4D;
    const shuffled = pixelShuffle(grid, this.config.downsample_ratio, this.config.ps_version);
    const tokens = this.fc2.forward(gelu(this.fc1.forward(this.norm.forward(shuffled))));
    if (tap) tap('projector.out', tokens);
    return tokens;
  }
}

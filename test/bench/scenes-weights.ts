// The scenes toy's held-out set (700 questions) answered with each weight mode on the tensorflow backend:
// accuracy per kind and how many answers equal float32's (README, "Weights in memory").
//   npx tsx test/bench/scenes-weights.ts
import { askScene, readScenesEval } from '../../examples/scenes';
import { PVCModel } from '../../src/pvc_model';
import { convertFixture } from '../helpers';
import { LoadOptions } from '../../src/model/vlm';
async function main() {
  const dir = convertFixture('scenes-pvc');
  const set = readScenesEval();
  const modes: [string, LoadOptions][] = [
    ['float32', { weights: 'float32' }],
    ['bfloat16', { weights: 'bfloat16' }],
    ['bfloat16-fast', { weights: 'bfloat16', matmul: 'fast' }],
    ['int8', { weights: 'int8' }],
  ];
  const base: string[] = [];
  for (const [name, o] of modes) {
    const model = await PVCModel.load(dir, { backend: 'tensorflow', ...o });
    const by: Record<string, [number, number]> = {};
    let same = 0;
    for (const [i, r] of set.questions.entries()) {
      const a = await askScene(model, model.tokenizer, set, r);
      if (name === 'float32') base.push(a);
      else if (a === base[i]) same++;
      by[r.kind] ??= [0, 0];
      by[r.kind][0] += a === r.answer ? 1 : 0;
      by[r.kind][1]++;
    }
    model.dispose();
    console.log(
      JSON.stringify({
        mode: name,
        oneDNN: process.env.TF_ENABLE_ONEDNN_OPTS ?? '0',
        n: set.questions.length,
        sameAsFloat32: name === 'float32' ? null : same,
        accuracy: Object.fromEntries(Object.entries(by).map(([k, [a, n]]) => [k, +(a / n).toFixed(3)])),
      }),
    );
  }
}
main();

// Single image: the PVC quick start's first example.
//   npx tsx examples/chat-image.ts [--model DIR]
import { loadImage, PVCModel } from '../src';
import { exampleInput, modelDir, seconds } from './common';

async function main() {
  const dir = modelDir();
  let t = Date.now();
  const model = await PVCModel.load(dir);
  console.log(`loaded ${dir} in ${seconds(t)}`);

  t = Date.now();
  const image = await loadImage(exampleInput('image1.jpg'), { inputSize: model.config.image_size, maxNum: 12 });
  console.log(`image: ${image.width}x${image.height} -> ${image.numPatches} tiles in ${seconds(t)}`);
  const perTile = model.tokensPerTile(1);
  console.log(
    `visual tokens: ${image.numPatches * perTile} (${perTile} per tile` +
      (model.config.pvc ? `: ${model.config.pvc.image_repeat_time} frames of ${model.numImageToken} tokens)` : ')'),
  );

  const question = '<image>\nWhat is in the image?';
  t = Date.now();
  const response = await model.chat(image.pixelValues, question, { maxNewTokens: 64, doSample: false }, { dataFlag: 1 });
  console.log(`User: ${question}\nAssistant: ${response}\n(${seconds(t)})`);
  image.pixelValues.dispose();
  model.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

// Two images in one question: the PVC quick start's second example.
//   npx tsx examples/chat-multi-image.ts [--model DIR]
import * as tf from '@tensorflow/tfjs';
import { loadImage, loadTokenizer, PVCModel, withImagePlaceholders } from '../src';
import { exampleInput, modelDir, seconds } from './common';

async function main() {
  const dir = modelDir();
  const model = await PVCModel.load(dir);
  const tokenizer = await loadTokenizer(dir);
  const options = { inputSize: model.config.image_size, maxNum: 12 };
  const image1 = await loadImage(exampleInput('image1.jpg'), options);
  const image2 = await loadImage(exampleInput('image2.jpg'), options);
  const pixelValues = tf.concat([image1.pixelValues, image2.pixelValues]) as tf.Tensor4D;
  const numPatchesList = [image1.numPatches, image2.numPatches];
  console.log(`images: ${numPatchesList.join(' + ')} tiles`);
  const perTile = model.tokensPerTile(2);
  console.log(`visual tokens: ${numPatchesList.reduce((a, b) => a + b, 0) * perTile} (${perTile} per tile)`);

  const question = withImagePlaceholders('What are the similarities and differences between these two images.', 2, 'images');
  const t = Date.now();
  const response = await model.chat(tokenizer, pixelValues, question, { maxNewTokens: 64, doSample: false }, { dataFlag: 2, numPatchesList });
  console.log(`User: ${question}\nAssistant: ${response}\n(${seconds(t)})`);
  tf.dispose([image1.pixelValues, image2.pixelValues, pixelValues]);
  model.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

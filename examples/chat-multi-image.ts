// Two images in one question: the PVC quick start's second example.
//   npx tsx examples/chat-multi-image.ts [--model DIR]
import { loadChatInputs, PVCModel } from '../src';
import { exampleInput, modelDir, seconds } from './common';

async function main() {
  const dir = modelDir();
  const model = await PVCModel.load(dir);
  const files = { images: [exampleInput('image1.jpg'), exampleInput('image2.jpg')] };
  const { inputs } = await loadChatInputs(files, { inputSize: model.config.image_size, maxNum: 12 });
  const { pixelValues, numPatchesList, dataFlag } = inputs;
  console.log(`images: ${numPatchesList!.join(' + ')} tiles`);
  const perTile = model.tokensPerTile(2);
  console.log(`visual tokens: ${pixelValues!.shape[0] * perTile} (${perTile} per tile)`);

  const question = inputs.withPlaceholders('What are the similarities and differences between these two images.');
  const t = Date.now();
  const response = await model.chat(pixelValues, question, { maxNewTokens: 64, doSample: false }, { dataFlag, numPatchesList });
  console.log(`User: ${question}\nAssistant: ${response}\n(${seconds(t)})`);
  pixelValues!.dispose();
  model.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

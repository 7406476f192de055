// A video: the PVC quick start's third example (frames sampled uniformly, one tile each), streamed.
//   npx tsx examples/chat-video.ts [--model DIR] [--frames N]
import { loadChatInputs, PVCModel } from '../src';
import { exampleInput, modelDir, seconds } from './common';

async function main() {
  const dir = modelDir();
  const model = await PVCModel.load(dir);
  const i = process.argv.indexOf('--frames');
  const numFrames = i >= 0 ? Number(process.argv[i + 1]) : 64;
  let t = Date.now();
  const { media, inputs } = await loadChatInputs({ video: exampleInput('video.mp4') }, { inputSize: model.config.image_size, numFrames });
  const video = media!.video!;
  console.log(`video: ${video.frameCount} frames at ${video.fps.toFixed(2)} fps -> ${video.frameIndices.length} sampled in ${seconds(t)}`);
  const c = model.config;
  const at448 = (448 / c.vision.patch_size) ** 2 * c.downsample_ratio ** 2; // the same formula at the real tile size
  console.log(
    `visual tokens: ${video.frameIndices.length * model.tokensPerTile(3)} (${model.tokensPerTile(3)} per frame at ${c.image_size} px; ${at448} per frame at 448 px)`,
  );

  const question = inputs.withPlaceholders('Describe this video in detail.');
  console.log(`User: Frame1: <image>\n ... Frame${video.numPatchesList.length}: <image>\nDescribe this video in detail.\nAssistant: `);
  t = Date.now();
  const { pixelValues, numPatchesList, dataFlag } = inputs;
  for await (const piece of model.stream(pixelValues, question, { maxNewTokens: 64, doSample: false }, { dataFlag, numPatchesList }))
    process.stdout.write(piece);
  console.log(`\n(${seconds(t)})`);
  pixelValues!.dispose();
  model.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

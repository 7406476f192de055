// Live video on the scenes toy: a held-out clip of a moving shape (8 frames) fed to a live session one
// frame at a time, with "Which way does the circle move?" asked after each frame. Each frame costs its
// own tokens (the caches of the earlier ones are kept); each question is answered from a fork of the
// cache. At the end, the answer after 8 frames is checked against model.chat on the whole clip. The toy
// was trained on whole 8-frame clips only: its answers before the 8th frame are outside what it learnt.
//   npx tsx examples/live-video.ts [--model DIR]
import { PVCModel } from '../src';
import { modelDir } from './common';
import { readScenesEval, sceneInputs } from './scenes';

async function main() {
  const model = await PVCModel.load(modelDir());
  const set = readScenesEval();
  // A clip whose circle moves (the toy was trained on such clips: train_scenes.py's "move" event).
  const record = set.questions.find((r) => r.event === 'move' && r.question.endsWith('Which way does the circle move?'))!;
  const question = 'Which way does the circle move?';
  const generation = model.generationConfig({ maxNewTokens: 4 });
  console.log(`clip ${record.id}: ${record.files.length} frames; the circle moves ${record.answer}`);

  const live = model.liveVideo();
  try {
    for (const file of record.files) {
      let t = performance.now();
      await live.addFrame(`${set.dir}/${file}`);
      const frameMs = performance.now() - t;
      t = performance.now();
      const { answer } = await live.ask(question, generation);
      console.log(
        `frame ${live.frames}: added in ${frameMs.toFixed(0)} ms (${live.positions} positions cached); ` +
          `"${question}" -> ${answer} (${(performance.now() - t).toFixed(0)} ms)`,
      );
    }
    // The same question on the whole clip at once: chat() re-encodes every frame and reads the whole prompt.
    const inputs = await sceneInputs(model, set, record);
    const t = performance.now();
    const whole = await model.chat(inputs.pixelValues, record.question, { maxNewTokens: 4 }, { dataFlag: 3, numPatchesList: inputs.numPatchesList });
    inputs.pixelValues.dispose();
    const last = await live.ask(question, generation);
    console.log(`model.chat on all ${record.files.length} frames: ${whole} (${(performance.now() - t).toFixed(0)} ms); live: ${last.answer}`);
    if (whole !== last.answer) throw new Error('the live answer differs from chat on the same frames');
  } finally {
    live.dispose();
    model.dispose();
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

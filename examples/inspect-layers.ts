// Opening the model up: per-layer states, attention maps, the logit lens, an attention heatmap and the HTML report.
//   npx tsx examples/inspect-layers.ts [--model DIR] [--out DIR]
import * as fs from 'fs';
import * as path from 'path';
import { formatSummaries, imageAttentionMap, loadImage, logitLens, PVCModel, renderHeatmap, summarize } from '../src';
import { exampleInput, modelDir } from './common';

async function main() {
  const dir = modelDir();
  const i = process.argv.indexOf('--out');
  const out = i >= 0 ? process.argv[i + 1] : path.join(process.cwd(), 'inspect-out');
  const model = await PVCModel.load(dir);
  const file = exampleInput('image1.jpg');
  const image = await loadImage(file, { inputSize: model.config.image_size, maxNum: 12 });

  // Taps are names or globs; see the tree in src/inspect/taps.ts (model.tapNames() lists them all).
  const result = await model.inspect({
    pixelValues: image.pixelValues,
    question: 'What is in the image?',
    dataFlag: 1,
    taps: ['vision.layers.*.out', 'projector.out', 'llm.layers.*.attn.probs', 'llm.layers.*.out', 'llm.logits'],
    generate: { maxNewTokens: 8 },
  });
  console.log(formatSummaries(Object.entries(result.taps).map(([name, t]) => summarize(name, t))));
  console.log(
    `${result.steps.length} generation steps recorded, ${result.imageTokenPositions.length} image tokens in a ${result.inputIds.length}-token prompt`,
  );

  // Logit lens: what each LLM layer would predict next, at the last prompt position.
  const states = new Map(
    Object.entries(result.taps)
      .filter(([n]) => /^llm\.layers\.\d+\.out$/.test(n))
      .map(([n, t]) => [Number(n.split('.')[2]), t]),
  );
  for (const layer of logitLens(model.llm, model.tokenizer, states, 3)) {
    console.log(`layer ${layer.layer}: ${layer.top.map((t) => `${JSON.stringify(t.token)} (${t.prob.toFixed(3)})`).join(', ')}`);
  }

  // Where the generated tokens looked: attention to the image tokens, over the image.
  const probs = result.steps.flatMap((step) =>
    Object.entries(step)
      .filter(([n]) => n.endsWith('attn.probs'))
      .map(([, t]) => t),
  );
  const layout = { grid: image.grid, tokensPerFrame: model.numImageToken, framesPerTile: model.tokensPerTile(1) / model.numImageToken };
  fs.mkdirSync(out, { recursive: true });
  const png = path.join(out, 'heatmap.png');
  fs.writeFileSync(png, await renderHeatmap(file, imageAttentionMap(probs, result.imageTokenPositions, layout)));
  console.log(`heatmap: ${png}`);

  // All of it (and per-layer, per-head attention) in one self-contained page to open in a browser.
  const report = path.join(out, 'report.html');
  fs.writeFileSync(report, await result.toHTML({ images: [{ source: file, ...image }] }));
  console.log(`report: ${report}`);

  result.dispose();
  image.pixelValues.dispose();
  model.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

// `npm run report:screenshots`: the README's pictures of the HTML report, one per section, from the
// scenes toy (weights/scenes-pvc) in headless Chromium (Debian's chromium, or PVC_CHROMIUM): the star
// question of colour-008 and the 8-frame video-008. Written to examples/media/report/*.png (palette
// PNGs, small), each file whole or not at all.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import sharp from 'sharp';
import { chromium } from 'playwright-core';
import { readScenesEval, sceneReport } from '../examples/scenes';
import { PVCModel } from '../src/pvc_model';

const OUT = path.join(__dirname, '..', 'examples', 'media', 'report');

/** Sections to picture: [file name, report, CSS selector]. */
const SHOTS: [string, 'star' | 'video', string][] = [
  ['summary', 'star', '#summary'],
  ['overview', 'star', '#overview'],
  ['pictures', 'star', '#attention .panels'],
  ['prompt-attention', 'star', '#text'],
  ['lens', 'star', '#lens'],
  ['frames', 'video', '#attention .panels'],
  ['frame-bars', 'video', '#frame-bars'],
  ['temporal', 'video', '#temporal-section'],
  ['stats', 'star', '#stats-section'],
];

async function main() {
  const browserPath = process.env.PVC_CHROMIUM ?? execFileSync('which', ['chromium'], { encoding: 'utf8' }).trim();
  const model = await PVCModel.load(path.relative(process.cwd(), path.join(__dirname, '..', 'weights', 'scenes-pvc')));
  const set = readScenesEval();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-shots-'));
  const files = { star: path.join(work, 'star.html'), video: path.join(work, 'video.html') };
  fs.writeFileSync(
    files.star,
    await sceneReport(
      model,
      set,
      set.questions.find((r) => r.id === 'colour-008')!,
    ),
  );
  fs.writeFileSync(
    files.video,
    await sceneReport(
      model,
      set,
      set.questions.find((r) => r.id === 'video-008')!,
    ),
  );
  model.dispose();
  fs.mkdirSync(OUT, { recursive: true });
  const browser = await chromium.launch({ executablePath: browserPath, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    for (const [name, report, selector] of SHOTS) {
      await page.goto('file://' + files[report]);
      await page.waitForFunction('window.pvcReportReady === true');
      const raw = await page.locator(selector).first().screenshot();
      const png = await sharp(raw).png({ palette: true, compressionLevel: 9 }).toBuffer();
      const file = path.join(OUT, `${name}.png`);
      fs.writeFileSync(file + '.partial', png);
      fs.renameSync(file + '.partial', file);
      console.log(`${path.relative(process.cwd(), file)} (${png.length} bytes)`);
    }
  } finally {
    await browser.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

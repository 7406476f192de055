// The `pvc` command: chat (--json) and inspect (files written), on the tiny model.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { PVCModel } from '../src/pvc_model';
import { main } from '../src/cli/main';
import { loadImage } from '../src/preprocess/image';
import { SafetensorsFile } from '../src/io/safetensors';
import { captureOutput, convertFixture, FIXTURES, MEDIA } from './helpers';

// A committed 1000x747 JPEG made by the preprocessing oracle (the shared example image's size).
const IMAGE = path.join(FIXTURES, 'images', 'odd-1000x747-max6.jpg');
let dir: string;
let out: string;
const output = captureOutput();

beforeAll(() => {
  dir = convertFixture('tiny-internvl2');
  out = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-cli-'));
});
afterAll(() => {
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  fs.rmSync(out, { recursive: true, force: true });
});

test('pvc chat --json answers and reports timings', async () => {
  expect(await main(['chat', '--model', dir, '--image', IMAGE, '--max-new-tokens', '6', '--backend', 'wasm', '--json', 'What is in the image?'])).toBe(0);
  const result = JSON.parse(output.stdout().trim().split('\n').pop()!);
  expect(result).toMatchObject({ question: 'What is in the image?', numPatchesList: [13], tokens: 6, tiles: 13, backend: 'wasm' });
  expect(typeof result.answer).toBe('string');
  expect(result.prefillSeconds).toBeGreaterThan(0);
});

test("pvc chat --num-beams / --length-penalty / --early-stopping / --stop give chat()'s answer with those options", async () => {
  const argv = ['chat', '--model', dir, '--image', IMAGE, '--max-new-tokens', '6', '--backend', 'wasm', '--json'];
  const beams = ['--num-beams', '3', '--length-penalty', '0.5', '--early-stopping', 'never'];
  expect(await main([...argv, ...beams, 'What is in the image?'])).toBe(0);
  const report = JSON.parse(output.stdout().trim().split('\n').pop()!);
  expect(report).toMatchObject({ numBeams: 3, prefillSeconds: null, tokensPerSecond: null });
  expect(report.searchSeconds).toBeGreaterThan(0);
  const free = report.answer as string;
  const model = await PVCModel.load(dir, { backend: 'wasm' });
  const img = await loadImage(IMAGE, { inputSize: model.config.image_size, maxNum: model.config.max_dynamic_patch });
  const generation = { maxNewTokens: 6, doSample: false, numBeams: 3, lengthPenalty: 0.5, earlyStopping: 'never' as const };
  expect(free).toBe(await model.chat(img.pixelValues, 'What is in the image?', generation, { dataFlag: 1 }));
  const stop = free.slice(2, 4);
  expect(await main([...argv, ...beams, '--stop', 'never there', '--stop', stop, 'What is in the image?'])).toBe(0);
  const cut = JSON.parse(output.stdout().trim().split('\n').pop()!).answer as string;
  expect(cut).toBe(await model.chat(img.pixelValues, 'What is in the image?', { ...generation, stop: ['never there', stop] }, { dataFlag: 1 }));
  expect(cut).not.toContain(stop);
  img.pixelValues.dispose();
  model.dispose();
  expect(await main([...argv, '--early-stopping', 'maybe', 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/--early-stopping expects true, false or never, not maybe/);
});

test("pvc inspect writes taps, a summary and a heatmap of the image's size", async () => {
  expect(
    await main([
      'inspect',
      '--model',
      dir,
      '--image',
      IMAGE,
      '--taps',
      'vision.layers.{1..2}.out',
      'llm.logits',
      '--out',
      out,
      '--heatmap',
      '--logit-lens',
      '--max-new-tokens',
      '3',
      '--backend',
      'wasm',
      'What is in the image?',
    ]),
  ).toBe(0);
  expect(fs.readdirSync(out).sort()).toEqual(['heatmap.png', 'logit-lens.json', 'summary.txt', 'taps.safetensors']);
  const taps = SafetensorsFile.open(path.join(out, 'taps.safetensors'));
  expect(taps.names).toEqual(
    expect.arrayContaining(['vision.layers.1.out', 'vision.layers.2.out', 'llm.logits', 'step0.llm.logits', 'llm.layers.0.attn.probs']),
  );
  taps.close();
  expect(fs.readFileSync(path.join(out, 'summary.txt'), 'utf8')).toMatch(/^name\s+shape\s+mean\s+std\s+min\s+max/);
  const meta = await sharp(path.join(out, 'heatmap.png')).metadata();
  expect([meta.width, meta.height]).toEqual([1000, 747]);
});

test('pvc inspect --html writes one self-contained report with the taps it needs, and prints the answer', async () => {
  const file = path.join(out, 'report.html');
  expect(await main(['inspect', '--model', dir, '--image', IMAGE, '--html', file, '--max-new-tokens', '2', '--backend', 'wasm', 'What is in the image?'])).toBe(
    0,
  );
  expect(output.stdout()).toContain(`report: ${file} (`);
  const data = JSON.parse(/<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/.exec(fs.readFileSync(file, 'utf8'))![1]);
  expect(output.stdout()).toContain(`answer: ${data.answer}\n`);
  expect(data.title).toBe('[image] What is in the image?');
  expect(data.attention.layers).toEqual([0, 1]);
  // The embeddings row (llm.embeds), then the layers.
  expect(data.lens.layers).toEqual([-1, 0, 1]);
  expect(data.panels.map((p: { label: string }) => p.label)).toEqual(['image: 4x3 tiles', 'image: thumbnail (the whole image as one tile)']);
  expect(fs.readdirSync(out).filter((f) => f.includes('.partial-'))).toEqual([]);
});

test('pvc inspect --html takes several images, and a video as its frame images (--frame, --frames-from)', async () => {
  const reportOf = (file: string) => JSON.parse(/id="report-data">([\s\S]*?)<\/script>/.exec(fs.readFileSync(file, 'utf8'))![1]);
  const two = path.join(out, 'two.html');
  const base = ['inspect', '--model', dir, '--max-new-tokens', '1', '--backend', 'wasm'];
  expect(await main([...base, '--image', IMAGE, '--image', MEDIA.image2, '--html', two, 'Compare them.'])).toBe(0);
  const images = reportOf(two);
  expect(images.model.dataFlag).toBe(2);
  expect(images.panels.map((p: { label: string }) => p.label.split(':')[0])).toEqual(['Image-1', 'Image-1', 'Image-2', 'Image-2']);
  expect(images.title).toBe('[2 images] Compare them.');
  // Frames in a folder, taken in name order (frame10 after frame2); other files are ignored.
  const frames = path.join(out, 'frames');
  fs.mkdirSync(frames);
  for (const [i, name] of ['frame1.png', 'frame2.jpg', 'frame10.png'].entries())
    await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 80 * i, g: 40, b: 200 - 80 * i } } }).toFile(path.join(frames, name));
  fs.writeFileSync(path.join(frames, 'notes.txt'), 'not a frame');
  const video = path.join(out, 'frames.html');
  expect(await main([...base, '--frames-from', frames, '--html', video, 'What happens?'])).toBe(0);
  const v = reportOf(video);
  expect(v.model.dataFlag).toBe(3);
  expect(v.panels.map((p: { label: string; aspect: number }) => [p.label, p.aspect])).toEqual([
    ['Frame1', 64 / 48],
    ['Frame2', 64 / 48],
    ['Frame3', 64 / 48],
  ]);
  expect(v.title).toBe('[3 frames] What happens?');
  const same = path.join(out, 'frames2.html');
  const files = ['frame1.png', 'frame2.jpg', 'frame10.png'].map((f) => path.join(frames, f));
  expect(await main([...base, ...files.flatMap((f) => ['--frame', f]), '--html', same, 'What happens?'])).toBe(0);
  expect(reportOf(same)).toEqual(v);
  expect(await main([...base, '--frames-from', frames, '--frame', files[0], '--html', same, 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/give --frame FILE \.\.\. or --frames-from DIR, not both/);
  expect(await main([...base, '--frames-from', path.join(out, 'nowhere'), '--html', same, 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/--frames-from .*nowhere: ENOENT/);
  expect(await main([...base, '--image', IMAGE, '--frame', files[0], '--html', same, 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/give --image, --video or the frames of a video \(--frame, --frames-from\), one of them/);
});

test('usage errors exit 2 and say what is wrong', async () => {
  expect(await main(['chat', '--model', dir])).toBe(2);
  expect(output.stderr()).toMatch(/expected one question, got 0 argument\(s\)/);
  expect(await main(['inspect', '--model', dir, 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/--out DIR or --html FILE is required/);
  expect(await main(['frobnicate'])).toBe(2);
  expect(output.stderr()).toMatch(/unknown command 'frobnicate'/);
});

test('every command checks its options as it parses them: unknown, repeated and bad values are errors naming the option', async () => {
  const html = path.join(out, 'never.html');
  const cases: [string[], RegExp][] = [
    [['chat', '--model', dir, '--bogus', 'q'], /^pvc chat: unknown option --bogus$/m],
    [['inspect', '--model', dir, '--html', html, '-x', 'q'], /^pvc inspect: unknown option -x$/m],
    [['serve', '--model', dir, '--bogus'], /^pvc serve: unknown option --bogus$/m],
    // One model, one switch.
    [['chat', '--model', dir, '--model', dir, 'q'], /^pvc chat: --model was given more than once/m],
    [['chat', '--model', dir, '--json', '--json', 'q'], /^pvc chat: --json was given more than once$/m],
    [['serve', '--model', dir, '--port', '1', '--port', '2'], /^pvc serve: --port was given more than once/m],
    // Numbers are numbers, in range.
    [['chat', '--model', dir, '--max-new-tokens', 'ten', 'q'], /^pvc chat: --max-new-tokens expects an integer >= 0, not ten$/m],
    [['chat', '--model', dir, '--sample', '--top-p', '1.5', 'q'], /^pvc chat: --top-p expects a number in \(0, 1\], not 1\.5$/m],
    [['chat', '--model', dir, '--num-beams=0', 'q'], /^pvc chat: --num-beams expects an integer from 1 to 64, not 0$/m],
    [['inspect', '--model', dir, '--video', IMAGE, '--frames', '2.5', '--html', html, 'q'], /^pvc inspect: --frames expects an integer >= 1, not 2\.5$/m],
    [['serve', '--model', dir, '--port', '70000'], /^pvc serve: --port expects an integer from 0 to 65535, not 70000$/m],
    [['serve', '--model', dir, '--max-queue', '-1'], /^pvc serve: --max-queue expects an integer >= 0, not -1$/m],
    // Words in their set, values present.
    [['chat', '--model', dir, '--backend', 'gpu', 'q'], /^pvc chat: --backend expects tensorflow, wasm, cpu or webgpu, not gpu$/m],
    [['chat', '--model', '--image', IMAGE, 'q'], /^pvc chat: --model needs a value$/m],
    [['chat', '--model', dir, '--image=', 'q'], /^pvc chat: --image needs a non-empty value$/m],
    [['doctor', '--json=yes'], /^pvc doctor: --json takes no value$/m],
    [['watch', '--model', dir, '--ask', 'q'], /^pvc watch: give --video FILE\|URL or --stdin \(one of them\)$/m],
    [['eval', '--benchmark', 'mvbench', '--data', out], /^pvc eval: --out FILE\.jsonl is required$/m],
    [['eval', '--benchmark', 'imagenet', '--data', out, '--out', html], /^pvc eval: --benchmark expects mvbench or mmbench, not imagenet$/m],
    [['eval', 'worker', '--model', dir, '--data', out], /^pvc eval worker: --queue redis:\/\/HOST:PORT is required$/m],
    [['eval', 'worker', '--queue', 'redis://127.0.0.1:1', '--model', dir, '--data', out, '--out', html], /^pvc eval worker: --out is the coordinator's/m],
    [
      ['eval', 'worker', '--queue', 'redis://127.0.0.1:1', '--model', dir, '--data', out, '--lock-seconds', '0'],
      /^pvc eval worker: --lock-seconds expects a number from 1 to 86400, not 0$/m,
    ],
    [['eval', '--benchmark', 'mvbench', '--data', out, '--out', html, '--queue', 'http://x'], /^pvc eval: --queue http:\/\/x: expected redis:\/\/HOST:PORT$/m],

    [['watch', '--model', dir, '--stdin'], /^pvc watch: --stdin takes the video from stdin: give the questions with --ask$/m],
    [['watch', '--model', dir, '--video', MEDIA.video, '--every', '2'], /^pvc watch: --every applies to --ask$/m],
    [['watch', '--model', dir, '--video', MEDIA.video, '--fps', '0'], /^pvc watch: --fps expects a number in \(0, 240\], not 0$/m],
  ];
  for (const [argv, message] of cases) {
    expect([argv, await main(argv)]).toEqual([argv, 2]);
    expect(output.stderr()).toMatch(message);
  }
  expect(fs.existsSync(html)).toBe(false);
});

test("--max-pixels: Pillow's decompression-bomb limit, a warning above it and an error above twice it", async () => {
  expect(await main(['chat', '--model', dir, '--image', IMAGE, '--max-pixels', '300000', '--backend', 'wasm', 'q'])).toBe(1);
  expect(output.stderr()).toMatch(/odd-1000x747-max6\.jpg: image size 1000x747 \(747000 pixels\) exceeds the limit of 600000 pixels .*--max-pixels/);
  expect(await main(['chat', '--model', dir, '--image', IMAGE, '--max-pixels', '700000', '--max-new-tokens', '1', '--backend', 'wasm', '--json', 'q'])).toBe(0);
  expect(output.stderr()).toMatch(/odd-1000x747-max6\.jpg: image size 1000x747 \(747000 pixels\) exceeds maxPixels = 700000 \(CLI --max-pixels\)/);
});

test('flags that would be ignored are said so: sampling options without --sample warn, --frames with an image and a still image as --video are errors', async () => {
  expect(
    await main(['chat', '--model', dir, '--image', IMAGE, '--temperature', '0.7', '--top-k', '5', '--max-new-tokens', '1', '--backend', 'wasm', '--json', 'q']),
  ).toBe(0);
  expect(output.stderr()).toMatch(/pvc chat: --temperature, --top-k only apply with --sample; decoding greedily/);
  expect(await main(['chat', '--model', dir, '--image', IMAGE, '--frames', '8', 'q'])).toBe(2);
  expect(output.stderr()).toMatch(/--frames applies to --video/);
  expect(await main(['chat', '--model', dir, '--video', IMAGE, '--backend', 'wasm', 'q'])).toBe(1);
  expect(output.stderr()).toMatch(/odd-1000x747-max6\.jpg has a single frame: a still image; pass it with --image/);
});

test('pvc watch: frames at --fps added one by one, --ask answered every --every frames, a summary; --max-frames stops adding', async () => {
  const pvc = convertFixture('tiny-pvc');
  try {
    const argv = ['watch', '--model', pvc, '--video', MEDIA.video, '--fps', '2', '--max-new-tokens', '3', '--backend', 'wasm', '--json'];
    expect(await main([...argv, '--ask', 'What moves?', '--ask', 'Which colour?', '--every', '4'])).toBe(0);
    const events = output
      .stdout()
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    const answers = events.filter((e) => e.event === 'answer');
    expect(answers.map((a) => [a.frames, a.question])).toEqual([
      [4, 'What moves?'],
      [8, 'Which colour?'],
      [12, 'What moves?'],
    ]);
    expect(events.filter((e) => e.event === 'frame').map((e) => e.time)).toEqual(Array.from({ length: 12 }, (_, i) => i / 2));
    // A file read at ffmpeg's pace: every frame (a live source, --realtime or a pipe, drops what the model misses).
    expect(events.pop()).toMatchObject({ event: 'end', reason: 'the video ended', frames: 12, received: 12, dropped: 0 });
    expect(await main([...argv, '--ask', 'What moves?', '--max-frames', '5'])).toBe(0);
    const end = JSON.parse(output.stdout().trim().split('\n').pop()!);
    expect(end).toMatchObject({ event: 'end', reason: 'the session holds its --max-frames 5', frames: 5 });
  } finally {
    fs.rmSync(path.dirname(pvc), { recursive: true, force: true });
  }
});

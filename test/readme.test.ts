// README's examples run as written: each code block is taken from README.md, its package import pointed
// at this checkout, and run with tsx against a tiny model in a directory laid out as the README assumes
// (weights/tiny-internvl2 or weights/tiny-pvc, examples/media: the repository's own media, so the test
// needs nothing outside the checkout).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { cpuHasBf16Instructions } from '../src/backend';
import { convertFixture, tensorflowInstalled } from './helpers';

const ROOT = path.join(__dirname, '..');
const MEDIA = path.join(ROOT, 'examples', 'media');

function codeBlockAfter(heading: string): string {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf(heading);
  if (start < 0) throw new Error(`README.md has no '${heading}' section`);
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(start));
  if (!block) throw new Error(`no ts code block after '${heading}'`);
  return block[1];
}

/** Runs README's first ts block after `heading` with tsx in a directory laid out as the README assumes; its stderr must be `stderr`. */
function runBlock(heading: string, fixture = 'tiny-internvl2', stderr: unknown[] = []): void {
  const code = codeBlockAfter(heading);
  expect(code).toContain("from 'pvc-tfjs'");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pvc-readme-'));
  const cwd = path.join(tmp, 'app');
  fs.mkdirSync(path.join(cwd, 'weights'), { recursive: true });
  fs.mkdirSync(path.join(cwd, 'examples'));
  fs.symlinkSync(MEDIA, path.join(cwd, 'examples', 'media'));
  const converted = convertFixture(fixture);
  fs.renameSync(converted, path.join(cwd, 'weights', fixture));
  // The block's top-level awaits run inside an async function (tsx runs this file as CommonJS).
  const program = code.replace("from 'pvc-tfjs'", `from ${JSON.stringify(path.join(ROOT, 'src'))}`);
  const [imports, ...body] = program.split('\n\n');
  const script = `${imports}\n(async () => {\n${body.join('\n\n')}\nconsole.log('README EXAMPLE OK');\n})().catch((e) => { console.error(e); process.exit(1); });\n`;
  fs.writeFileSync(path.join(cwd, 'example.ts'), script);
  const run = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs'), 'example.ts'], {
    cwd,
    encoding: 'utf8',
    timeout: 300_000,
  });
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.rmSync(path.dirname(converted), { recursive: true, force: true });
  expect({ status: run.status, stderr: run.stderr.split('\n').filter((l) => l && !l.startsWith('[pvc-tfjs] backend')) }).toEqual({ status: 0, stderr });
  expect(run.stdout).toContain('README EXAMPLE OK');
}

test('the "Using it from code" example runs as written', () => runBlock('## Using it from code'));

// Its matmul 'fast' load warns on a CPU without bf16 instructions (libtensorflow's CPU build, as tests run it), and only there.
const FAST_WARNING = [
  expect.stringMatching(/^\(node:\d+\) \[PVC_FAST_WITHOUT_BF16\] PVCPerformanceWarning: matmul 'fast' on a CPU without AVX512-BF16 or AMX-BF16/),
  '(Use `node --trace-warnings ...` to show where the warning was created)',
];
(tensorflowInstalled() ? test : test.skip)('the "Weights in memory" example runs as written (tensorflow backend)', () =>
  runBlock('### Weights in memory', 'tiny-internvl2', cpuHasBf16Instructions() === false ? FAST_WARNING : []),
);

test('the "Live video" example runs as written', () => runBlock('## Live video', 'tiny-pvc'));

test('the continuous batching example runs as written', () => runBlock('**Batching, the feature cache and metrics.**'));

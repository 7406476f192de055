// The layering of src/: a module imports only from layers below its own (or from its own folder), so
// that an image's path from pixels to answer runs one way through the folders.
import * as fs from 'fs';
import * as path from 'path';

const SRC = path.join(__dirname, '..', 'src');

/** Layers from the bottom up; a module may import from strictly lower layers and from its own folder. */
const LAYERS: string[][] = [
  ['json', 'event_loop', 'errors'],
  ['config'],
  ['webgpu'],
  ['backend'],
  ['tokenizer'],
  ['preprocess'],
  ['io'],
  ['nn'],
  ['vision', 'llm'],
  ['model', 'generation'],
  ['chat'],
  ['inspect'],
  ['pvc_model'],
  ['runtime'],
  ['server', 'eval'],
  ['index'],
  ['cli'],
];

/** 'vision' for src/vision/x.ts, 'config' for src/config.ts. */
function unitOf(file: string): string {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length > 1 ? rel[0] : rel[0].replace(/\.(ts|js)$/, '');
}

function layerOf(unit: string): number {
  const i = LAYERS.findIndex((l) => l.includes(unit));
  if (i < 0) throw new Error(`src/${unit} is in no layer of test/architecture.test.ts: add it where it belongs`);
  return i;
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : /\.ts$/.test(e.name) ? [p] : [];
  });
}

/** Relative imports of a file (static and dynamic, `import type` included), resolved to files. */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/(?:from\s+|import\s*\(\s*|require\(\s*)'(\.{1,2}\/[^']+)'/g)].map((m) => m[1]);
  return specs.map((s) => path.resolve(path.dirname(file), s));
}

test('no module imports from a layer above its own (nn/ does not import the backend choice)', () => {
  const violations: string[] = [];
  for (const file of sourceFiles(SRC)) {
    const from = unitOf(file);
    for (const target of importsOf(file)) {
      const to = unitOf(target);
      if (to !== from && layerOf(to) >= layerOf(from)) violations.push(`${path.relative(SRC, file)} imports ${path.relative(SRC, target)}`);
    }
  }
  expect(violations).toEqual([]);
});

test('the check can fail: an upward import is reported', () => {
  // The same rule on a made-up pair, so that a broken regexp or layer table cannot pass silently.
  expect(layerOf('nn') < layerOf('backend')).toBe(false);
  expect(layerOf('vision') < layerOf('model')).toBe(true);
  expect(importsOf(path.join(SRC, 'model', 'vlm.ts')).map((t) => unitOf(t))).toEqual(expect.arrayContaining(['backend', 'vision', 'llm']));
});

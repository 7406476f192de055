// The option parser every command uses (src/cli/args.ts): values read and checked as they are parsed,
// errors that name the option.
import { flag, list, number, oneOf, orNone, parseOptions, text, value } from '../src/cli/args';

const SPEC = {
  model: value(text),
  maxNewTokens: value(number({ integer: true, min: 0 }), 8),
  topP: value(number({ above: 0, max: 1 })),
  maxPixels: value(orNone(number({ integer: true, min: 1 }))),
  dtype: value(oneOf(['float32', 'float16']), 'float32'),
  image: list(text),
  taps: list(text, { greedy: true }),
  json: flag(),
  help: flag('h'),
};

test('values, defaults, both spellings, repeatable options, greedy lists, what was given', () => {
  const { values, positionals, given } = parseOptions(
    ['--model=m', '--top-p', '0.5', '--image', 'a', '--image', 'b', '--max-pixels', 'none', '--taps', 'x', 'y', '--json', 'q', '--', '--z'],
    SPEC,
    { positionals: true },
  );
  expect(values).toEqual({
    model: 'm',
    maxNewTokens: 8,
    topP: 0.5,
    maxPixels: null,
    dtype: 'float32',
    image: ['a', 'b'],
    taps: ['x', 'y'],
    json: true,
    help: false,
  });
  // The greedy --taps stops at the next option; after it and after -- come the plain arguments.
  expect(positionals).toEqual(['q', '--z']);
  expect([...given].sort()).toEqual(['image', 'json', 'maxPixels', 'model', 'taps', 'topP']);
  expect(parseOptions(['-h'], SPEC).values.help).toBe(true);
  expect(parseOptions(['--length', '-1'], { length: value(number()) }).values.length).toBe(-1);
});

test('each error names the option', () => {
  const error = (argv: string[]) => () => parseOptions(argv, SPEC);
  expect(error(['--bogus'])).toThrow(/^unknown option --bogus$/);
  expect(error(['-x'])).toThrow(/^unknown option -x$/);
  expect(error(['--model', 'a', '--model', 'b'])).toThrow(/^--model was given more than once \(it takes one value\)$/);
  expect(error(['--json', '--json'])).toThrow(/^--json was given more than once$/);
  expect(error(['--max-new-tokens', '-1'])).toThrow(/^--max-new-tokens expects an integer >= 0, not -1$/);
  expect(error(['--max-new-tokens', ''])).toThrow(/^--max-new-tokens expects an integer >= 0, not ''$/);
  expect(error(['--top-p', '0'])).toThrow(/^--top-p expects a number in \(0, 1\], not 0$/);
  expect(error(['--max-pixels', 'lots'])).toThrow(/^--max-pixels expects an integer >= 1, not lots$/);
  expect(error(['--dtype', 'int8'])).toThrow(/^--dtype expects float32 or float16, not int8$/);
  expect(error(['--model'])).toThrow(/^--model needs a value$/);
  expect(error(['--model', '--json'])).toThrow(/^--model needs a value$/);
  expect(error(['--model='])).toThrow(/^--model needs a non-empty value$/);
  expect(error(['--json=1'])).toThrow(/^--json takes no value$/);
  expect(error(['stray'])).toThrow(/^unexpected argument 'stray'$/);
});

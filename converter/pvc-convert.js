#!/usr/bin/env node
// The `pvc-convert` command. In a source checkout it runs the TypeScript directly (through tsx);
// an installed package runs the compiled JavaScript from dist/.
const fs = require('fs');
const path = require('path');

const source = path.join(__dirname, 'cli.ts');
let cli;
if (fs.existsSync(source)) {
  require('tsx/cjs');
  cli = require(source);
} else {
  cli = require(path.join(__dirname, '..', 'dist', 'converter', 'cli.js'));
}
process.exitCode = cli.main();

// Runs a CLI module's main(): in a source checkout the TypeScript itself (through tsx), in an
// installed package the compiled JavaScript under dist/. Used by the `pvc` and `pvc-convert` bins.
const fs = require('fs');
const path = require('path');

module.exports = function launch(modulePath) {
  const root = path.join(__dirname, '..', '..');
  const source = path.join(root, `${modulePath}.ts`);
  let cli;
  if (fs.existsSync(source)) {
    require('tsx/cjs');
    cli = require(source);
  } else {
    cli = require(path.join(root, 'dist', `${modulePath}.js`));
  }
  Promise.resolve(cli.main()).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
      process.exitCode = 1;
    },
  );
};

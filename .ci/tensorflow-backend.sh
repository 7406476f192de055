#!/usr/bin/env bash
# Opt-in: builds @tensorflow/tfjs-node's binding against the TensorFlow C library that PyPI's
# tensorflow-cpu wheel carries (libtensorflow_cc.so.2, libtensorflow_framework.so.2 and the C headers),
# since tfjs-node's own install step downloads libtensorflow from Google, which is unreachable here.
# Afterwards the `tensorflow` backend is available (and chosen first), and the parity suites run on it.
#   bash .ci/tensorflow-backend.sh        (npm run build:tensorflow)
set -euo pipefail
cd "$(dirname "$0")/.."
TF_VERSION=${TF_VERSION:-2.15.1}
TFJS_NODE_VERSION=$(node -p "require('./package.json').optionalDependencies['@tensorflow/tfjs-node']")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "tensorflow backend: tensorflow-cpu==$TF_VERSION wheel from PyPI" >&2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux2014_x86_64 "tensorflow-cpu==$TF_VERSION" -d "$work"
wheel=$(ls "$work"/tensorflow_cpu-*.whl)
python3 - "$wheel" "$work/ex" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
wanted = ('tensorflow/libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2')
prefixes = ('tensorflow/include/tensorflow/c/', 'tensorflow/include/tensorflow/core/platform/', 'tensorflow/include/tsl/')
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name in wanted or name.startswith(prefixes):
            z.extract(name, out)
PY

echo "tensorflow backend: @tensorflow/tfjs-node@$TFJS_NODE_VERSION without its download step" >&2
npm install --no-save --ignore-scripts --no-audit --no-fund "@tensorflow/tfjs-node@$TFJS_NODE_VERSION" >&2
# npm also brings the other optional dependency, tfjs-node-gpu, without a binding: loading it would
# register kernels and then fail. It needs CUDA's libtensorflow; leave it out unless it was built.
ls node_modules/@tensorflow/tfjs-node-gpu/lib/napi-v*/tfjs_binding.node >/dev/null 2>&1 || rm -rf node_modules/@tensorflow/tfjs-node-gpu
pkg=node_modules/@tensorflow/tfjs-node
rm -rf "$pkg/deps" && mkdir -p "$pkg/deps/lib" "$pkg/deps/include"
cp "$work"/ex/tensorflow/libtensorflow_cc.so.2 "$work"/ex/tensorflow/libtensorflow_framework.so.2 "$pkg/deps/lib/"
ln -s libtensorflow_cc.so.2 "$pkg/deps/lib/libtensorflow.so"
ln -s libtensorflow_framework.so.2 "$pkg/deps/lib/libtensorflow_framework.so"
cp -r "$work"/ex/tensorflow/include/tensorflow "$work"/ex/tensorflow/include/tsl "$pkg/deps/include/"

echo "tensorflow backend: building the binding (node-gyp)" >&2
nodedir=$(dirname "$(dirname "$(command -v node)")")
(cd "$pkg" && node ../../@mapbox/node-pre-gyp/bin/node-pre-gyp rebuild --build-from-source --nodedir="$nodedir" >&2)
TF_CPP_MIN_LOG_LEVEL=2 node -e "require('@tensorflow/tfjs-node'); const tf = require('@tensorflow/tfjs'); tf.setBackend('tensorflow').then(() => console.error('tensorflow backend: ready, ' + tf.matMul(tf.ones([2, 2]), tf.ones([2, 2])).dataSync()))"

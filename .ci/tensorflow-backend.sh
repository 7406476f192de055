#!/usr/bin/env bash
# Opt-in: builds the binding of @tensorflow/tfjs-node (or, with --gpu, @tensorflow/tfjs-node-gpu) against
# the TensorFlow C library that a PyPI wheel carries (libtensorflow_cc.so.2, libtensorflow_framework.so.2
# and the C headers), since the packages' own install step downloads libtensorflow from Google, which is
# unreachable here (and whose GPU build, 2.9.1, wants CUDA 11.2, which today's drivers and images lack).
# Afterwards the `tensorflow` backend is available (and chosen first), and the parity suites run on it.
#   bash .ci/tensorflow-backend.sh         (npm run build:tensorflow)            tensorflow-cpu wheel
#   bash .ci/tensorflow-backend.sh --gpu   (npm run build:tensorflow -- --gpu)   tensorflow[and-cuda]
# --gpu: PyPI's full `tensorflow` wheel is a CUDA 12 build; its `and-cuda` extra names the NVIDIA wheels
# (cuBLAS, cuDNN, cuFFT, ...) holding the CUDA libraries it loads at run time. Their shared libraries go
# next to libtensorflow in the package's deps/lib, which libtensorflow's RUNPATH ($ORIGIN) searches, so no
# LD_LIBRARY_PATH is needed. Only the NVIDIA driver (libcuda.so.1) must come from the system. Without a
# GPU or driver the build loads and runs on the CPU, and says so.
# The wheels (about 3 GB with --gpu) are downloaded once into $PVC_WHEEL_CACHE (default
# ~/.cache/pvc-tfjs/wheels), never into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=cpu
for arg in "$@"; do
  case "$arg" in
    --gpu) variant=gpu ;;
    --cpu) variant=cpu ;;
    *) echo "tensorflow backend: unknown option '$arg' (expected --gpu or --cpu)" >&2; exit 2 ;;
  esac
done
TF_VERSION=${TF_VERSION:-2.15.1}
cache=${PVC_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvc-tfjs/wheels}
if [ "$variant" = gpu ]; then
  wheel_name=tensorflow package=@tensorflow/tfjs-node-gpu other=@tensorflow/tfjs-node
else
  wheel_name=tensorflow-cpu package=@tensorflow/tfjs-node other=@tensorflow/tfjs-node-gpu
fi
TFJS_NODE_VERSION=$(node -p "require('./package.json').optionalDependencies['$package']")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"

pip_download() {
  # pip skips a file already in the cache directory.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux2014_x86_64 -d "$cache" "$@"
}

echo "tensorflow backend ($variant): $wheel_name==$TF_VERSION wheel from PyPI (cache: $cache)" >&2
pip_download "$wheel_name==$TF_VERSION"
wheel=$(ls "$cache/${wheel_name//-/_}-$TF_VERSION-"*.whl)
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

echo "tensorflow backend ($variant): $package@$TFJS_NODE_VERSION without its download step" >&2
npm install --no-save --ignore-scripts --no-audit --no-fund "$package@$TFJS_NODE_VERSION" >&2
# npm also brings the other optional tfjs-node package, without a binding: loading it would register
# kernels and then fail. Leave it out unless it was built (a CPU and a GPU build may sit side by side;
# src/backend.ts then prefers the GPU one).
ls node_modules/$other/lib/napi-v*/tfjs_binding.node >/dev/null 2>&1 || rm -rf node_modules/$other
pkg=node_modules/$package
rm -rf "$pkg/deps" && mkdir -p "$pkg/deps/lib" "$pkg/deps/include"
cp "$work"/ex/tensorflow/libtensorflow_cc.so.2 "$work"/ex/tensorflow/libtensorflow_framework.so.2 "$pkg/deps/lib/"
ln -s libtensorflow_cc.so.2 "$pkg/deps/lib/libtensorflow.so"
ln -s libtensorflow_framework.so.2 "$pkg/deps/lib/libtensorflow_framework.so"
cp -r "$work"/ex/tensorflow/include/tensorflow "$work"/ex/tensorflow/include/tsl "$pkg/deps/include/"

if [ "$variant" = gpu ]; then
  # The CUDA 12 wheels, at the exact versions the tensorflow wheel's own metadata pins for its
  # `and-cuda` extra. cuda-nvcc is left out: it carries ptxas and libdevice for XLA's JIT, which the
  # binding does not use (the driver JIT-compiles PTX for GPUs newer than the wheel's kernels).
  mapfile -t cuda_reqs < <(python3 - "$wheel" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
    for line in z.read(meta).decode().splitlines():
        m = re.match(r"Requires-Dist: (\S+) \(==([^)]+)\) ; extra == .and-cuda.", line)
        if m and m.group(1) != 'nvidia-cuda-nvcc-cu12':
            print(f'{m.group(1)}=={m.group(2)}')
PY
  )
  [ "${#cuda_reqs[@]}" -gt 0 ] || { echo "tensorflow backend (gpu): $wheel names no and-cuda wheels" >&2; exit 1; }
  echo "tensorflow backend (gpu): ${cuda_reqs[*]}" >&2
  pip_download "${cuda_reqs[@]}"
  # Unpacked once per tensorflow version next to the wheels, then hard-linked (copied across file
  # systems) into deps/lib.
  cuda_lib="$cache/cuda-for-tensorflow-$TF_VERSION/lib"
  if [ ! -f "$cuda_lib/.complete" ]; then
    rm -rf "$cuda_lib" && mkdir -p "$cuda_lib"
    for req in "${cuda_reqs[@]}"; do
      name=${req%%==*} version=${req##*==}
      python3 - "$(ls "$cache/${name//-/_}-$version-"*.whl)" "$cuda_lib" <<'PY'
import os, re, shutil, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if re.fullmatch(r'nvidia/[^/]+/lib/[^/]+\.so(\.[0-9]+)*', info.filename):
            with z.open(info) as src, open(os.path.join(out, os.path.basename(info.filename)), 'wb') as dst:
                shutil.copyfileobj(src, dst)
PY
    done
    touch "$cuda_lib/.complete"
  fi
  cp -al "$cuda_lib"/*.so* "$pkg/deps/lib/" 2>/dev/null || cp -a "$cuda_lib"/*.so* "$pkg/deps/lib/"
fi

echo "tensorflow backend ($variant): building the binding (node-gyp)" >&2
nodedir=$(dirname "$(dirname "$(command -v node)")")
(cd "$pkg" && node ../../@mapbox/node-pre-gyp/bin/node-pre-gyp rebuild --build-from-source --nodedir="$nodedir" >&2)
TF_CPP_MIN_LOG_LEVEL=2 node -e "
require('$package');
const tf = require('@tensorflow/tfjs');
tf.setBackend('tensorflow').then(() => {
  const b = tf.backend();
  const where = b.isUsingGpuDevice ? 'a CUDA GPU' : 'the CPU (no CUDA device visible)';
  console.error('tensorflow backend ($variant): ready, libtensorflow ' + b.binding.TF_Version + ' on ' + where + ', ' + tf.matMul(tf.ones([2, 2]), tf.ones([2, 2])).dataSync());
})"

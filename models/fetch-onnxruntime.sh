#!/usr/bin/env bash
# Puts the ONNX Runtime shared library from PyPI's onnxruntime wheel into
# target/onnxruntime-VERSION/ (once) and prints its path. No Python packages are
# installed: the wheel is a zip and only libonnxruntime.so is taken out of it.
#   lib=$(models/fetch-onnxruntime.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ORT_VERSION=${ORT_VERSION:-1.32.0}
dir="$root/target/onnxruntime-$ORT_VERSION"
lib="$dir/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  echo "fetching onnxruntime $ORT_VERSION (PyPI wheel) for its shared library" >&2
  mkdir -p "$dir/wheel"
  python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$dir/wheel" "onnxruntime==$ORT_VERSION" >&2
  python3 - "$dir" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
out, version = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{out}/wheel/onnxruntime-{version}-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(f"/capi/libonnxruntime.so.{version}"))
    with open(f"{out}/libonnxruntime.so.{version}.part", "wb") as f:
        f.write(z.read(name))
PY
  mv "$lib.part" "$lib"
fi
echo "$lib"

#!/usr/bin/env bash
# Puts the ONNX Runtime shared library from PyPI's onnxruntime wheel into
# target/onnxruntime-VERSION/ (once) and prints its path. No Python packages are
# installed: the wheel is a zip and only libonnxruntime.so is taken out of it.
#   lib=$(models/fetch-onnxruntime.sh)
#   lib=$(ORT_ARCH=aarch64 models/fetch-onnxruntime.sh)   # another architecture's wheel
#                                                         # (target/onnxruntime-VERSION-aarch64/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ORT_VERSION=${ORT_VERSION:-1.32.0}
arch=${ORT_ARCH:-$(uname -m)}
case "$arch" in
  x86_64 | aarch64) ;;
  *) echo "fetch-onnxruntime: no onnxruntime wheel for $arch (x86_64 or aarch64)" >&2; exit 2 ;;
esac
dir="$root/target/onnxruntime-$ORT_VERSION"
platform=()
if [ "$arch" != "$(uname -m)" ]; then
  dir="$dir-$arch"
  # the wheels are manylinux_2_27/2_28; pip takes the newest tag it is told the platform has
  platform=(--platform "manylinux_2_28_$arch")
fi
lib="$dir/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  echo "fetching onnxruntime $ORT_VERSION (PyPI wheel, $arch) for its shared library" >&2
  mkdir -p "$dir/wheel"
  python3 -m pip download --quiet --no-deps --only-binary :all: "${platform[@]}" --dest "$dir/wheel" \
    "onnxruntime==$ORT_VERSION" >&2
  python3 - "$dir" "$ORT_VERSION" "$arch" <<'PY'
import glob, sys, zipfile
out, version, arch = sys.argv[1], sys.argv[2], sys.argv[3]
wheel = next(w for w in glob.glob(f"{out}/wheel/onnxruntime-{version}-*.whl") if arch in w)
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(f"/capi/libonnxruntime.so.{version}"))
    with open(f"{out}/libonnxruntime.so.{version}.part", "wb") as f:
        f.write(z.read(name))
PY
  mv "$lib.part" "$lib"
fi
echo "$lib"

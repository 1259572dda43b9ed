#!/usr/bin/env bash
# llamad next to llama.cpp (the engine inside Ollama) and onnxruntime-genai, on the same weights,
# in interleaved rounds at 1 and 2 threads (models/bench_peers.py prints the table).
#   models/bench-peers.sh [ROUNDS] [-- extra bench_peers.py options]
# Sets up, once, under models/work/peers (gitignored, never committed):
#   - llama.cpp's llama-bench, built with cmake from the vendored source in PyPI's
#     llama-cpp-python sdist (pip download --no-binary llama-cpp-python);
#   - a venv with onnxruntime-genai and the converter's packages (models/requirements-peers.txt);
#   - the models: SmolLM2-135M-Instruct's Q4_1 GGUF (models/fetch-demo.sh converts it) and a
#     TinyLlama-1.1B-shaped random Q4_0 GGUF (models/make_bench_gguf.py), each converted by
#     models/gguf_to_onnx.py into the fused graph (ONNX Runtime: llamad and onnxruntime-genai run
#     the same file) and the standard int4 graph (tract).
# Needs cmake and a C++ compiler (Debian: apt-get install cmake g++), a built llamad (cargo build),
# and the ONNX Runtime library (models/fetch-onnxruntime.sh; ORT_DYLIB_PATH is set from it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work=$here/work/peers
rounds=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
llama_cpp_version=0.3.36
mkdir -p "$work"
say() { printf '[bench-peers] %s\n' "$*" >&2; }

# 1. llama-bench
bench_bin=$work/llama.cpp-build/bin/llama-bench
if [ ! -x "$bench_bin" ]; then
  say "building llama-bench from llama-cpp-python $llama_cpp_version's vendored llama.cpp"
  sdist=$work/llama_cpp_python-$llama_cpp_version.tar.gz
  [ -f "$sdist" ] || python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    -d "$work" "llama-cpp-python==$llama_cpp_version"
  [ -d "$work/llama_cpp_python-$llama_cpp_version" ] || tar -xzf "$sdist" -C "$work"
  cmake -S "$work/llama_cpp_python-$llama_cpp_version/vendor/llama.cpp" -B "$work/llama.cpp-build" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
  cmake --build "$work/llama.cpp-build" --target llama-bench -j "$(nproc)" >/dev/null
fi

# 2. the venv (onnxruntime-genai, and the converter's packages)
venv=$work/venv
stamp=$venv/.requirements.sha256
reqs=$here/requirements-peers.txt
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum "$reqs" | cut -d' ' -f1)" ]; then
  say "venv $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$reqs"
  sha256sum "$reqs" | cut -d' ' -f1 > "$stamp"
fi
py=$venv/bin/python

# 3. the models, each as a GGUF, its fused graph and its standard graph
"$here/fetch-demo.sh" >/dev/null
smol_gguf=$here/demo/cache/SmolLM2-135M-Instruct.Q4_1.gguf
tiny_gguf=$work/tinyllama-shape.Q4_0.gguf
[ -f "$tiny_gguf" ] || "$py" "$here/make_bench_gguf.py" "$here/fixtures/tokenizers/llama2/tokenizer.model" "$tiny_gguf" >&2
convert() {  # GGUF OUT [gguf_to_onnx options]
  local src=$1 out=$2; shift 2
  if [ ! -f "$out/model.onnx" ]; then
    say "converting $(basename "$src") -> $out"
    rm -rf "$out.tmp"
    (cd "$here" && "$py" gguf_to_onnx.py "$src" "$out.tmp" --precision int4 "$@") >/dev/null
    mv "$out.tmp" "$out"
  fi
}
convert "$tiny_gguf" "$work/tinyllama-fused" --graph fused
convert "$tiny_gguf" "$work/tinyllama-int4"

# 4. llamad and ONNX Runtime
(cd "$root" && cargo build --workspace --bins --quiet)
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/fetch-onnxruntime.sh")}
export ORT_DYLIB_PATH

exec "$py" "$here/bench_peers.py" --llama-bench "$bench_bin" --llamad "$root/target/debug/llamad" \
  --genai-python "$py" --rounds "$rounds" \
  --model smollm2 "$smol_gguf" "$here/demo/smollm2-135m-instruct-fused" "$here/demo/smollm2-135m-instruct-int4" \
  --model tinyllama "$tiny_gguf" "$work/tinyllama-fused" "$work/tinyllama-int4" "$@"

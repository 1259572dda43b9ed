#!/usr/bin/env bash
# The peers' tools, set up once under models/work/peers (gitignored, never committed), for
# models/bench-peers.sh and models/quality/run.sh; prints the directory it set up.
#   - llama.cpp's llama-bench, llama-quantize and llama-perplexity, built with cmake from the
#     vendored source in PyPI's llama-cpp-python sdist (pip download --no-binary llama-cpp-python);
#   - a venv with onnxruntime, onnxruntime-genai and the converter's packages
#     (models/requirements-peers.txt).
# Needs cmake and a C++ compiler (Debian: apt-get install cmake g++).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$here/work/peers
llama_cpp_version=0.3.36
mkdir -p "$work"
say() { printf '[peers-setup] %s\n' "$*" >&2; }

bin=$work/llama.cpp-build/bin
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-quantize" ] || [ ! -x "$bin/llama-perplexity" ]; then
  say "building llama.cpp's tools from llama-cpp-python $llama_cpp_version's vendored source"
  sdist=$work/llama_cpp_python-$llama_cpp_version.tar.gz
  [ -f "$sdist" ] || python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    -d "$work" "llama-cpp-python==$llama_cpp_version"
  [ -d "$work/llama_cpp_python-$llama_cpp_version" ] || tar -xzf "$sdist" -C "$work"
  cmake -S "$work/llama_cpp_python-$llama_cpp_version/vendor/llama.cpp" -B "$work/llama.cpp-build" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
  cmake --build "$work/llama.cpp-build" --target llama-bench llama-quantize llama-perplexity \
    -j "$(nproc)" >/dev/null
fi

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
echo "$work"

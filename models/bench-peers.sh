#!/usr/bin/env bash
# llamad next to llama.cpp (the engine inside Ollama) and onnxruntime-genai, on the same weights,
# in interleaved rounds at 1 and 2 threads (models/bench_peers.py prints the table).
#   models/bench-peers.sh [ROUNDS] [-- extra bench_peers.py options]
# Sets up, once, under models/work/peers (gitignored, never committed):
#   - llama.cpp's llama-bench and a venv with onnxruntime-genai (models/peers-setup.sh);
#   - the models: SmolLM2-135M-Instruct's Q4_1 GGUF (models/fetch-demo.sh converts it), a
#     TinyLlama-1.1B-shaped and a Llama-2-7B-shaped random Q4_0 GGUF (models/make_bench_gguf.py:
#     640 MB and 3.9 GB), each converted by models/gguf_to_onnx.py into the fused graph (ONNX
#     Runtime: llamad and onnxruntime-genai run the same file) and, but the 7B, the standard int4
#     graph (tract; at 7B its load alone takes minutes, so it is not run there). The 7B shape
#     runs a 128-token prompt and 32 new tokens (the others --prompt and --gen, 128 each).
# Needs cmake and a C++ compiler (Debian: apt-get install cmake g++), a built llamad (cargo build),
# and the ONNX Runtime library (models/fetch-onnxruntime.sh; ORT_DYLIB_PATH is set from it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work=$here/work/peers
rounds=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
mkdir -p "$work"
say() { printf '[bench-peers] %s\n' "$*" >&2; }

# 1. llama.cpp's tools and the venv (models/peers-setup.sh)
"$here/peers-setup.sh" >/dev/null
bench_bin=$work/llama.cpp-build/bin/llama-bench
py=$work/venv/bin/python

# 2. the models, each as a GGUF, its fused graph and its standard graph
"$here/fetch-demo.sh" >/dev/null
smol_gguf=$here/demo/cache/SmolLM2-135M-Instruct.Q4_1.gguf
tiny_gguf=$work/tinyllama-shape.Q4_0.gguf
big_gguf=$work/llama2-7b-shape.Q4_0.gguf
tok=$here/fixtures/tokenizers/llama2/tokenizer.model
[ -f "$tiny_gguf" ] || "$py" "$here/make_bench_gguf.py" "$tok" "$tiny_gguf" >&2
[ -f "$big_gguf" ] || "$py" "$here/make_bench_gguf.py" --llama2-7b "$tok" "$big_gguf" >&2
# converted again whenever the converter changed (its hash is kept beside each output)
converter=$(cat "$here/gguf_to_onnx.py" "$here/ort_graph.py" | sha256sum | cut -d' ' -f1)
convert() {  # GGUF OUT [gguf_to_onnx options]
  local src=$1 out=$2; shift 2
  if [ "$(cat "$out/.converter" 2>/dev/null)" != "$converter" ]; then
    say "converting $(basename "$src") -> $out"
    rm -rf "$out.tmp" "$out"
    (cd "$here" && "$py" gguf_to_onnx.py "$src" "$out.tmp" --precision int4 "$@") >/dev/null
    echo "$converter" > "$out.tmp/.converter"
    mv "$out.tmp" "$out"
  fi
}
convert "$tiny_gguf" "$work/tinyllama-fused" --graph fused
convert "$tiny_gguf" "$work/tinyllama-int4"
convert "$big_gguf" "$work/llama2-7b-fused" --graph fused

# 3. llamad and ONNX Runtime
(cd "$root" && cargo build --workspace --bins --quiet)
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/fetch-onnxruntime.sh")}
export ORT_DYLIB_PATH

exec "$py" "$here/bench_peers.py" --llama-bench "$bench_bin" --llamad "$root/target/debug/llamad" \
  --genai-python "$py" --rounds "$rounds" \
  --model smollm2 "$smol_gguf" "$here/demo/smollm2-135m-instruct-fused" "$here/demo/smollm2-135m-instruct-int4" \
  --model tinyllama "$tiny_gguf" "$work/tinyllama-fused" "$work/tinyllama-int4" \
  --model llama2-7b "$big_gguf" "$work/llama2-7b-fused" - --model-tokens llama2-7b 128 32 "$@"

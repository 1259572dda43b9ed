#!/usr/bin/env bash
# The demo: build llamad, fetch and convert SmolLM2-135M-Instruct (models/fetch-demo.sh),
# fetch the ONNX Runtime library, and ask the model a question on both backends.
#   models/demo.sh ["your question"]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
question=${1:-"What is the capital of France? Answer in one sentence."}
cargo build
models/fetch-demo.sh
ORT_DYLIB_PATH=$(models/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH
model=models/demo/smollm2-135m-instruct-int4
for backend in onnxruntime tract; do
  echo
  echo "== $backend: $question"
  target/debug/llamad generate --model "$model" --backend "$backend" --chat "$question" --max-tokens 200
done

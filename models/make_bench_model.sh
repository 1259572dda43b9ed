#!/usr/bin/env bash
# Benchmark model (not committed): a TinyLlama-1.1B-shaped random-weight Llama,
# exported int4 by the onnxruntime-genai builder with separate Q/K/V MatMuls
# (fuse_qkv=false) so that both backends can run the same file.
#   models/make_bench_model.sh [OUT_DIR]   (default models/work/bench)
# Needs the two venvs of models/README.md (OPTIMUM_VENV, GENAI_VENV). About 5 minutes
# and 9 GB of RAM on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/work/bench}
OPTIMUM_VENV=${OPTIMUM_VENV:-/root/venvs/optimum}
GENAI_VENV=${GENAI_VENV:-/root/venvs/genai}
tok=${LLAMA2_TOKENIZER:-$here/fixtures/tokenizers/llama2}
mkdir -p "$out"
[ -f "$out/hf/config.json" ] || "$OPTIMUM_VENV/bin/python" "$here/make_bench_tinyllama.py" "$tok" "$out/hf"
if [ ! -f "$out/tinyllama-shape-int4/model.onnx" ]; then
  HF_HUB_OFFLINE=1 "$GENAI_VENV/bin/python" -m onnxruntime_genai.models.builder \
    -m "$out/hf" -i "$out/hf" -o "$out/tinyllama-shape-int4" -p int4 -e cpu -c "$out/cache" \
    --extra_options fuse_qkv=false
  # Ship the Llama 2 tokenizer as in the fixtures (see README.md).
  cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$tok"/special_tokens_map.json "$out/tinyllama-shape-int4/"
fi
echo "$out/tinyllama-shape-int4"

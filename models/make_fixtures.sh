#!/usr/bin/env bash
# Rebuild every test fixture under models/fixtures/ from the shared data, end to end.
#
#   models/make_fixtures.sh
#
# Environment (defaults in brackets):
#   SHARED        the shared data folder                    [<repo>/../shared]
#   OPTIMUM_VENV  venv made from models/requirements-optimum.txt  [/root/venvs/optimum]
#   GENAI_VENV    venv made from models/requirements-genai.txt    [/root/venvs/genai]
#
# Intermediate Hugging Face checkpoints and raw exporter outputs go to
# models/work/ (gitignored). Nothing is downloaded: all weights come from
# $SHARED or from a seeded random init, and the Hugging Face hub is forced offline.
set -euo pipefail

MODELS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$MODELS")"
SHARED="${SHARED:-$REPO/../shared}"
OPTIMUM_VENV="${OPTIMUM_VENV:-/root/venvs/optimum}"
GENAI_VENV="${GENAI_VENV:-/root/venvs/genai}"
OPY="$OPTIMUM_VENV/bin/python"
GPY="$GENAI_VENV/bin/python"
WORK="$MODELS/work"
FIX="$MODELS/fixtures"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0

STORIES_BIN="$SHARED/models/stories260K/stories260K.bin"
TOKENIZER_DIR="$SHARED/tokenizers/llama2"
TOKENIZER_FILES=(tokenizer.json tokenizer_config.json special_tokens_map.json)
for f in "$STORIES_BIN" "${TOKENIZER_FILES[@]/#/$TOKENIZER_DIR/}" "$TOKENIZER_DIR/tokenizer.model"; do
    [[ -f "$f" ]] || { echo "missing $f (set SHARED=...)" >&2; exit 1; }
done
for py in "$OPY" "$GPY"; do
    [[ -x "$py" ]] || { echo "missing $py (set OPTIMUM_VENV / GENAI_VENV)" >&2; exit 1; }
done

step() { printf '\n=== %s\n' "$*"; }

# Remove only what this script makes: models/ and models/fixtures/ may hold other files.
FIXTURES=(stories260k-optimum-fp32 stories260k-optimum-int8 tiny-llama2-genai-fp32 tiny-llama2-genai-int4
          tiny-llama2-genai-int4-unfused tiny-llama2-optimum-fp32 tiny-llama2-gguf-int4 tiny-gguf-fused
          tiny-gguf-fused-f16 tiny-gguf-fused-b64 tiny-gguf-fp32)
WORK_DIRS=(stories260k-hf stories260k-optimum-fp32 tiny-llama2-hf tiny-llama2-genai-fp32 tiny-llama2-genai-int4
           tiny-llama2-genai-int4-unfused tiny-llama2-optimum-fp32 genai-cache)
for d in "${FIXTURES[@]}"; do rm -rf "${FIX:?}/$d"; done
for d in "${WORK_DIRS[@]}"; do rm -rf "${WORK:?}/$d"; done
rm -f "$WORK/tiny-llama2.Q4_0.gguf" "$WORK/tiny-fused-source.gguf"
rm -f "$FIX/CHECKS.txt" "$FIX/CHECK_REFERENCE.txt" "$FIX/REFERENCE.json"
mkdir -p "$WORK" "$FIX"

# --- 1. stories260K: llama2.c -> Hugging Face, checked against the reference ids
step "stories260K: llama2.c -> HF"
"$OPY" "$MODELS/llama2c_to_hf.py" "$STORIES_BIN" "$WORK/stories260k-hf"
step "stories260K: transformers greedy vs reference"
"$OPY" "$MODELS/check_reference.py" "$WORK/stories260k-hf" 2>&1 | tee "$FIX/CHECK_REFERENCE.txt"

# --- 2. stories260K: Optimum export (fp32) and dynamic int8 quantization
step "stories260K: optimum-cli export onnx (fp32)"
"$OPTIMUM_VENV/bin/optimum-cli" export onnx --task text-generation-with-past \
    --model "$WORK/stories260k-hf" "$WORK/stories260k-optimum-fp32"
mkdir -p "$FIX/stories260k-optimum-fp32"
for f in model.onnx config.json generation_config.json; do
    cp "$WORK/stories260k-optimum-fp32/$f" "$FIX/stories260k-optimum-fp32/$f"
done
step "stories260K: quantize_dynamic int8"
"$OPY" "$MODELS/quantize_int8.py" "$FIX/stories260k-optimum-fp32" "$FIX/stories260k-optimum-int8"

# --- 3. tiny random Llama with the Llama 2 tokenizer
step "tiny-llama2: random-weight HF checkpoint"
"$OPY" "$MODELS/make_tiny_llama.py" "$TOKENIZER_DIR" "$WORK/tiny-llama2-hf"

# 3a. onnxruntime-genai model builder: fp32, int4, int4 with separate Q/K/V MatMuls (what tract can run).
build_genai() {  # name precision [extra options...]
    local name="$1" precision="$2"; shift 2
    step "tiny-llama2: onnxruntime-genai builder -> $name"
    "$GPY" -m onnxruntime_genai.models.builder \
        -m "$WORK/tiny-llama2-hf" -i "$WORK/tiny-llama2-hf" -o "$WORK/$name" \
        -p "$precision" -e cpu -c "$WORK/genai-cache" "$@"
    mkdir -p "$FIX/$name"
    for f in model.onnx model.onnx.data genai_config.json; do
        cp "$WORK/$name/$f" "$FIX/$name/$f"
    done
    # The builder re-saves the tokenizer through transformers 5, whose
    # tokenizer.json differs from SentencePiece on leading/double spaces (see
    # README.md); ship the original Llama 2 tokenizer files instead.
    for f in "${TOKENIZER_FILES[@]}"; do
        cp "$TOKENIZER_DIR/$f" "$FIX/$name/$f"
    done
}
build_genai tiny-llama2-genai-fp32 fp32
build_genai tiny-llama2-genai-int4 int4
build_genai tiny-llama2-genai-int4-unfused int4 --extra_options fuse_qkv=false

# 3b. Optimum export of the same checkpoint (fp32).
step "tiny-llama2: optimum-cli export onnx (fp32)"
"$OPTIMUM_VENV/bin/optimum-cli" export onnx --task text-generation-with-past \
    --model "$WORK/tiny-llama2-hf" "$WORK/tiny-llama2-optimum-fp32"
mkdir -p "$FIX/tiny-llama2-optimum-fp32"
for f in model.onnx config.json generation_config.json "${TOKENIZER_FILES[@]}"; do
    cp "$WORK/tiny-llama2-optimum-fp32/$f" "$FIX/tiny-llama2-optimum-fp32/$f"
done

# 3c. The same checkpoint as a llama.cpp-style GGUF (Q4_0 linear layers, Q8_0 embedding, F32
# norms, llama.cpp's Q/K row order, Llama 2 SentencePiece vocabulary) -> gguf_to_onnx.py int4
# (default transcode: the Q4_0 codes and scales are carried over as they are). The GGUF stays in
# models/work/. The genai venv pins the same numpy/gguf/onnx/tokenizers versions as
# models/requirements-convert.txt, the converter's own venv.
step "tiny-llama2: GGUF (make_tiny_gguf.py) -> gguf_to_onnx.py --precision int4"
"$GPY" "$MODELS/make_tiny_gguf.py" "$WORK/tiny-llama2-hf" "$TOKENIZER_DIR/tokenizer.model" \
    "$WORK/tiny-llama2.Q4_0.gguf"
"$GPY" "$MODELS/gguf_to_onnx.py" "$WORK/tiny-llama2.Q4_0.gguf" "$FIX/tiny-llama2-gguf-int4" --precision int4

# The fused graph for ONNX Runtime (models/ort_graph.py) and its float reference, from one random
# GGUF with Q4_0, Q4_1 and Q8_0 tensors and tied embeddings (make_bench_gguf.py --fixture).
step "tiny GGUF (make_bench_gguf.py --fixture) -> gguf_to_onnx.py --graph fused, and fp32"
"$GPY" "$MODELS/make_bench_gguf.py" --fixture "$WORK/tiny-fused-source.gguf"
"$GPY" "$MODELS/gguf_to_onnx.py" "$WORK/tiny-fused-source.gguf" "$FIX/tiny-gguf-fused" --precision int4 --graph fused \
    --kv-cache-type f32
"$GPY" "$MODELS/gguf_to_onnx.py" "$WORK/tiny-fused-source.gguf" "$FIX/tiny-gguf-fused-f16" --precision int4 --graph fused
"$GPY" "$MODELS/gguf_to_onnx.py" "$WORK/tiny-fused-source.gguf" "$FIX/tiny-gguf-fused-b64" --precision int4 --graph fused \
    --block-size 64
"$GPY" "$MODELS/gguf_to_onnx.py" "$WORK/tiny-fused-source.gguf" "$FIX/tiny-gguf-fp32" --precision fp32

# Files copied from the read-only shared folder keep their mode; make them writable.
for d in "${FIXTURES[@]}"; do chmod -R u+w "$FIX/$d"; done

# --- 4. onnxruntime + onnxruntime-genai checks; writes REFERENCE.json
step "checks (onnxruntime, onnxruntime-genai) -> fixtures/CHECKS.txt, fixtures/REFERENCE.json"
"$GPY" "$MODELS/check_fixtures.py" --write-reference 2>&1 | tee "$FIX/CHECKS.txt"

step "sizes"
(cd "$FIX" && du -sh "${FIXTURES[@]}" && du -ch "${FIXTURES[@]}" | tail -n 1)

#!/usr/bin/env bash
# Next-token quality of llamad's weight formats against llama.cpp's, on SmolLM2-135M-Instruct
# (real weights) over models/quality/text.txt: the table in docs/quality.md.
#   models/quality/run.sh [CANDIDATE...]      (default: every candidate below)
# The reference is the demo GGUF (Q4_1) dequantized to F32 (dequantize_gguf.py). From it:
#   - llama.cpp: llama-quantize Q4_0, Q4_K_M and Q8_0, measured by llama-perplexity
#     (-c 512: perplexity over the second half of each 512-token window, KL divergence and
#     top-1 agreement against the F32 model's logits);
#   - llamad: models/gguf_to_onnx.py's fused graph at each block size and scheme, from the F32
#     GGUF and from llama.cpp's Q4_0 and Q4_K_M files (what a user converts), measured by
#     onnx_eval.py the same way against the F32 GGUF's float graph (ONNX Runtime, the KV cache
#     fed 16 tokens at a time).
# Bits per weight: the weight bytes over the F32 model's parameter count, embedding and head
# included (llama-quantize's own figure for llama.cpp's files).
# Sets up llama.cpp's tools and the venv with models/peers-setup.sh; outputs under
# models/work/quality (gitignored). About 15 minutes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
models=$(cd "$here/.." && pwd)
peers=$("$models/peers-setup.sh")
py=$peers/venv/bin/python
bin=$peers/llama.cpp-build/bin
out=$models/work/quality
mkdir -p "$out"
say() { printf '[quality] %s\n' "$*" >&2; }
"$models/fetch-demo.sh" >/dev/null
text=$here/text.txt
f32=$out/smollm2-f32.gguf
[ -f "$f32" ] || "$py" "$here/dequantize_gguf.py" "$models/demo/cache/SmolLM2-135M-Instruct.Q4_1.gguf" "$f32" >&2
converter=$(cat "$models/gguf_to_onnx.py" "$models/ort_graph.py" | sha256sum | cut -d' ' -f1)
convert() {  # GGUF OUT [gguf_to_onnx options]
  local src=$1 dst=$2; shift 2
  if [ "$(cat "$dst/.converter" 2>/dev/null)" != "$converter $*" ]; then
    say "converting $(basename "$src") -> $(basename "$dst") ($*)"
    rm -rf "$dst"
    (cd "$models" && "$py" gguf_to_onnx.py "$src" "$dst" "$@") >/dev/null
    echo "$converter $*" > "$dst/.converter"
  fi
}
results=$out/results.jsonl
: > "$results"

# llama.cpp
base=$out/f32.kld
if [ ! -s "$base" ]; then
  "$bin/llama-perplexity" -m "$f32" -f "$text" -c 512 -t 2 --kl-divergence-base "$base" > "$out/ppl-f32.log" 2>&1
fi
"$py" - "$out/ppl-f32.log" >> "$results" <<'PY'
import json, re, sys
ppl = float(re.search(r"Final estimate: PPL = ([\d.]+)", open(sys.argv[1]).read()).group(1))
print(json.dumps({"tool": "llama.cpp", "model": "F32", "ppl": ppl, "bpw": 32.0}))
PY
for q in Q4_0 Q4_K_M Q8_0; do
  gguf=$out/smollm2-$q.gguf
  [ -f "$gguf" ] && [ -f "$out/quantize-$q.log" ] || "$bin/llama-quantize" "$f32" "$gguf" "$q" 2 > "$out/quantize-$q.log" 2>&1
  say "llama.cpp $q"
  "$bin/llama-perplexity" -m "$gguf" -f "$text" -c 512 -t 2 --kl-divergence-base "$base" --kl-divergence \
    > "$out/ppl-$q.log" 2>&1
  "$py" - "$out/ppl-$q.log" "$out/quantize-$q.log" "$q" >> "$results" <<'PY'
import json, re, sys
log, qlog, q = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
ppl = float(re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log).group(1))
kl = float(re.search(r"Mean\s+KLD:\s*([\d.]+)", log).group(1))
top1 = float(re.search(r"Same top p:\s*([\d.]+)", log).group(1)) / 100
bpw = float(re.search(r"quant size\s*=\s*[\d.]+ MiB \(([\d.]+) BPW\)", qlog).group(1))
print(json.dumps({"tool": "llama.cpp", "model": q, "ppl": ppl, "kl": kl, "top1": top1, "bpw": bpw}))
PY
done

# llamad
ref=$out/onnx-fp32
convert "$f32" "$ref" --precision fp32
declare -A cand=(
  [f32-b32-asym]="$f32|--int4-scheme asym"
  [f32-b32-sym]="$f32|--int4-scheme sym"
  [f32-b64-asym]="$f32|--int4-scheme asym --block-size 64"
  [f32-b64-sym]="$f32|--int4-scheme sym --block-size 64"
  [f32-b128-asym]="$f32|--int4-scheme asym --block-size 128"
  [f32-b128-sym]="$f32|--int4-scheme sym --block-size 128"
  [f32-b32-asym-head4]="$f32|--int4-scheme asym --head-bits 4"
  [q4_0-b32]="$out/smollm2-Q4_0.gguf|"
  [q4_0-b64-asym]="$out/smollm2-Q4_0.gguf|--block-size 64"
  [q4_k_m-b32-asym]="$out/smollm2-Q4_K_M.gguf|"
  [q4_k_m-b64-asym]="$out/smollm2-Q4_K_M.gguf|--block-size 64"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(q4_0-b32 f32-b32-asym f32-b32-sym f32-b64-asym f32-b64-sym f32-b128-asym
  f32-b128-sym f32-b32-asym-head4 q4_0-b64-asym q4_k_m-b32-asym q4_k_m-b64-asym)
dirs=()
for n in "${names[@]}"; do
  [ -n "${cand[$n]:-}" ] || { echo "unknown candidate $n (known: ${!cand[*]})" >&2; exit 2; }
  IFS='|' read -r src opts <<< "${cand[$n]}"
  # shellcheck disable=SC2086
  convert "$src" "$out/onnx-$n" --precision int4 --graph fused $opts
  dirs+=("$out/onnx-$n")
done
say "llamad: ${#dirs[@]} candidates"
"$py" "$here/onnx_eval.py" "$ref" "${dirs[@]}" --json 2>/dev/null | grep '^{' >> "$results"
"$py" - "$results" "$f32" <<'PY'
import json, os, sys
import gguf
params = sum(int(t.n_elements) for t in gguf.GGUFReader(sys.argv[2]).tensors)
rows = [json.loads(l) for l in open(sys.argv[1])]
def weight_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in ("model.onnx", "model.onnx.data")
               if os.path.exists(os.path.join(d, f)))
print(f"SmolLM2-135M-Instruct ({params / 1e6:.1f}M parameters) over models/quality/text.txt")
print(f"{'tool':10} {'model':22} {'bits/weight':>11} {'PPL':>8} {'top-1':>8} {'KL':>8}")
for r in rows:
    if r.get("tool") == "llama.cpp":
        tool, name, bpw = "llama.cpp", r["model"], r["bpw"]
    else:
        tool, name = "llamad", os.path.basename(r["model"]).removeprefix("onnx-")
        bpw = weight_bytes(r["model"]) * 8 / params
    top1 = f"{100 * r['top1']:.2f} %" if "top1" in r else "ref"
    kl = f"{r['kl']:.4f}" if "kl" in r else "-"
    print(f"{tool:10} {name:22} {bpw:>11.2f} {r['ppl']:>8.3f} {top1:>8} {kl:>8}")
PY

#!/usr/bin/env bash
# Speed of llamad's core on MODEL_DIR, both backends, 1 and 2 threads, next to
# onnxruntime-genai's own Python loop on the same file, all in one run; figures
# are also given as ratios to that baseline (this machine is shared and noisy).
#   models/bench.sh MODEL_DIR [PROMPT_TOKENS] [NEW_TOKENS]
# Needs: a built llamad (cargo build), ORT_DYLIB_PATH (tests/run sets one up in
# target/), and GENAI_VENV with onnxruntime-genai for the baseline.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=$1; P=${2:-64}; N=${3:-64}
llamad=${LLAMAD:-$here/../target/debug/llamad}
GENAI_VENV=${GENAI_VENV:-/root/venvs/genai}
ids="1 $(seq -s ' ' 100 $((100 + P - 2)))"
results=$(mktemp)
for t in 1 2; do
  "$GENAI_VENV/bin/python" "$here/bench_genai.py" "$model" --prompt-tokens "$P" --new-tokens "$N" --threads "$t" >> "$results"
  for b in onnxruntime tract; do
    if "$llamad" generate --model "$model" --backend "$b" --threads "$t" --tokens "$ids" \
        --max-tokens "$N" --ignore-eos --json 2>&1 >/dev/null | tail -1 > "$results.one"; then
      python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["threads"]=int(sys.argv[2]); print(json.dumps(d))' "$results.one" "$t" >> "$results"
    else
      echo "{\"backend\": \"$b\", \"threads\": $t, \"error\": $(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$results.one")}" >> "$results"
    fi
  done
done
python3 - "$results" "$model" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"model: {sys.argv[2]}")
print(f"{'backend':34} {'thr':>3} {'prompt tok/s':>13} {'decode tok/s':>13} {'ttft ms':>9} {'vs genai (prompt/decode)':>26} {'peak RSS MiB':>13}")
base = {r["threads"]: r for r in rows if r["backend"].startswith("onnxruntime-genai")}
for r in rows:
    name = r["backend"] + (f" ({r['provider']})" if "provider" in r else "")
    if "error" in r:
        print(f"{name:34} {r['threads']:>3} error: {r['error'][:100]}")
        continue
    b = base.get(r["threads"])
    ratio = f"{r['prompt_tokens_per_s']/b['prompt_tokens_per_s']:.2f}x / {r['decode_tokens_per_s']/b['decode_tokens_per_s']:.2f}x" if b else "-"
    rss = f"{r['peak_rss_kib']/1024:.0f}" if "peak_rss_kib" in r else "-"
    print(f"{name[:34]:34} {r['threads']:>3} {r['prompt_tokens_per_s']:>13.1f} {r['decode_tokens_per_s']:>13.1f} {r['ttft_ms']:>9.1f} {ratio:>26} {rss:>13}")
PY
rm -f "$results" "$results.one"

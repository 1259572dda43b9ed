#!/usr/bin/env bash
# Whether a model serves its whole context under a memory budget: a fresh llamad on a private
# bus with `[memory] budget = BUDGET`, `llamactl estimate` (what it counts, the longest context
# that fits), then one request whose prompt and max_tokens fill the context (admitted only if
# its KV reservation fits next to the weights), and the daemon's peak RSS against the budget.
#   models/check-budget.sh MODEL_DIR [BUDGET (8GiB)] [MAX_TOKENS (32)]
# The prompt is models/quality/text.txt, repeated and cut to leave MAX_TOKENS of the context.
# Needs a built llamad and llamactl (cargo build) and ONNX Runtime (models/fetch-onnxruntime.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dir=$(cd "$1" && pwd); budget=${2:-8GiB}; gen=${3:-32}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/fetch-onnxruntime.sh")}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir "$work/models"; ln -s "$dir" "$work/models/m"
printf '[memory]\nbudget = "%s"\n' "$budget" > "$work/llamad.toml"
export ROOT=$root WORK=$work GEN=$gen TEXT=$here/quality/text.txt
cat > "$work/report.py" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["stats"]
hwm, t, ctx = int(sys.argv[2]) / 1024, float(sys.argv[4]) - float(sys.argv[3]), int(sys.argv[5])
total = r["prompt_tokens"] + r["generated_tokens"]
print(f"served: {r['prompt_tokens']} prompt tokens + {r['generated_tokens']} generated = {total} of {ctx} "
      f"({r['finish_reason']}); prompt {r['prompt_tokens_per_s']:.1f} tok/s, decode "
      f"{r['decode_tokens_per_s']:.2f} tok/s, {t:.0f} s in all")
print(f"daemon peak RSS: {hwm:.0f} MiB")
PY
dbus-run-session -- bash -c '
  set -euo pipefail
  ctl="$ROOT/target/debug/llamactl --session"
  "$ROOT/target/debug/llamad" serve --session --config "$WORK/llamad.toml" --models-dir "$WORK/models" \
    2> "$WORK/llamad.log" &
  pid=$!
  for _ in $(seq 100); do $ctl status >/dev/null 2>&1 && break; sleep 0.1; done
  ctx=$($ctl --json models | python3 -c "import json,sys; print(next(m for m in json.load(sys.stdin) if m[\"name\"] == \"m\")[\"context_length\"])")
  $ctl estimate m --ctx "$ctx"
  # a prompt of about ctx - GEN - 16 tokens of the text (its own tokenizer counts, via the daemon)
  prompt=$(python3 - "$TEXT" <<PY
import sys
t = open(sys.argv[1]).read()
print((t * 4)[: int(($ctx - $GEN - 16) * 4.1)])
PY
)
  start=$(date +%s.%N)
  $ctl --json run m "$prompt" --max-tokens "$GEN" --temperature 0 > "$WORK/run.json" || { cat "$WORK/llamad.log" | tail -5; exit 1; }
  end=$(date +%s.%N)
  hwm=$(grep VmHWM /proc/$pid/status | awk "{print \$2}")
  python3 "$WORK/report.py" "$WORK/run.json" "$hwm" "$start" "$end" "$ctx"
  kill -TERM $pid; wait $pid || true
'

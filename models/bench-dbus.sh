#!/usr/bin/env bash
# D-Bus overhead and daemon memory, in one run:
#  - decode tokens/s of the same request (model, prompt, seed, sampling) through
#    llamad + llamactl on a private bus, and through the core's own command
#    (`llamad generate`), alternating, N rounds each;
#  - the daemon's RSS (from /proc, outside the process): idle, as started (nothing asked of it
#    yet but its bus name); after `llamactl status` (reading `Providers` sets ONNX Runtime up);
#    with the model loaded; after the requests.
#   models/bench-dbus.sh MODEL_DIR [ROUNDS] [MAX_TOKENS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
model=$(cd "$1" && pwd); rounds=${2:-3}; max=${3:-128}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/fetch-onnxruntime.sh")}
export MODEL="$model" ROUNDS="$rounds" MAX="$max" ROOT="$root"
models=$(mktemp -d); ln -s "$model" "$models/m"; export MODELS_DIR="$models"
dbus-run-session -- bash -c '
  set -euo pipefail
  ctl="$ROOT/target/debug/llamactl --session"
  "$ROOT/target/debug/llamad" serve --session --models-dir "$MODELS_DIR" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do
    busctl --address="$DBUS_SESSION_BUS_ADDRESS" status org.llamad.Llama1 >/dev/null 2>&1 && break
    sleep 0.1
  done
  sleep 1  # the housekeeping thread has measured its baseline
  rss() { awk "/VmRSS/ {print \$2}" /proc/$pid/status; }
  echo "idle daemon RSS: $(awk "/VmRSS/ {printf \"%.1f\", \$2 / 1024}" /proc/$pid/status) MiB"
  $ctl status >/dev/null
  echo "RSS after llamactl status (ONNX Runtime set up): $(( $(rss) / 1024 )) MiB"
  args="--seed 1 --temperature 0.8 --max-tokens $MAX"
  $ctl load m
  echo "RSS with the model loaded: $(( $(rss) / 1024 )) MiB"
  for i in $(seq "$ROUNDS"); do
    d=$($ctl --json run m "Once upon a time" $args | python3 -c "import json,sys; s=json.load(sys.stdin)[\"stats\"]; print(s[\"decode_tokens_per_s\"], s[\"generated_tokens\"])")
    c=$("$ROOT/target/debug/llamad" generate --model "$MODEL" --backend onnxruntime --prompt "Once upon a time" $args --top-p 0.95 --top-k 40 --repetition-penalty 1.1 --json 2>&1 >/dev/null | tail -1 | python3 -c "import json,sys; s=json.load(sys.stdin); print(s[\"decode_tokens_per_s\"], s[\"generated_tokens\"])")
    echo "round $i: through D-Bus ${d% *} tok/s (${d#* } tokens) | core ${c% *} tok/s (${c#* } tokens) | ratio $(python3 -c "print(round(${d% *}/${c% *}, 3))")"
  done
  echo "RSS after the requests: $(( $(rss) / 1024 )) MiB"
  kill -TERM $pid; wait $pid || true
'
rm -rf "$models"

#!/usr/bin/env bash
# What copying a loaded model's mapped files costs (`memory.private_model_files`,
# daemon/src/engine/file_maps.rs): ROUNDS rounds, each loading MODEL_DIR on ONNX Runtime in
# a fresh llamad on a private bus with the copy on and with it off, in alternating order.
# Per load: the daemon's measured size of the model (anonymous + file-backed), the load's
# seconds and the copy's milliseconds (both from the daemon's log); then the medians.
#   models/bench-private-files.sh MODEL_DIR [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
[[ $# -ge 1 ]] || { echo "usage: $0 MODEL_DIR [ROUNDS]" >&2; exit 2; }
dir=$(cd "$1" && pwd)
rounds=${2:-5}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/fetch-onnxruntime.sh")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/models"
ln -s "$dir" "$work/models/m"
for copy in true false; do
  printf 'models_dir = "%s"\nbackend = "onnxruntime"\n[memory]\nprivate_model_files = %s\n' \
    "$work/models" "$copy" > "$work/$copy.toml"
done
export ROOT="$root" WORK="$work"
for round in $(seq "$rounds"); do
  if (( round % 2 )); then order="true false"; else order="false true"; fi
  for copy in $order; do
    COPY=$copy dbus-run-session -- bash -c '
      set -euo pipefail
      ctl="$ROOT/target/debug/llamactl --session"
      LLAMAD_LOG=debug,ort=warn "$ROOT/target/debug/llamad" serve --session --config "$WORK/$COPY.toml" \
        2> "$WORK/log" &
      pid=$!
      for _ in $(seq 100); do $ctl status >/dev/null 2>&1 && break; sleep 0.1; done
      $ctl load m >/dev/null
      $ctl --json ps | python3 -c "
import json, re, sys
m = next(m for m in json.load(sys.stdin) if m[\"name\"] == \"m\")
log = re.sub(r\"\x1b\[[0-9;]*m\", \"\", open(\"$WORK/log\").read())
secs = re.search(r\"model loaded .*?seconds=([0-9.]+)\", log).group(1)
ms = re.search(r\"made private .*?ms=([0-9]+)\", log)
M = 1048576
print(\"$COPY\", m[\"measured_bytes\"] / M, m[\"measured_anon_bytes\"] / M, m[\"measured_file_bytes\"] / M, secs,
      ms.group(1) if ms else \"-\")
"
      kill -TERM $pid; wait $pid || true
    '
  done
done | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
print("| copy | measured MiB | anon MiB | file MiB | load s | copy ms |\n|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {float(r[1]):.1f} | {float(r[2]):.1f} | {float(r[3]):.1f} | {float(r[4]):.3f} | {r[5]} |")
for copy in ("true", "false"):
    sel = [r for r in rows if r[0] == copy]
    med = lambda i: statistics.median(float(r[i]) for r in sel)
    print(f"median, copy {copy}: measured {med(1):.1f} MiB (anon {med(2):.1f}, file {med(3):.1f}), load {med(4):.3f} s")
'

#!/usr/bin/env bash
# Estimated vs measured memory of model directories, per backend: for each (backend,
# model) a fresh llamad on a private bus loads the model alone, and `llamactl --json ps`
# gives the daemon's estimate (made from the directory before loading) and the resident
# growth it measured over the load (anonymous and file-backed parts).
# With --warm DIR (or --warm self: the model itself), DIR is loaded and unloaded first: the figures are then the model's own,
# without the code pages that a backend's first load brings in (part of the daemon's
# baseline after that).
#   models/bench-memory.sh [--backends "onnxruntime tract"] [--warm DIR|self] MODEL_DIR...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
backends="onnxruntime tract"
warm=
while [[ ${1:-} == --* ]]; do
  case $1 in
    --backends) backends=$2; shift 2 ;;
    --warm) warm=$2; [[ $warm == self ]] || warm=$(cd "$2" && pwd); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--backends \"onnxruntime tract\"] [--warm DIR|self] MODEL_DIR..." >&2; exit 2; }
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/fetch-onnxruntime.sh")}
export ROOT="$root" ROW
ROW=$(mktemp --suffix .py)
trap 'rm -f "$ROW"' EXIT
cat > "$ROW" <<'PY'
import json, sys
m = next(m for m in json.load(sys.stdin) if m["name"] == sys.argv[1])
M = 1048576
e, r = m["estimated_bytes"], m["measured_bytes"]
p, q = m["estimated_peak_bytes"], m["measured_peak_bytes"]
print(f"| {m['backend']} | {m['name']} | {m['file_size'] / M:.1f} | {e / M:.1f} | "
      f"{r / M:.1f} ({m['measured_anon_bytes'] / M:.1f} + {m['measured_file_bytes'] / M:.1f}) | {(e / r - 1) * 100:+.0f} % | "
      f"{p / M:.1f} | {q / M:.1f} ({(p / q - 1) * 100:+.0f} %) |")
PY
printf '| backend | model | file MiB | estimated MiB | measured MiB (anon + file) | error | load peak: estimated | measured |\n|---|---|---|---|---|---|---|---|\n'
for backend in $backends; do
  for dir in "$@"; do
    models=$(mktemp -d); ln -s "$(cd "$dir" && pwd)" "$models/$(basename "$dir")"
    if [[ $warm == self ]]; then ln -s "$(cd "$dir" && pwd)" "$models/warm-up"
    elif [[ -n $warm ]]; then ln -s "$warm" "$models/warm-up"; fi
    MODELS_DIR="$models" NAME="$(basename "$dir")" BACKEND="$backend" dbus-run-session -- bash -c '
      set -euo pipefail
      ctl="$ROOT/target/debug/llamactl --session"
      "$ROOT/target/debug/llamad" serve --session --models-dir "$MODELS_DIR" 2>/dev/null &
      pid=$!
      for _ in $(seq 100); do $ctl status >/dev/null 2>&1 && break; sleep 0.1; done
      if [[ -e $MODELS_DIR/warm-up ]]; then
        $ctl load warm-up --backend "$BACKEND" >/dev/null && $ctl unload warm-up
      fi
      if $ctl load "$NAME" --backend "$BACKEND" >/dev/null 2>&1; then
        $ctl --json ps | python3 "$ROW" "$NAME"
      else
        echo "| $BACKEND | $NAME | - | - | not loadable on this backend | - | - | - |"
      fi
      kill -TERM $pid; wait $pid || true
    '
    rm -rf "$models"
  done
done

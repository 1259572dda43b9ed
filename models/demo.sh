#!/usr/bin/env bash
# The demo (README "Two commands"): builds llamad and llamactl, fetches and converts
# SmolLM2-135M-Instruct (models/fetch-demo.sh), starts llamad on a private session bus
# and chats with it through llamactl. With a terminal, the chat stays open afterwards
# (an empty line quits).
#   models/demo.sh ["your question"]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
question=${1:-"What is the capital of France? Answer in one sentence."}

if ! command -v dbus-run-session >/dev/null || ! command -v dbus-daemon >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends dbus-daemon dbus-bin >/dev/null
fi
cargo build --workspace
models/fetch-demo.sh
ORT_DYLIB_PATH=$(models/fetch-onnxruntime.sh)
export ORT_DYLIB_PATH

models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
# smollm2: the fused graph, ONNX Runtime's fast path (the daemon's backend when the library is
# there, as here); smollm2-int4 and smollm2-fp32: the standard graphs, on either backend.
ln -s "$root/models/demo/smollm2-135m-instruct-fused" "$models/smollm2"
ln -s "$root/models/demo/smollm2-135m-instruct-int4" "$models/smollm2-int4"
ln -s "$root/models/demo/smollm2-135m-instruct-fp32" "$models/smollm2-fp32"
export LLAMAD_MODELS="$models" QUESTION="$question" ROOT="$root"

# A private session bus for the daemon and the client; both end with it.
dbus-run-session -- bash -c '
  set -euo pipefail
  ctl="$ROOT/target/debug/llamactl --session"
  "$ROOT/target/debug/llamad" serve --session --models-dir "$LLAMAD_MODELS" 2>"$LLAMAD_MODELS/llamad.log" &
  daemon=$!
  for _ in $(seq 100); do $ctl status >/dev/null 2>&1 && break; sleep 0.1; done
  $ctl status
  echo
  $ctl models
  echo
  echo ">>> $QUESTION"
  printf "%s\n" "$QUESTION" | $ctl chat smollm2
  $ctl ps
  if [ -t 0 ]; then
    echo; echo "Chat with SmolLM2 (an empty line quits):"
    $ctl chat smollm2 || true
  fi
  kill -TERM $daemon; wait $daemon || true
'

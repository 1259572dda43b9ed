#!/usr/bin/env bash
# The chaos suite as a soak: random workloads (daemon/tests/chaos.rs) on a real daemon for
# SECONDS in all (default 3600), seed after seed, alternating tract and ONNX Runtime and
# budgets from none to tight. Prints each seed's figures (lines starting "chaos:": requests,
# how they finished, errors by name, clients that left, greedy texts compared, peak RSS
# against the budget, baseline before and after, time to quiet) and fails on the first
# broken invariant.
#
#   models/soak.sh [SECONDS] [SECONDS_PER_SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-3600}
per=${2:-120}
n=$(( (total + per - 1) / per ))
seeds=$(seq -s, 100 $((99 + n)))
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$(models/fetch-onnxruntime.sh)
  export ORT_DYLIB_PATH
fi
log="${TMPDIR:-/tmp}/llamad-soak.log"
# the same build as the test suite's (tests/run): nothing is compiled twice
cargo build --workspace --all-targets -q
status=0
CHAOS_SEEDS=$seeds CHAOS_SECONDS=$per cargo test -q -p llamad --test chaos -- --nocapture > "$log" 2>&1 || status=$?
grep '^chaos: seed' "$log" || true
[ $status -eq 0 ] || { tail -40 "$log"; echo "soak: FAILED (full log: $log)"; }
echo "soak: $(grep -c '^chaos: seed' "$log") seeds of ${per} s passed; log: $log"
exit $status

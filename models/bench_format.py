#!/usr/bin/env python3
"""Decode cost of structured output: the same chat request on the demo model
with a JSON Schema and without, alternating, through `llamad generate` (no
D-Bus), on each backend.

Both generate exactly --tokens tokens: the free run ignores EOS and the
schema (an array of 64 strings) cannot finish sooner. Tokens a grammar forces
are fed without sampling and cost no step of their own, so the figure
compared is the time per decoding step (forward pass, mask and sampling):
decode time / (tokens after the first - forced tokens). Ratio > 1: the schema
costs that much more per step. That ratio moves with the machine's noise; the
time spent picking tokens (mask and sampling, timed inside the run) does not
depend on the forward pass, so the mask's own cost is also printed as a share
of a free step.

    models/bench_format.py [--model DIR] [--rounds 5] [--tokens 128]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = {"type": "array", "minItems": 64, "maxItems": 64, "items": {"type": "string", "maxLength": 24}}
PROMPT = "List sixty-four English words as a JSON array of strings."


def run(a, backend, schema_file):
    cmd = [os.path.join(ROOT, "target/debug/llamad"), "generate", "--model", a.model, "--backend", backend,
           "--chat", PROMPT, "--max-tokens", str(a.tokens), "--temperature", "0.7", "--seed", "1", "--json"]
    cmd += ["--json-schema", schema_file] if schema_file else ["--ignore-eos"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    s = json.loads(p.stderr.strip().splitlines()[-1])
    after_first = s["generated_tokens"] - 1
    decode_s = after_first / s["decode_tokens_per_s"]
    steps = after_first - (s["forced_tokens"] if schema_file else 0)
    # picking (mask and sampling) per token picked, prompt's token included
    s["pick_ms_per_token"] = s["pick_ms"] / (steps + 1)
    return decode_s / steps * 1e3, s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/demo/smollm2-135m-instruct-int4"))
    ap.add_argument("--backends", default="tract,onnxruntime")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    if not os.path.isdir(a.model):
        sys.exit(f"{a.model}: no such model (models/fetch-demo.sh fetches the demo model)")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(SCHEMA, f)
    for backend in a.backends.split(","):
        free, constrained, forced, pick_free, pick_schema = [], [], [], [], []
        for r in range(a.rounds):
            # alternate which goes first, so drift on a shared machine hits both
            order = [None, f.name] if r % 2 == 0 else [f.name, None]
            for schema in order:
                ms, s = run(a, backend, schema)
                (constrained if schema else free).append(ms)
                (pick_schema if schema else pick_free).append(s["pick_ms_per_token"])
                if schema:
                    forced.append(s["forced_tokens"])
        ratios = [c / f_ for c, f_ in zip(constrained, free)]
        print(f"{backend}: ms per step free {statistics.median(free):.2f}, with the schema "
              f"{statistics.median(constrained):.2f} (forced {statistics.median(forced):.0f} of {a.tokens} tokens); "
              f"ratio median {statistics.median(ratios):.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)})")
        extra = statistics.median(pick_schema) - statistics.median(pick_free)
        print(f"  picking per token: free {statistics.median(pick_free):.3f} ms, with the schema "
              f"{statistics.median(pick_schema):.3f} ms: the mask adds {extra:.3f} ms, "
              f"{100 * extra / statistics.median(free):.1f} % of a free step")
    os.unlink(f.name)


if __name__ == "__main__":
    main()

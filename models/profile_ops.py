#!/usr/bin/env python3
"""Where a decode step's time goes, per operator type, at 1 and 2 threads (ONNX Runtime's own
profiler), for the thread-scaling question in docs/benchmarks.md.

    python models/profile_ops.py MODEL_DIR [--threads 1 2] [--context 128] [--steps 64]

Each thread count: a session with profiling on, a prompt of CONTEXT tokens, then STEPS one-token
steps fed through the KV cache (past in, present out, as models/quality/onnx_eval.py does; llamad
binds one shared buffer instead, which saves the copy of the cache, not the operators' time). The
table: milliseconds a step per operator type and thread count, and the speed-up of each.
Needs numpy and onnxruntime (the bench-peers venv).
"""
import argparse
import collections
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "quality"))
from onnx_eval import Model  # noqa: E402


def profile(model_dir, threads, context, steps):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = f"/tmp/profile-ops-{threads}"
    m = Model.__new__(Model)
    Model.__init__(m, model_dir, threads)
    m.s = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in m.s.get_outputs()]
    past = {n: np.zeros((1, m.kv, 0, m.head_dim), m.kv_type) for n in m.past}
    ids = list(range(100, 100 + context))

    def feed(tokens, start):
        f = {"input_ids": np.array([tokens], np.int64), "attention_mask": np.ones((1, start + len(tokens)), np.int64),
             **past}
        if "logits_to_keep" in m.inputs:
            f["logits_to_keep"] = np.array(1, np.int64)
        return dict(zip(names, m.s.run(None, f)))

    out = feed(ids, 0)
    past = {n: out[n.replace("past_key_values.", "present.")] for n in m.past}
    marks = []
    for i in range(steps):
        out = feed([300 + i % 50], context + i)
        past = {n: out[n.replace("past_key_values.", "present.")] for n in m.past}
    path = m.s.end_profiling()
    events = json.load(open(path))
    os.remove(path)
    runs = [e for e in events if e.get("name") == "model_run"]
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    # the prompt's run is the first: leave it out
    first_end = runs[0]["ts"] + runs[0]["dur"]
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end:
            per_op[e["args"]["op_name"]] += e["dur"]
    step_ms = sum(r["dur"] for r in runs[1:]) / 1e3 / steps
    return step_ms, {k: v / 1e3 / steps for k, v in per_op.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    res = {t: profile(a.model, t, a.context, a.steps) for t in a.threads}
    ops = sorted({k for _, p in res.values() for k in p}, key=lambda k: -res[a.threads[0]][1].get(k, 0))
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''} ms" for t in a.threads)
    print(f"| operator | {head} | speed-up |")
    print("|---|" + "---|" * (len(a.threads) + 1))
    first, last = a.threads[0], a.threads[-1]
    for k in ops:
        v = [res[t][1].get(k, 0.0) for t in a.threads]
        print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {v[0] / v[-1]:.2f}x |" if v[-1] else " | - |")
    kern = [sum(res[t][1].values()) for t in a.threads]
    print("| all kernels | " + " | ".join(f"{x:.3f}" for x in kern) + f" | {kern[0] / kern[-1]:.2f}x |")
    steps = [res[t][0] for t in a.threads]
    print("| whole step (run) | " + " | ".join(f"{x:.3f}" for x in steps) + f" | {steps[0] / steps[-1]:.2f}x |")


if __name__ == "__main__":
    main()

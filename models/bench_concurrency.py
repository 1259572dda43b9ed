#!/usr/bin/env python3
"""Aggregate decode speed of N concurrent requests against one, through the daemon.

    python models/bench_concurrency.py --llamad target/release/llamad MODEL_DIR [--clients 4]
        [--threads 2] [--tokens 64] [--rounds 3]

A daemon on a private bus serves MODEL_DIR in three set-ups, one after another in each round:
`max_parallel` 1 (requests take turns), `max_parallel` CLIENTS with `batch_decode` off (the
sequences take turns on the model's session, one forward pass each) and on (their one-token
steps run as one pass). Each runs one request alone, then CLIENTS requests at once (separate
llamactl processes, greedy, the same prompt, GEN tokens each), and prints the aggregate
generated tokens per second of wall time (from the first request's start to the last one's end)
against one request's, per round and as medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import Daemon  # noqa: E402

PROMPT = "Once upon a time"


def requests(daemon, n, tokens):
    cmd = daemon.ctl + ["--json", "run", "m", PROMPT, "--max-tokens", str(tokens), "--temperature", "0"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=daemon.env)
             for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    stats = [json.loads(o.strip().splitlines()[-1])["stats"] for o in outs]
    return sum(s["generated_tokens"] for s in stats) / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llamad", required=True)
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    a.gen = a.tokens
    setups = [("max_parallel 1", 1, True), (f"max_parallel {a.clients}, batch_decode off", a.clients, False),
              (f"max_parallel {a.clients}, batch_decode on", a.clients, True)]
    d = Daemon(a, {"m": a.model})
    results = {name: ([], [], []) for name, _, _ in setups}
    try:
        for r in range(a.rounds):
            for name, parallel, batch in setups:
                d.start(a.threads, extra=f"max_parallel = {parallel}\n[onnxruntime]\n"
                                         f"batch_decode = {str(batch).lower()}\n")
                requests(d, 1, 8)  # load the model
                one = requests(d, 1, a.tokens)
                agg = requests(d, a.clients, a.tokens)
                ones, many, ratios = results[name]
                ones.append(one)
                many.append(agg)
                ratios.append(agg / one)
                print(f"round {r + 1}, {name}: one {one:.1f} tok/s, {a.clients} at once {agg:.1f} tok/s "
                      f"({agg / one:.2f}x)", flush=True)
        for name, (ones, many, ratios) in results.items():
            print(f"{name}: one request {statistics.median(ones):.1f} tok/s, {a.clients} at once "
                  f"{statistics.median(many):.1f} tok/s in all; ratio per round "
                  + " ".join(f"{r:.2f}" for r in ratios))
    finally:
        d.close()


if __name__ == "__main__":
    main()

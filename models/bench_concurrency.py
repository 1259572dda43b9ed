#!/usr/bin/env python3
"""Aggregate decode speed of N concurrent requests against one, through the daemon.

    python models/bench_concurrency.py --llamad target/debug/llamad MODEL_DIR [--clients 4]
        [--parallel 1 4] [--threads 2] [--tokens 64] [--rounds 3]

A daemon on a private bus serves MODEL_DIR with `max_parallel` P (each value given); for each
round it runs one request alone, then CLIENTS requests at once (separate llamactl processes,
greedy, the same prompt, GEN tokens each), and prints the aggregate generated tokens per second
of wall time (from the first request's start to the last one's end) against one request's.
Sequences of one model share its ONNX Runtime session, which runs one forward pass at a time:
this measures what concurrency gives without batching them into one pass.
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
    d = Daemon(a, {"m": a.model})
    try:
        for p in a.parallel:
            d.start(a.threads, extra=f"max_parallel = {p}\n")
            requests(d, 1, 8)  # load the model
            ratios, ones, many = [], [], []
            for _ in range(a.rounds):
                one = requests(d, 1, a.tokens)
                agg = requests(d, a.clients, a.tokens)
                ones.append(one)
                many.append(agg)
                ratios.append(agg / one)
            print(f"max_parallel {p}: one request {statistics.median(ones):.1f} tok/s, {a.clients} at once "
                  f"{statistics.median(many):.1f} tok/s in all; ratio per round "
                  + " ".join(f"{r:.2f}" for r in ratios))
    finally:
        d.close()


if __name__ == "__main__":
    main()

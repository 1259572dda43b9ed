#!/usr/bin/env python3
"""CPU time per streamed token outside the computation, through the daemon.

    python3 models/bench_dbus_cpu.py --llamad target/debug/llamad MODEL_DIR [--tokens 256] [--rounds 3]

Wall-clock ratios of D-Bus against the core move by ±15 % from round to round on a shared
machine; CPU time does not move much. A daemon on a private bus serves MODEL_DIR (ONNX Runtime,
2 threads); each round runs one greedy request through llamactl and reads, from /proc, the CPU
time each of the daemon's threads, the dbus-daemon and llamactl used, per generated token. The
two busiest daemon threads are the computation (the worker and ONNX Runtime's pool thread); the
rest is what streaming costs. On two cores every millisecond of it can stall a step whose two
threads wait for each other, so `streaming / (compute / threads)` bounds the D-Bus path's cost
from above: the ratio to the core is at least 1 minus that.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import Daemon  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            out[t] = (int(f[11]) + int(f[12])) / TICK
        except FileNotFoundError:
            pass
    return out


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llamad", required=True)
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.gen = a.tokens
    d = Daemon(a, {"m": a.model})
    try:
        d.start(a.threads, extra="max_parallel = 1\n")
        subprocess.run(d.ctl + ["load", "m"], check=True, capture_output=True, env=d.env)
        cmd = d.ctl + ["--json", "run", "m", "Once upon a time", "--max-tokens", str(a.tokens),
                       "--temperature", "0"]
        for r in range(a.rounds):
            t0, b0 = thread_cpu(d.proc.pid), proc_cpu(d.bus.pid)
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run(cmd, capture_output=True, text=True, env=d.env, check=True).stdout
            t1, b1 = thread_cpu(d.proc.pid), proc_cpu(d.bus.pid)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats = json.loads(out.strip().splitlines()[-1])["stats"]
            n = stats["generated_tokens"]
            per = sorted(((v - t0.get(t, 0)) * 1e3 / n for t, v in t1.items()), reverse=True)
            compute, daemon = sum(per[:a.threads]), sum(per[a.threads:])
            bus = (b1 - b0) * 1e3 / n
            ctl = ((c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)) * 1e3 / n
            streaming = daemon + bus + ctl
            bound = streaming / (compute / a.threads)
            print(f"round {r + 1}: {n} tokens at {stats['decode_tokens_per_s']:.1f} tok/s; CPU ms a token: compute "
                  f"{compute:.2f}, streaming {streaming:.3f} (daemon {daemon:.3f}, dbus-daemon {bus:.3f}, "
                  f"llamactl {ctl:.3f}); D-Bus against the core at least {1 - bound:.3f}", flush=True)
    finally:
        d.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An interactive request's time to first token while background requests stream.

    python3 models/bench_priority.py --llamad target/debug/llamad MODEL_DIR [--rounds 5]
        [--threads 2] [--backend onnxruntime] [--background 2] [--prompt-words 120]

A daemon on a private bus serves MODEL_DIR (max_parallel 4). Each round measures, in turn:
the interactive request alone (idle); the same request while BACKGROUND llamactl clients
stream long answers with `--priority background` (they pause while it runs; a regular
expression that allows no end before 6,000 characters keeps them streaming); and while the
same clients stream as interactive work (no priority: every request shares the CPU, the
behaviour without classes). The time to first token is taken by this client (plain D-Bus
through jeepney): from sending Generate to the first Token signal. Prints each round's
figures and the medians, with each loaded case's ratio to idle (the target: background
within 1.5x of idle).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

from jeepney import DBusAddress, HeaderFields, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import Proxy, open_dbus_connection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import Daemon  # noqa: E402

MANAGER = DBusAddress("/org/llamad/Llama1", bus_name="org.llamad.Llama1", interface="org.llamad.Llama1.Manager")


def ttft(address, prompt, tokens):
    """Milliseconds from Generate to the first Token of this client's request, and its stats."""
    conn = open_dbus_connection(bus=address)
    # only the daemon's own signals (docs/dbus-api.md)
    (daemon,) = Proxy(message_bus, conn).GetNameOwner("org.llamad.Llama1")
    rule = MatchRule(type="signal", sender=daemon, interface="org.llamad.Llama1.Manager", path="/org/llamad/Llama1")
    Proxy(message_bus, conn).AddMatch(rule)
    options = {"max_tokens": ("u", tokens), "temperature": ("d", 0.0)}
    with conn.filter(rule, bufsize=100000) as signals:
        t0 = time.perf_counter()
        reply = conn.send_and_get_reply(new_method_call(MANAGER, "Generate", "ssa{sv}", ("m", prompt, options)))
        if reply.header.fields.get(HeaderFields.error_name):
            raise RuntimeError(reply.body[0])
        request, first = reply.body[0], None
        while True:
            msg = conn.recv_until_filtered(signals)
            if msg.body[0] != request:
                continue
            member = msg.header.fields[HeaderFields.member]
            if member == "Token" and first is None:
                first = (time.perf_counter() - t0) * 1e3
            elif member == "Finished":
                conn.close()
                return first, {k: v[1] for k, v in msg.body[1].items()}


def streaming(d, n, priority):
    """n llamactl clients streaming long answers; returned once each has printed text."""
    # a regular expression that allows no end before 6000 characters keeps them streaming
    cmd = d.ctl + ["run", "m", "Write a long story about a lighthouse keeper.", "--max-tokens", "100000",
                   "--temperature", "0.7", "--seed", "1", "--regex", "[a-zA-Z ,.]{6000}"]
    if priority:
        cmd += ["--priority", priority]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=d.env) for _ in range(n)]
    for p in procs:
        p.stdout.read(40)
    time.sleep(0.5)
    return procs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llamad", required=True)
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--background", type=int, default=2)
    ap.add_argument("--prompt-words", type=int, default=120)
    ap.add_argument("--tokens", type=int, default=8)
    a = ap.parse_args()
    a.gen = a.tokens
    words = ("the keeper of the light walked up the stairs every evening and looked out over the sea " * 40).split()
    prompt = "Summarise: " + " ".join(words[: a.prompt_words])
    d = Daemon(a, {"m": a.model})
    cases = ["idle", f"{a.background} background", f"{a.background} interactive (no classes)"]
    got = {c: [] for c in cases}
    try:
        # no prompt cache: every measurement computes its whole prompt
        d.start(a.threads, extra="max_parallel = 4\n", memory="prompt_cache = 0\n")
        subprocess.run(d.ctl + ["load", "m", "--backend", a.backend], check=True, stdout=subprocess.DEVNULL)
        ttft(d.address, prompt, 2)  # load the model, warm up
        for r in range(a.rounds):
            for case in cases:
                procs = []
                if case != "idle":
                    procs = streaming(d, a.background, "background" if "background" in case else None)
                ms, stats = ttft(d.address, prompt, a.tokens)
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a background client ended before the measurement did: nothing competed")
                for p in procs:
                    p.terminate()
                    p.wait()
                time.sleep(0.3)
                got[case].append(ms)
                print(f"round {r + 1}, {case}: time to first token {ms:.1f} ms (in the daemon, from the "
                      f"request's start: {stats.get('time_to_first_token_ms', 0):.1f} ms; prompt "
                      f"{stats.get('prompt_tokens')} tokens, {stats.get('backend')})", flush=True)
        idle = statistics.median(got["idle"])
        for case in cases:
            m = statistics.median(got[case])
            per_round = " ".join(f"{x / i:.2f}" for x, i in zip(got[case], got["idle"]))
            print(f"{case}: median {m:.1f} ms, {m / idle:.2f}x idle (per round: {per_round})")
    finally:
        d.close()


if __name__ == "__main__":
    main()

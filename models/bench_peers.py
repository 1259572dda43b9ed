#!/usr/bin/env python3
"""llamad next to llama.cpp and onnxruntime-genai on the same weights, in interleaved rounds.

    python models/bench_peers.py --llama-bench BIN --llamad BIN --genai-python PY \\
        --model NAME GGUF FUSED_DIR STANDARD_DIR [--model ...] [--rounds 3] [--threads 1 2] \\
        [--prompt 128] [--gen 128] [--model-tokens NAME PROMPT GEN] [--grounded TEXT_FILE]
        [--free TEXT] [--text-models NAME...] [--dbus] [--baseline OTHER_LLAMAD]

For each round, thread count and model, every tool runs once, in the same order each round
(so each peer sees the same machine state as the others): llama.cpp's `llama-bench` on the
GGUF, onnxruntime-genai's Python loop (models/bench_genai.py) and llamad's core on the fused
graph (ONNX Runtime), llamad's core on the standard graph (tract), and with --dbus the same
text request ("Once upon a time", greedy, until EOS or GEN tokens) through llamad's core and
through the daemon on a private bus. llamad runs with huge pages for its weights
(`--huge-pages`, `memory.huge_pages`), which it does not do by default. The prompt is PROMPT token ids, then GEN greedy tokens
(`--ignore-eos`). With --grounded, llamad also runs a grounded request (rewrite the given
passage) with prompt lookup off, automatic (the default) and asked for; with --free, a chat
request with nothing to copy, lookup off and automatic (its cost where it does not pay). With --baseline, another llamad build (an earlier
commit's) runs its core beside this one's in the same rounds: a before/after figure.

Printed: the median over rounds of prompt tokens/s, decode tokens/s, time to first token and
peak RSS of each tool, and each round's ratio of llamad to the best peer (llama.cpp or genai)
measured in that round: this machine is shared and noisy, so ratios within a round are the
figures to trust.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STORY = "Once upon a time"


def run(cmd, env=None, timeout=1800):
    """Runs cmd; returns (stdout, stderr)."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout, p.stderr


def peak_rss(cmd, env=None):
    """Runs cmd under a fresh wrapper process, whose children's maximum RSS is then this run's
    peak alone; returns (stdout, stderr, peak RSS in MiB)."""
    wrapper = ("import resource, subprocess, sys, json; p = subprocess.run(sys.argv[1:], capture_output=True, "
               "text=True); print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, "
               "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    r = json.loads(p.stdout)
    if r["rc"] != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {r['rc']}: {r['err'].strip()[-400:]}")
    return r["out"], r["err"], r["rss"]


def llama_cpp(a, gguf, threads):
    out, _, rss = peak_rss([a.llama_bench, "-m", gguf, "-p", str(a.prompt), "-n", str(a.gen), "-t", str(threads),
                            "-r", "1", "-o", "json"])
    tests = json.loads(out)
    pp = next(t for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0)["avg_ts"]
    tg = next(t for t in tests if t["n_gen"] > 0 and t["n_prompt"] == 0)["avg_ts"]
    return {"prompt": pp, "decode": tg, "ttft_ms": 1e3 * a.prompt / pp, "rss": rss}


def genai(a, model_dir, threads):
    out, _, rss = peak_rss([a.genai_python, os.path.join(HERE, "bench_genai.py"), model_dir, "--prompt-tokens",
                            str(a.prompt), "--new-tokens", str(a.gen), "--threads", str(threads)])
    r = json.loads(out.strip().splitlines()[-1])
    return {"prompt": r["prompt_tokens_per_s"], "decode": r["decode_tokens_per_s"], "ttft_ms": r["ttft_ms"], "rss": rss}


def prompt_ids(a):
    return "1 " + " ".join(str(100 + i) for i in range(a.prompt - 1))


def llamad_core(a, model_dir, backend, threads, extra=(), prompt=None, binary=None):
    cmd = [binary or a.llamad, "generate", "--model", model_dir, "--backend", backend, "--threads", str(threads),
           "--max-tokens", str(a.gen), "--json", "--huge-pages", *extra]
    cmd += prompt if prompt else ["--tokens", prompt_ids(a), "--ignore-eos"]
    _, err = run(cmd)
    r = json.loads(err.strip().splitlines()[-1])
    out = {"prompt": r["prompt_tokens_per_s"], "decode": r["decode_tokens_per_s"], "ttft_ms": r["ttft_ms"],
           "rss": r["peak_rss_kib"] / 1024, "generated": r["generated_tokens"], "load_s": r.get("load_s")}
    if r.get("draft_tokens"):
        out["acceptance"] = r["draft_accepted"] / r["draft_tokens"]
    return out


class Daemon:
    """llamad serve on a private bus (dbus-daemon --session), one model directory per model."""

    def __init__(self, a, models):
        self.tmp = tempfile.mkdtemp(prefix="bench-peers-")
        self.models = os.path.join(self.tmp, "models")
        os.mkdir(self.models)
        for name, d in models.items():
            os.symlink(os.path.abspath(d), os.path.join(self.models, name))
        self.bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address"],
                                    stdout=subprocess.PIPE, text=True)
        self.address = self.bus.stdout.readline().strip()
        self.env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=self.address)
        self.ctl = [os.path.join(os.path.dirname(a.llamad), "llamactl"), "--address", self.address]
        self.proc = None
        self.a = a

    def start(self, threads, extra="", memory=""):
        self.stop()
        cfg = os.path.join(self.tmp, "llamad.toml")
        with open(cfg, "w") as f:
            f.write(f'models_dir = "{self.models}"\nbackend = "onnxruntime"\nthreads = {threads}\n{extra}'
                    '[memory]\nhuge_pages = true\n' + memory)
        self.proc = subprocess.Popen([self.a.llamad, "serve", "--address", self.address, "--config", cfg],
                                     stderr=subprocess.DEVNULL, env=self.env)
        for _ in range(200):
            if subprocess.run(self.ctl + ["status"], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("llamad did not come up")

    def request(self, name, text):
        out, _ = run(self.ctl + ["--json", "run", name, text, "--max-tokens", str(self.a.gen),
                                 "--temperature", "0", "--repetition-penalty", "1"], env=self.env)
        s = json.loads(out.strip().splitlines()[-1])["stats"]
        pid = self.proc.pid
        rss = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:")).split()[1]) / 1024
        return {"prompt": s["prompt_tokens_per_s"], "decode": s["decode_tokens_per_s"],
                "ttft_ms": s["time_to_first_token_ms"], "rss": rss, "generated": s["generated_tokens"]}

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def close(self):
        self.stop()
        self.bus.terminate()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--llamad", required=True)
    ap.add_argument("--baseline", help="another llamad build (an earlier commit's): its core runs beside "
                    "--llamad's in the same rounds, as \"llamad ... (baseline)\"")
    ap.add_argument("--genai-python", required=True)
    ap.add_argument("--model", nargs=4, action="append", required=True,
                    metavar=("NAME", "GGUF", "FUSED_DIR", "STANDARD_DIR"),
                    help="STANDARD_DIR '-': no tract run for this model")
    ap.add_argument("--model-tokens", nargs=3, action="append", default=[], metavar=("NAME", "PROMPT", "GEN"),
                    help="this model's prompt and generated tokens instead of --prompt and --gen")
    ap.add_argument("--text-models", nargs="+", help="the models --grounded and --free run on (default: all)")
    ap.add_argument("--free", help="a free-text chat request (nothing to copy): llamad runs it with prompt "
                    "lookup off and automatic (the default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--grounded", help="a passage: llamad rewrites it with and without prompt lookup")
    ap.add_argument("--lookup", type=int, default=8, help="draft tokens for --grounded (default 8)")
    ap.add_argument("--dbus", action="store_true", help="also through the daemon on a private bus")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--from-log", help="print the table from the progress lines of an earlier run (stderr) and exit")
    a = ap.parse_args()
    if a.from_log:
        rows = rows_from_log(open(a.from_log).read())
        a.rounds = max(r for r, *_ in rows)
        return report(rows, a)

    grounded = None
    if a.grounded:
        passage = open(a.grounded).read().strip()
        grounded = ("Rewrite the following passage word for word, fixing nothing:\n\n" + passage)
    daemon = Daemon(a, {m[0]: m[2] for m in a.model}) if a.dbus else None
    base_prompt, base_gen = a.prompt, a.gen
    rows = []  # (round, threads, model, tool, result or error)
    try:
        for r in range(1, a.rounds + 1):
            for t in a.threads:
                if daemon:
                    daemon.start(t)
                for name, gguf, fused, standard in a.model:
                    a.prompt, a.gen = next(((int(p), int(g)) for n, p, g in a.model_tokens if n == name),
                                           (base_prompt, base_gen))
                    tools = [
                        ("llama.cpp", lambda: llama_cpp(a, gguf, t)),
                        ("onnxruntime-genai", lambda: genai(a, fused, t)),
                        ("llamad onnxruntime", lambda: llamad_core(a, fused, "onnxruntime", t)),
                    ]
                    if standard != "-":
                        tools.append(("llamad tract", lambda: llamad_core(a, standard, "tract", t)))
                    if a.baseline:  # alternating with the build under test, tool by tool
                        tools[2:2] = [("llamad onnxruntime (baseline)",
                                       lambda: llamad_core(a, fused, "onnxruntime", t, binary=a.baseline))]
                        tools.append(("llamad tract (baseline)",
                                      lambda: llamad_core(a, standard, "tract", t, binary=a.baseline)))
                    if daemon:  # the same text request through the daemon and through the core
                        text = ["--prompt", STORY, "--temperature", "0"]
                        tools.append(("llamad ORT text", lambda: llamad_core(a, fused, "onnxruntime", t, prompt=text)))
                        tools.append(("llamad ORT text via D-Bus", lambda: daemon.request(name, STORY)))
                    texts = not a.text_models or name in a.text_models
                    if grounded and texts:  # prompt lookup off, automatic (the default) and asked for
                        chat = ["--chat", grounded, "--temperature", "0"]
                        tools.append(("llamad ORT grounded lookup off", lambda: llamad_core(
                            a, fused, "onnxruntime", t, ("--prompt-lookup", "0"), prompt=chat)))
                        tools.append(("llamad ORT grounded lookup auto", lambda: llamad_core(
                            a, fused, "onnxruntime", t, prompt=chat)))
                        tools.append((f"llamad ORT grounded lookup {a.lookup}", lambda: llamad_core(
                            a, fused, "onnxruntime", t, ("--prompt-lookup", str(a.lookup)), prompt=chat)))
                    if a.free and texts:  # nothing to copy: automatic lookup must cost nothing
                        free = ["--chat", a.free, "--temperature", "0"]
                        tools.append(("llamad ORT free lookup off", lambda: llamad_core(
                            a, fused, "onnxruntime", t, ("--prompt-lookup", "0"), prompt=free)))
                        tools.append(("llamad ORT free lookup auto", lambda: llamad_core(
                            a, fused, "onnxruntime", t, prompt=free)))
                    for tool, fn in tools:
                        try:
                            res = fn()
                        except Exception as e:  # a tool that fails is reported, not fatal
                            res = {"error": str(e)}
                        rows.append((r, t, name, tool, res))
                        print(f"round {r} threads {t} {name:10} {tool:34} "
                              + (res["error"][:120] if "error" in res else
                                 f"prompt {res['prompt']:7.1f} decode {res['decode']:6.1f} tok/s  ttft "
                                 f"{res['ttft_ms']:7.1f} ms  rss {res['rss'] or 0:6.0f} MiB"
                                 + (f"  load {res['load_s']:.1f} s" if res.get("load_s") else "")
                                 + (f"  acceptance {res['acceptance']:.2f}" if "acceptance" in res else "")),
                              file=sys.stderr, flush=True)
    finally:
        if daemon:
            daemon.close()
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    report(rows, a)


def rows_from_log(text):
    """The measurements in the progress lines this script prints (an interrupted run's too)."""
    pat = re.compile(r"^round (\d+) threads (\d+) (\S+)\s+(.+?)\s+prompt\s+([\d.]+) decode\s+([\d.]+) tok/s\s+"
                     r"ttft\s+([\d.]+) ms\s+rss\s+([\d.]+) MiB(?:\s+load ([\d.]+) s)?(?:\s+acceptance ([\d.]+))?")
    rows = []
    for line in text.splitlines():
        if mt := pat.match(line):
            r, t, m, tool, p, dec, ttft, rss, load, acc = mt.groups()
            res = {"prompt": float(p), "decode": float(dec), "ttft_ms": float(ttft), "rss": float(rss)}
            if load:
                res["load_s"] = float(load)
            if acc:
                res["acceptance"] = float(acc)
            rows.append((int(r), int(t), m, tool, res))
        elif mt := re.match(r"^round (\d+) threads (\d+) (\S+)\s+(llama\.cpp|onnxruntime-genai|llamad [^:]+?)\s{2,}(.+)$", line):
            r, t, m, tool, err = mt.groups()
            rows.append((int(r), int(t), m, tool, {"error": err}))
    return rows


def report(rows, a):
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    sizes = ", ".join(f"{n}: {p} and {g}" for n, p, g in getattr(a, "model_tokens", []))
    print(f"\nprompt {a.prompt} token ids, {a.gen} greedy tokens{' (' + sizes + ')' if sizes else ''}; medians of "
          f"{a.rounds} interleaved rounds")
    print("| model | threads | tool | prompt tok/s | decode tok/s | TTFT ms | peak RSS MiB | load s | "
          "decode vs llama.cpp (per round) | decode vs best peer | prompt vs llama.cpp | prompt vs best peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = []
    for _, t, m, tool, _ in rows:
        if (m, t, tool) not in keys:
            keys.append((m, t, tool))
    for m, t, tool in sorted(keys, key=lambda k: (k[0], k[1])):
        got = [(r, res) for r, tt, mm, tl, res in rows if mm == m and tt == t and tl == tool and "error" not in res]
        if not got:
            err = next(res["error"] for _, tt, mm, tl, res in rows if mm == m and tt == t and tl == tool)
            print(f"| {m} | {t} | {tool} | error: {err[:80]} | | | | | | | | |")
            continue
        ratios_d, ratios_p, cpp_d, cpp_p = [], [], [], []
        for r, res in got:
            peers = {tl: x for rr, tt, mm, tl, x in rows if rr == r and tt == t and mm == m
                     and tl in ("llama.cpp", "onnxruntime-genai") and "error" not in x}
            if peers and tool.startswith("llamad"):
                ratios_d.append(res["decode"] / max(p["decode"] for p in peers.values()))
                ratios_p.append(res["prompt"] / max(p["prompt"] for p in peers.values()))
                if "llama.cpp" in peers:
                    cpp_d.append(res["decode"] / peers["llama.cpp"]["decode"])
                    cpp_p.append(res["prompt"] / peers["llama.cpp"]["prompt"])
        rss = [res["rss"] for _, res in got if res.get("rss")]
        load = [res["load_s"] for _, res in got if res.get("load_s")]
        extra = ""
        acc = [res["acceptance"] for _, res in got if "acceptance" in res]
        if acc:
            extra = f" (acceptance {med(acc):.2f})"
        fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs) if xs else "-"  # noqa: E731
        print(f"| {m} | {t} | {tool}{extra} | {med([x['prompt'] for _, x in got]):.1f} | "
              f"{med([x['decode'] for _, x in got]):.1f} | {med([x['ttft_ms'] for _, x in got]):.1f} | "
              f"{med(rss):.0f} | {f'{med(load):.1f}' if load else '-'} | {fmt(cpp_d)} | {fmt(ratios_d)} | "
              f"{fmt(cpp_p)} | {fmt(ratios_p)} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Time to first token of a long chat's later turns: a session against the stateless Chat.

    python3 models/bench_session.py --llamad target/debug/llamad MODEL_DIR [--turns 8]
        [--tokens 80] [--rounds 3] [--threads 2]

A daemon on a private bus serves MODEL_DIR (ONNX Runtime). Each round runs the same
conversation three times: `llamactl --json chat` (a session: each turn continues the KV cache
it holds) and `llamactl --json chat --stateless` (Manager.Chat with the whole history every
turn) on a daemon without the prompt cache (`memory.prompt_cache = 0`), then the stateless chat
again on a daemon with it (the default). A turn is a paragraph of about 120 tokens asking for an edit,
answered greedily with at most TOKENS tokens; by the 8th turn the history is about 1,500
tokens. Prints, per turn, the prompt tokens, the tokens reused from the cache and the time to
first token of both, and the ratio of the last turn's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import Daemon  # noqa: E402

PARAGRAPHS = [
    "The harbour town woke slowly that winter. Fishing boats lay tied along the stone quay, their nets "
    "hung to dry on wooden frames, and the smell of tar and salt drifted up the narrow streets where the "
    "baker had already opened his shutters. Children ran to the school on the hill while their parents "
    "argued about the price of coal and the weather that would decide whether the boats went out at all.",
    "At the end of the quay stood the old lighthouse, painted white and red, its lamp tended for forty "
    "years by a woman named Maren who kept a logbook of every ship that passed. She wrote down the names, "
    "the flags, the hour and the state of the sea, and on quiet nights she added a line or two about the "
    "stars, the gulls, or the music that drifted across the water from the tavern below.",
    "One morning a stranger arrived on the early ferry with a heavy case and a letter addressed to the "
    "keeper of the light. He said he was a surveyor sent by the ministry to measure the coast for a new "
    "chart, and he asked for a room, a lamp and permission to climb the tower whenever he pleased. Maren "
    "read the letter twice, folded it into her apron and told him that the stairs had two hundred steps.",
]
ASKS = [
    "Here is the opening of my story. Tell me in two sentences what mood it sets:",
    "Now this paragraph. What does it tell us about Maren?",
    "And this one. What could the stranger really want?",
    "Suggest a title for the story so far, and say why in one sentence.",
    "Rewrite the first sentence of the second paragraph to make it more vivid.",
    "What question should the next chapter answer first?",
    "Name one detail from the first paragraph that could return at the end.",
    "Summarise the whole story so far in three sentences.",
]


def conversation(turns):
    lines = []
    for i in range(turns):
        p = PARAGRAPHS[i % len(PARAGRAPHS)]
        lines.append(f"{ASKS[i % len(ASKS)]} {p}")
    return "\n".join(lines) + "\n"


def chat(d, stateless, turns, tokens):
    cmd = d.ctl + ["--json", "chat", "m", "--max-tokens", str(tokens), "--temperature", "0"]
    if stateless:
        cmd.append("--stateless")
    out = subprocess.run(cmd, input=conversation(turns), capture_output=True, text=True, env=d.env, check=True)
    return [json.loads(line)["stats"] for line in out.stdout.strip().splitlines()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llamad", required=True)
    ap.add_argument("model")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.gen = a.tokens
    d = Daemon(a, {"m": a.model})
    ratios = []
    try:
        for r in range(a.rounds):
            d.start(a.threads, memory="prompt_cache = 0\n")
            session = chat(d, False, a.turns, a.tokens)
            stateless = chat(d, True, a.turns, a.tokens)
            d.start(a.threads)
            cached = chat(d, True, a.turns, a.tokens)
            for i, (s, t, c) in enumerate(zip(session, stateless, cached)):
                print(f"round {r + 1} turn {i + 1}: prompt {s['prompt_tokens']} tokens; session: "
                      f"{s['cached_prompt_tokens']} cached, ttft {s['time_to_first_token_ms']:.0f} ms | "
                      f"stateless: prompt {t['prompt_tokens']}, ttft {t['time_to_first_token_ms']:.0f} ms | "
                      f"stateless, prompt cache: {c['cached_prompt_tokens']} cached, ttft "
                      f"{c['time_to_first_token_ms']:.0f} ms", flush=True)
            last = stateless[-1]["time_to_first_token_ms"] / session[-1]["time_to_first_token_ms"]
            ratios.append(last)
            print(f"round {r + 1}: turn {a.turns} time to first token, stateless / session: {last:.1f}x",
                  flush=True)
        print(f"turn {a.turns}: stateless / session ttft per round " + " ".join(f"{x:.1f}x" for x in ratios)
              + f" (median {statistics.median(ratios):.1f}x)")
    finally:
        d.close()


if __name__ == "__main__":
    main()

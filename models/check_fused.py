#!/usr/bin/env python3
"""Accuracy of a converted graph against a float reference, by logits over a text.

    python models/check_fused.py REFERENCE_DIR CANDIDATE_DIR [--text FILE] [--tokens N]

Both directories are run by ONNX Runtime's Python API (CPU) on the same token ids, teacher
forced: the whole text in one forward pass, logits for every position. Printed: top-1
agreement (the share of positions where both pick the same next token), how often the
reference's top-1 is in the candidate's top 5, max and mean |Δlogit|, and the same after
centring each row (logits are shift-invariant). Directories are read as llamad reads them:
genai_config.json (shared KV buffer, `logits_to_keep`) or config.json (Optimum: explicit
past, position_ids).

Needs numpy, onnxruntime and tokenizers (the benchmark venv of models/bench-peers.sh).
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

TEXT = (
    "The river runs through the old town, past the market and the cathedral, and out into the "
    "fields where the farmers grow wheat and barley. In spring the water rises and the children "
    "watch the boats go by. def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        "
    "a, b = b, a + b\n    return a\n\nQuestion: What is the capital of France? Answer: Paris is the "
    "capital of France, and it is known for the Eiffel Tower, the Louvre and its cafés. "
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10. The weather today is sunny with a light breeze from the west."
)


def logits_of(model_dir, ids, threads=2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])
    n = len(ids)
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, n), np.int64)}
    genai = os.path.join(model_dir, "genai_config.json")
    if os.path.exists(genai):
        dec = json.load(open(genai))["model"]["decoder"]
        shape = (1, dec["num_key_value_heads"], n, dec["head_size"])
        layers = dec["num_hidden_layers"]
        feeds["logits_to_keep"] = np.array(n, np.int64)
    else:
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        heads = cfg["num_attention_heads"]
        shape = (1, cfg.get("num_key_value_heads", heads), 0, cfg.get("head_dim") or cfg["hidden_size"] // heads)
        layers = cfg["num_hidden_layers"]
        feeds["position_ids"] = np.arange(n, dtype=np.int64)[None]
    names = {i.name for i in s.get_inputs()} | {"logits_to_keep"}
    for i in range(layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros(shape, np.float32)
    feeds = {k: v for k, v in feeds.items() if k in names}
    return s.run(["logits"], feeds)[0][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference")
    ap.add_argument("candidate", nargs="+")
    ap.add_argument("--text", help="a text file (default: a built-in mix of prose, code and numbers)")
    ap.add_argument("--tokens", type=int, default=0, help="use the first N tokens only")
    a = ap.parse_args()
    text = open(a.text).read() if a.text else TEXT
    tok = Tokenizer.from_file(os.path.join(a.reference, "tokenizer.json"))
    ids = tok.encode(text).ids
    if a.tokens:
        ids = ids[: a.tokens]
    ref = logits_of(a.reference, ids)
    print(f"reference {a.reference}: {len(ids)} tokens")
    worst = 0.0
    for cand in a.candidate:
        got = logits_of(cand, ids)
        if got.shape != ref.shape:
            sys.exit(f"{cand}: logits shape {got.shape}, reference {ref.shape}")
        top1 = np.mean(got.argmax(-1) == ref.argmax(-1))
        top5 = np.mean([r in np.argsort(g)[-5:] for r, g in zip(ref.argmax(-1), got)])
        diff = np.abs(got - ref)
        centred = np.abs((got - got.mean(-1, keepdims=True)) - (ref - ref.mean(-1, keepdims=True)))
        worst = max(worst, diff.max())
        print(f"{cand}: top-1 agreement {top1:.3f}, reference top-1 in top 5 {top5:.3f}, "
              f"|Δlogit| max {diff.max():.3f} mean {diff.mean():.4f}, centred max {centred.max():.3f}")


if __name__ == "__main__":
    main()

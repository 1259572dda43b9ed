#!/usr/bin/env python3
"""Next-token quality of ONNX model directories over a text, through their KV cache.

    python models/quality/onnx_eval.py REFERENCE_DIR CANDIDATE_DIR... [--text FILE]
        [--ctx 512] [--chunk 16] [--threads 2] [--tokens N]

The text (models/quality/text.txt by default) is tokenized with the reference's tokenizer.json
and cut into windows of `--ctx` tokens, evaluated as llama.cpp's `llama-perplexity` does: each
window from an empty cache (a BOS first when the tokenizer adds one), fed `--chunk` tokens at a
time through the model's past/present inputs (so most attention reads the stored cache, in
whatever type the graph keeps it), and only the second half of each window scored.

Per candidate: perplexity, top-1 agreement with the reference (the share of scored positions
where both pick the same next token), the mean KL divergence from the reference's
distribution, and the largest and mean absolute logit difference. A JSON line per model
follows the table (`--json`).

Needs numpy, onnxruntime, tokenizers (the bench-peers venv: models/requirements-peers.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ELEM = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def tokenize(model_dir: str, text: str) -> tuple[list[int], int | None]:
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    bos = None
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        cfg = json.load(open(cfg_path))
        if cfg.get("add_bos_token") and cfg.get("bos_token"):
            b = cfg["bos_token"]
            bos = tok.token_to_id(b if isinstance(b, str) else b["content"])
    return ids, bos


class Model:
    def __init__(self, model_dir: str, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.s = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.s.get_inputs()}
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        self.kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        self.kv_type = ELEM[self.inputs[self.past[0]].type]

    def window(self, ids: list[int], chunk: int) -> np.ndarray:
        """Logits [len(ids), vocab] (float32) of one window, fed `chunk` tokens at a time."""
        past = {n: np.zeros((1, self.kv, 0, self.head_dim), self.kv_type) for n in self.past}
        out_names = [o.name for o in self.s.get_outputs()]
        rows = []
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            feed = {"input_ids": np.array([part], np.int64),
                    "attention_mask": np.ones((1, start + len(part)), np.int64), **past}
            if "position_ids" in self.inputs:
                feed["position_ids"] = np.arange(start, start + len(part), dtype=np.int64)[None]
            if "logits_to_keep" in self.inputs:
                feed["logits_to_keep"] = np.array(0, np.int64)
            if "use_cache_branch" in self.inputs:
                feed["use_cache_branch"] = np.array([start > 0])
            outs = dict(zip(out_names, self.s.run(None, feed)))
            rows.append(outs["logits"][0].astype(np.float32))
            past = {n: outs[n.replace("past_key_values.", "present.")] for n in self.past}
        return np.concatenate(rows)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference")
    ap.add_argument("candidates", nargs="*")
    ap.add_argument("--text", default=os.path.join(HERE, "text.txt"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--ref-chunk", type=int, default=0,
                    help="feed the reference this many tokens at a time (default: --chunk); comparing a "
                         "model with itself at another chunk size shows the noise floor of its kernels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=0, help="use only the first N tokens (0: all)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    text = open(a.text, encoding="utf-8").read()
    ids, bos = tokenize(a.reference, text)
    if a.tokens:
        ids = ids[:a.tokens]
    body = a.ctx - (bos is not None)
    windows = [([bos] if bos is not None else []) + ids[i:i + body] for i in range(0, len(ids) - body + 1, body)]
    if not windows:
        sys.exit(f"the text has {len(ids)} tokens, fewer than one window of {a.ctx}")
    print(f"{len(ids)} tokens, {len(windows)} windows of {a.ctx}, the last {a.ctx // 2 - 1} positions of "
          f"each scored ({len(windows) * (a.ctx // 2 - 1)} in all), fed {a.chunk} at a time", flush=True)
    dirs = [a.reference] + a.candidates
    ref_lp = []
    results = []
    for k, d in enumerate(dirs):
        m = Model(d, a.threads)
        nll, agree, kl, maxdiff, sumdiff, n = 0.0, 0, 0.0, 0.0, 0.0, 0
        for w, win in enumerate(windows):
            logits = m.window(win, (a.ref_chunk or a.chunk) if k == 0 else a.chunk)
            first = a.ctx // 2
            scored = logits[first:-1]
            targets = np.array(win[first + 1:])
            lp = log_softmax(scored)
            nll -= lp[np.arange(len(targets)), targets].sum()
            n += len(targets)
            if k == 0:
                ref_lp.append((lp, scored))
            else:
                rlp, rlog = ref_lp[w]
                agree += int((lp.argmax(-1) == rlp.argmax(-1)).sum())
                kl += float((np.exp(rlp) * (rlp - lp)).sum())
                diff = np.abs(scored - rlog)
                maxdiff = max(maxdiff, float(diff.max()))
                sumdiff += float(diff.mean()) * len(targets)
        r = {"model": d, "kv_cache": np.dtype(m.kv_type).name, "ppl": float(np.exp(nll / n)), "scored": n}
        if k:
            r.update({"top1": agree / n, "kl": kl / n, "max_logit_diff": maxdiff, "mean_logit_diff": sumdiff / n})
        results.append(r)
        extra = "" if k == 0 else (f"  top-1 {100 * r['top1']:6.2f} %  KL {r['kl']:.5f}  logit diff max "
                                   f"{r['max_logit_diff']:.4f} mean {r['mean_logit_diff']:.5f}")
        print(f"{os.path.basename(d.rstrip('/')):40s} kv {r['kv_cache']:8s} PPL {r['ppl']:8.4f}{extra}", flush=True)
    if a.json:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Validate gguf_to_onnx.py output against transformers' own GGUF loader.

    python models/check_gguf_onnx.py --gguf MODEL.gguf --fp32 DIR --int4 DIR \
        [--ref-tokenizer /path/to/tokenizer.json]

Needs torch, transformers (5.x), accelerate, gguf, onnxruntime, tokenizers, numpy: this is a
development check, not something llamad or the converter needs.

(a) fp32 ONNX vs transformers (LlamaForCausalLM loaded from the same GGUF, eager attention,
    float32): logits over a ChatML prompt; 20 greedy tokens decoded through the ONNX model one
    token at a time with the KV cache vs transformers' greedy generate; a left-padded batch
    of two prompts vs the same prompts run alone.
(b) int4 vs fp32: logits max |delta| and top-1 agreement at every step of the fp32 greedy
    continuation (teacher-forced), and the int4 model's own greedy continuation.
(c) raw completion of "The capital of France is", greedy (llama.cpp gives " Paris.").
(d) a ChatML question, greedy answer.
(e) tokenizer.json written by the converter vs a reference tokenizer.json (encode + decode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
RAW = "The capital of France is"
STEPS = 20

TOKENIZER_SAMPLES = [
    "Hello, world!",
    "The year 2024 had 366 days; pi ~ 3.14159265358979.",
    "tab\tseparated\tvalues\t\t and  two   three    four     spaces",
    "  leading spaces and trailing   ",
    "line one\nline two\r\nline three\n\n\nend",
    "Café déjà vu: naïve façade, Ærøskøbing, Straße, ½ ¾ °C",
    "中文测试：你好，世界！日本語のテキスト、한국어 텍스트",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️ 🇫🇷",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    "fn main() { let v: Vec<u8> = vec![0xFF; 16]; println!(\"{v:?}\"); }",
    "https://example.com/path/to/page?query=1&lang=en#section-2",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "literal <|im_start|> in the middle, and <|endoftext|> too",
    "I'm sure they've said we'll go, isn't it? DON'T SHOUT.",
    "Numbers: 1,000,000.00 vs 1000000 vs 1e6 vs 0x1F vs 007",
    "Unicode numbers: x² + y³, ①②③, ٣٤٥, Ⅻ, 五百",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "",
    " ",
    "a" * 50 + "   " + "z" * 10,
]


def log(*a):
    print(*a, flush=True)


class OnnxLM:
    def __init__(self, d: str):
        self.dir = d
        self.cfg = json.load(open(os.path.join(d, "config.json")))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(os.path.join(d, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.L = self.cfg["num_hidden_layers"]
        self.kv = self.cfg["num_key_value_heads"]
        self.hd = self.cfg["head_dim"]

    def empty_past(self, batch=1):
        return {f"past_key_values.{i}.{k}": np.zeros((batch, self.kv, 0, self.hd), np.float32)
                for i in range(self.L) for k in ("key", "value")}

    def run(self, ids, past, attention_mask=None, position_ids=None):
        ids = np.asarray(ids, np.int64)
        b, s = ids.shape
        p = past["past_key_values.0.key"].shape[2]
        if attention_mask is None:
            attention_mask = np.ones((b, p + s), np.int64)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(p, p + s, dtype=np.int64), (b, s)).copy()
        feed = dict(past, input_ids=ids, attention_mask=attention_mask, position_ids=position_ids)
        r = dict(zip(self.out_names, self.sess.run(None, feed)))
        new_past = {f"past_key_values.{i}.{k}": r[f"present.{i}.{k}"]
                    for i in range(self.L) for k in ("key", "value")}
        return r["logits"], new_past

    def greedy(self, ids, steps, eos=None, forced=None):
        """Greedy decode (or teacher-force `forced`), one token at a time after the prompt.

        Returns (generated ids, list of last-position logits at each step)."""
        logits, past = self.run([ids], self.empty_past())
        out, all_logits = [], [logits[0, -1]]
        for t in range(steps):
            nxt = int(np.argmax(all_logits[-1])) if forced is None else forced[t]
            out.append(nxt)
            if forced is None and eos is not None and nxt == eos:
                break
            if t == steps - 1:
                break
            logits, past = self.run([[nxt]], past)
            all_logits.append(logits[0, -1])
        return out, all_logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--int4", required=True, nargs="+", metavar="[LABEL=]DIR",
                    help="one or more int4 model directories (e.g. one per --int4-scheme); "
                         "pass/fail applies to the first, the others are reported for comparison")
    ap.add_argument("--ref-tokenizer", default="/work/shared/tokenizers/smollm2/tokenizer.json")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    failures = []

    def check(ok, what, info=False):
        """info: reported only (schemes given for comparison after the first int4 directory)."""
        log(f"  [{('ok' if ok else 'no') if info else ('PASS' if ok else 'FAIL')}] {what}")
        if not ok and not info:
            failures.append(what)

    log(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxruntime {ort.__version__}")
    tok = Tokenizer.from_file(os.path.join(args.fp32, "tokenizer.json"))
    fp32 = OnnxLM(args.fp32)
    int4s = []
    for spec in args.int4:
        label, _, d = spec.rpartition("=")
        int4s.append((f"int4 {label or os.path.basename(d.rstrip('/'))}", OnnxLM(d)))
    eos = fp32.cfg["eos_token_id"]

    t0 = time.time()
    hf = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf),
        dtype=torch.float32, attn_implementation="eager")
    hf.eval()
    log(f"transformers reference loaded from the GGUF in {time.time() - t0:.1f}s")

    # ---------------------------------------------------------------- (a)
    log("\n(a) fp32 ONNX vs transformers (same GGUF, float32, eager attention)")
    chat_ids = tok.encode(CHAT).ids
    log(f"  ChatML prompt: {len(chat_ids)} tokens")
    with torch.no_grad():
        ref = hf(torch.tensor([chat_ids])).logits[0].numpy()
    ox, _ = fp32.run([chat_ids], fp32.empty_past())
    d_last = float(np.abs(ox[0, -1] - ref[-1]).max())
    d_all = float(np.abs(ox[0] - ref).max())
    log(f"  last-position logits max |delta| = {d_last:.3e} (logit range {ref[-1].min():.2f}..{ref[-1].max():.2f})")
    log(f"  all {len(chat_ids)} positions  max |delta| = {d_all:.3e}")
    check(d_last < 1e-3, "fp32 last-position logits within 1e-3 of transformers")

    onnx_ids, fp32_steps = fp32.greedy(chat_ids, STEPS)
    with torch.no_grad():
        gen = hf.generate(torch.tensor([chat_ids]), attention_mask=torch.ones(1, len(chat_ids), dtype=torch.long),
                          max_new_tokens=STEPS, do_sample=False, eos_token_id=None, pad_token_id=eos)
    hf_ids = gen[0, len(chat_ids):].tolist()
    log(f"  ONNX greedy (KV cache, 1 token/step): {onnx_ids}")
    log(f"  transformers generate():             {hf_ids}")
    log(f"  text: {tok.decode(onnx_ids, skip_special_tokens=False)!r}")
    check(onnx_ids == hf_ids, f"{STEPS} greedy ids identical")
    # logits along the decode path vs transformers on the full sequence
    with torch.no_grad():
        ref_seq = hf(torch.tensor([chat_ids + onnx_ids[:-1]])).logits[0].numpy()
    d_steps = max(float(np.abs(fp32_steps[t] - ref_seq[len(chat_ids) - 1 + t]).max())
                  for t in range(len(fp32_steps)))
    log(f"  logits at every decode step (cached) vs transformers (full sequence): max |delta| = {d_steps:.3e}")
    check(d_steps < 1e-3, "cached decode logits within 1e-3")

    # left-padded batch vs unpadded single runs
    p1 = tok.encode(CHAT).ids
    p2 = tok.encode(RAW).ids
    n = max(len(p1), len(p2))
    batch = np.full((2, n), eos, np.int64)
    mask = np.zeros((2, n), np.int64)
    for r, p in enumerate((p1, p2)):
        batch[r, n - len(p):] = p
        mask[r, n - len(p):] = 1
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    bl, bpast = fp32.run(batch, fp32.empty_past(2), attention_mask=mask, position_ids=pos)
    s1, past1 = fp32.run([p1], fp32.empty_past())
    s2, past2 = fp32.run([p2], fp32.empty_past())
    d_b = max(float(np.abs(bl[0, -1] - s1[0, -1]).max()), float(np.abs(bl[1, -1] - s2[0, -1]).max()))
    # one more cached step for both rows
    nxt = np.array([[int(np.argmax(bl[0, -1]))], [int(np.argmax(bl[1, -1]))]])
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    bl2, _ = fp32.run(nxt, bpast, attention_mask=mask2, position_ids=pos[:, -1:] + 1)
    s1b, _ = fp32.run(nxt[:1], past1)
    s2b, _ = fp32.run(nxt[1:], past2)
    d_b2 = max(float(np.abs(bl2[0, -1] - s1b[0, -1]).max()), float(np.abs(bl2[1, -1] - s2b[0, -1]).max()))
    log(f"  left-padded batch of 2 ({len(p1)} and {len(p2)} tokens) vs single runs: prompt max |delta| = "
        f"{d_b:.3e}, next cached step max |delta| = {d_b2:.3e}")
    check(max(d_b, d_b2) < 1e-3, "padding mask: batched == single")

    # ---------------------------------------------------------------- (b)
    log("\n(b) int4 vs fp32 (teacher-forced along the fp32 greedy continuation of the ChatML prompt)")
    for name, int4 in int4s:
        scheme = int4.cfg.get("gguf_source", {}).get("int4", {}).get("scheme", "?")
        log(f"  {name}: {scheme}")
        _, int4_steps = int4.greedy(chat_ids, len(onnx_ids), forced=onnx_ids)
        deltas = [float(np.abs(a - b).max()) for a, b in zip(int4_steps, fp32_steps)]
        agree = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(int4_steps, fp32_steps))
        log("    per-step logits max |delta|: " + " ".join(f"{x:.2f}" for x in deltas))
        log(f"    max |delta| over {len(deltas)} steps = {max(deltas):.3f}, mean of per-step max = "
            f"{np.mean(deltas):.3f}; top-1 agreement {agree}/{len(deltas)}")
        kls = []
        for a, b in zip(int4_steps, fp32_steps):
            pa = np.exp(b - b.max()); pa /= pa.sum()
            la = a - a.max(); lq = la - np.log(np.exp(la).sum())
            lb = b - b.max(); lp = lb - np.log(np.exp(lb).sum())
            kls.append(float(np.sum(pa * (lp - lq))))
        log(f"    KL(fp32 || int4) per step: mean {np.mean(kls):.4f}, max {max(kls):.4f} nats")
        int4_ids, _ = int4.greedy(chat_ids, STEPS)
        same = 0
        for a, b in zip(int4_ids, onnx_ids):
            if a != b:
                break
            same += 1
        log(f"    own greedy: {tok.decode(int4_ids, skip_special_tokens=False)!r}")
        log(f"    = fp32 greedy for the first {same}/{len(onnx_ids)} tokens")

    # ---------------------------------------------------------------- (c)
    log(f"\n(c) raw completion of {RAW!r}, greedy {STEPS} tokens")
    raw_ids = tok.encode(RAW).ids
    for name, m in [("fp32", fp32)] + int4s:
        ids, steps = m.greedy(raw_ids, STEPS, eos=eos)
        p = np.exp(steps[0] - steps[0].max()); p /= p.sum()
        top = np.argsort(-steps[0])[:3]
        log(f"  {name}: {tok.decode(ids, skip_special_tokens=False)!r}")
        log("        first-token top 3: " + ", ".join(f"{tok.decode([int(i)])!r} {p[i]:.3f}" for i in top))
        check(tok.decode(ids[:1]) == " Paris", f"{name} first token is ' Paris'",
              info=name not in ("fp32", int4s[0][0]))
    with torch.no_grad():
        g = hf.generate(torch.tensor([raw_ids]), max_new_tokens=STEPS, do_sample=False,
                        attention_mask=torch.ones(1, len(raw_ids), dtype=torch.long), pad_token_id=eos)
    log(f"  transformers: {tok.decode(g[0, len(raw_ids):].tolist(), skip_special_tokens=False)!r}")

    # ---------------------------------------------------------------- (d)
    log(f"\n(d) ChatML prompt {CHAT!r}, greedy up to 64 tokens")
    for name, m in [("fp32", fp32)] + int4s:
        t0 = time.time()
        ids, _ = m.greedy(chat_ids, 64, eos=eos)
        dt = time.time() - t0
        log(f"  {name} ({len(ids)} tokens, {dt:.2f}s on onnxruntime): "
            f"{tok.decode(ids, skip_special_tokens=True)!r}")
        check("Paris" in tok.decode(ids), f"{name} answer mentions Paris",
              info=name not in ("fp32", int4s[0][0]))

    # ---------------------------------------------------------------- (e)
    log(f"\n(e) tokenizer vs {args.ref_tokenizer}")
    if os.path.exists(args.ref_tokenizer):
        ref_tok = Tokenizer.from_file(args.ref_tokenizer)
        # The same reference with llama.cpp's / SmolLM2's first pre-tokenizer step (every
        # Unicode number character isolated) in front of its ByteLevel step.
        from tokenizers import pre_tokenizers
        ref_digits = Tokenizer.from_file(args.ref_tokenizer)
        ref_digits.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), ref_tok.pre_tokenizer])
        log(f"  reference pre_tokenizer: {json.loads(ref_tok.to_str())['pre_tokenizer']}")
        log(f"  ours:                    {json.loads(tok.to_str())['pre_tokenizer']}")
        n_ok = n_digit = 0
        for s in TOKENIZER_SAMPLES:
            a = tok.encode(s).ids
            b = ref_tok.encode(s).ids
            da = tok.decode(a, skip_special_tokens=False)
            db = ref_tok.decode(b, skip_special_tokens=False)
            if a == b and da == db:
                n_ok += 1
                tag = "equal"
            elif a == ref_digits.encode(s).ids and da == db:
                n_digit += 1
                tag = "N-split"
            else:
                tag = "DIFF"
            log(f"  [{tag:7s}] {len(a):3d} tokens, decode {'= input' if da == s else '!= input'}: {s[:48]!r}")
            if tag != "equal":
                log(f"      ours {a}\n      ref  {b}")
        log(f"  {n_ok}/{len(TOKENIZER_SAMPLES)} strings encode and decode identically; {n_digit} differ only "
            "because the reference does not isolate Unicode number characters (\\p{N}: ½, ², ①, ٣, ...)")
        skip_a = tok.decode(tok.encode(CHAT).ids, skip_special_tokens=True)
        skip_b = ref_tok.decode(ref_tok.encode(CHAT).ids, skip_special_tokens=True)
        log(f"  decode(skip_special_tokens) of the ChatML prompt: {skip_a!r} (reference {'equal' if skip_a == skip_b else 'DIFFERS: ' + repr(skip_b)})")
        check(n_ok + n_digit == len(TOKENIZER_SAMPLES) and skip_a == skip_b,
              f"tokenizer: {n_ok} equal + {n_digit} N-split-only of {len(TOKENIZER_SAMPLES)} strings")
        va, vb = tok.get_vocab(with_added_tokens=True), ref_tok.get_vocab(with_added_tokens=True)
        check(va == vb, f"vocabularies equal ({len(va)} entries)")
        sa = sorted(k for k, v in tok.get_added_tokens_decoder().items() if v.special)
        sb = sorted(k for k, v in ref_tok.get_added_tokens_decoder().items() if v.special)
        check(sa == sb, f"special added tokens equal (ids {sa[:3]}..{sa[-1]})")
    else:
        log("  reference tokenizer not found: skipped")

    # ---------------------------------------------------------------- (f)
    log("\n(f) graphs")
    import collections
    import onnx
    for name, d in [("fp32", args.fp32)] + [(n, m.dir) for n, m in int4s]:
        mp = os.path.join(d, "model.onnx")
        model = onnx.load(mp, load_external_data=False)
        ops = collections.Counter((n.domain + "." if n.domain else "") + n.op_type for n in model.graph.node)
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        files = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
        log(f"  {name}: {d}")
        log(f"    ir_version {model.ir_version}, opsets {opsets}, {len(model.graph.node)} nodes, "
            f"{len(model.graph.initializer)} initializers")
        log("    ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
        log("    files: " + ", ".join(f"{f} {v / 1e6:.1f} MB" if v > 1e6 else f"{f} {v} B"
                                     for f, v in files.items()))
        if name == "fp32":
            check(all(n.domain in ("", "ai.onnx") for n in model.graph.node), "fp32 graph uses standard ONNX ops only")

            def show(vi):
                dims = [x.dim_param or x.dim_value for x in vi.type.tensor_type.shape.dim]
                return f"{vi.name} {onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()} {dims}"
            ins, outs = model.graph.input, model.graph.output
            log(f"    inputs ({len(ins)}): " + "; ".join(show(v) for v in ins[:5]) + f"; ... {ins[-1].name}")
            log(f"    outputs ({len(outs)}): " + "; ".join(show(v) for v in outs[:3]) + f"; ... {outs[-1].name}")

    log(f"\n{len(failures)} check(s) failed" + (": " + "; ".join(failures) if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

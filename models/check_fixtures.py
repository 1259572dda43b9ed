#!/usr/bin/env python3
"""Check every fixture under models/fixtures/ with onnxruntime (and
onnxruntime-genai for the builder fixtures), print the figures, and with
--write-reference write models/fixtures/REFERENCE.json for the Rust tests.

Run with the `genai` venv (onnxruntime, onnxruntime-genai, tokenizers; torch +
transformers only for the optional comparison with the HF checkpoints in
models/work/):
    python models/check_fixtures.py [--write-reference]
make_fixtures.sh saves the output as models/fixtures/CHECKS.txt.

Nothing here is hard-coded except the inputs: the stories260K reference ids
come from models/stories260k_reference.json (copied from the shared data), the
tiny-llama2 prompt is tokenized with each fixture's tokenizer.json.
Exit status is non-zero if a check fails.
"""
import argparse
import collections
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures"
WORK = HERE / "work"

TINY_PROMPT = "Hello world, this is a test"
TINY_NEW_TOKENS = 10
STORIES_INT8_STEPS = 20
TINY_FIXTURES = [
    "tiny-llama2-genai-fp32",
    "tiny-llama2-genai-int4",
    "tiny-llama2-genai-int4-unfused",
    "tiny-llama2-optimum-fp32",
    "tiny-llama2-gguf-int4",
]
# made by make_tiny_gguf.py from models/work/tiny-llama2-hf, converted by gguf_to_onnx.py
GGUF_FIXTURE = "tiny-llama2-gguf-int4"
GGUF_FILE = WORK / "tiny-llama2.Q4_0.gguf"
# the original Llama 2 tokenizer.json (make_fixtures.sh copies it from the shared data)
LLAMA2_TOKENIZER = FIX / "tiny-llama2-genai-fp32" / "tokenizer.json"
GGUF_EXTRA_PROBES = [
    "The year 2024 had 366 days; pi ~ 3.14159.", "Café déjà vu: naïve façade, Straße, ½ °C",
    "def f(x):\n    return {'a': [1, 2], \"b\": x ** 2}  # comment\n", "  leading spaces and trailing   ",
    "Emoji: 😀🎉👍🏽 👨\u200d👩\u200d👧 🇫🇷", "Ελληνικά, русский, עברית, العربية, हिन्दी", "", " "]
# Pass/fail thresholds (the figures themselves are printed).
FP32_LAYOUT_TOL = 1e-3  # fp32 export vs fp32 export / vs PyTorch, max |dlogit|
TOKENIZER_PROBES = ["Hello world", " leading space", "  two spaces", "a\nb\n\nc\t d", "héllo 日本語 😀",
                    "[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST]", "<s>[INST] hi [/INST] ok </s>"]

GGUF_TOKENIZER_PROBES = TOKENIZER_PROBES + [TINY_PROMPT] + GGUF_EXTRA_PROBES

failures = []


def check(ok, what):
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


# --------------------------------------------------------------------------- graphs
def describe_graph(name):
    d = FIX / name
    m = onnx.load(d / "model.onnx", load_external_data=False)
    ext = sorted({e.value for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL
                  for e in i.external_data if e.key == "location"})
    print(f"\n## {name}")
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import)
    print(f"  opset {opsets}; ir_version {m.ir_version}; external data: {', '.join(ext) or 'none'}")

    def fmt(v):
        t = v.type.tensor_type
        dims = [x.dim_param or str(x.dim_value) for x in t.shape.dim]
        return f"{v.name}: {onnx.TensorProto.DataType.Name(t.elem_type).lower()}[{', '.join(dims)}]"

    def listing(vs):
        # past/present tensors: show layer 0, the others only differ in the index
        shown = [fmt(v) for v in vs if not v.name.startswith(("past_key_values.", "present."))
                 or v.name.split(".")[1] == "0"]
        more = len(vs) - len(shown)
        return "; ".join(shown) + (f" (+{more} more for layers 1..{n_layers - 1})" if more else "")

    n_layers = sum(1 for v in m.graph.input if v.name.startswith("past_key_values.") and v.name.endswith(".key"))
    print("  inputs:  " + listing(list(m.graph.input)))
    print("  outputs: " + listing(list(m.graph.output)))
    ops = collections.Counter(f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in m.graph.node)
    print("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    return {
        "inputs": [v.name for v in m.graph.input],
        "outputs": [v.name for v in m.graph.output],
        "position_ids_input": any(v.name == "position_ids" for v in m.graph.input),
        "op_types": sorted(ops),
    }


# --------------------------------------------------------------------------- ORT runner
class Decoder:
    """Greedy/forced decoding through one ONNX decoder with a KV cache, feeding
    whatever inputs the graph declares (input_ids, attention_mask, optional
    position_ids, past_key_values.*)."""

    def __init__(self, name):
        self.dir = FIX / name
        genai = self.dir / "genai_config.json"
        if genai.exists():
            cfg = json.loads(genai.read_text())["model"]
            dec = cfg["decoder"]
            self.n_layers, self.kv_heads, self.head_dim = (
                dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"])
            names = (dec["inputs"]["past_key_names"], dec["inputs"]["past_value_names"],
                     dec["outputs"]["present_key_names"], dec["outputs"]["present_value_names"])
            self.logits_name = dec["outputs"]["logits"]
            model_file = dec["filename"]
        else:
            cfg = json.loads((self.dir / "config.json").read_text())
            self.n_layers, self.kv_heads = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
            self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
            names = ("past_key_values.%d.key", "past_key_values.%d.value", "present.%d.key", "present.%d.value")
            self.logits_name = "logits"
            model_file = "model.onnx"
        self.past_names = [(names[0] % i, names[1] % i) for i in range(self.n_layers)]
        self.present_names = [(names[2] % i, names[3] % i) for i in range(self.n_layers)]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(self.dir / model_file), so, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.sess.get_inputs()}
        self.output_names = [self.logits_name] + [n for kv in self.present_names for n in kv]
        self.reset()

    def reset(self):
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        self.cache = [(empty, empty) for _ in range(self.n_layers)]
        self.pos = 0

    def step(self, ids):
        """Feed ids (list of int), return logits [len(ids), vocab] and extend the cache."""
        n = len(ids)
        feeds = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, self.pos + n), np.int64)}
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(self.pos, self.pos + n, dtype=np.int64)[None]
        for (kn, vn), (k, v) in zip(self.past_names, self.cache):
            feeds[kn], feeds[vn] = k, v
        unknown = self.input_names - set(feeds)
        assert not unknown, f"graph wants inputs the checker does not know: {unknown}"
        out = self.sess.run(self.output_names, feeds)
        self.cache = [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self.n_layers)]
        self.pos += n
        return out[0][0]

    def run(self, prompt, n_new, forced=None):
        """Prefill the prompt, then decode n_new tokens one at a time.
        Returns (chosen ids, per-position logits [len(prompt) + n_new - 1, vocab]).
        With forced, the fed-back tokens are forced[i] instead of the argmax;
        the chosen ids are always this model's own argmax."""
        self.reset()
        rows = [self.step(prompt)]
        chosen = []
        for i in range(n_new):
            chosen.append(int(rows[-1][-1].argmax()))
            if i == n_new - 1:
                break
            nxt = forced[i] if forced is not None else chosen[-1]
            rows.append(self.step([nxt]))
        return chosen, np.concatenate(rows, 0)


def torch_logits(hf_dir, ids):
    """Full-sequence logits from the HF checkpoint (None if unavailable)."""
    if not (hf_dir / "config.json").exists():
        return None
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError:
        return None
    import transformers
    transformers.utils.logging.disable_progress_bar()
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def maxabs(a, b):
    return float(np.abs(a - b).max())


# --------------------------------------------------------------------------- stories260K
def check_stories(ref_out):
    print("\n# stories260K (trained, 260K parameters, vocab 512, no tokenizer)")
    ref = json.loads((HERE / "stories260k_reference.json").read_text())
    prompt, expected = ref["prompt"], ref["greedy_ids"]
    n = len(expected)

    fp32 = Decoder("stories260k-optimum-fp32")
    got, logits32 = fp32.run(prompt, n)
    n_match = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), n)
    print(f"stories260k-optimum-fp32: onnxruntime greedy from {prompt}, {n} steps with the KV cache "
          f"(inputs {sorted(fp32.input_names - {k for kv in fp32.past_names for k in kv})} + past_key_values.*)")
    check(got == expected, f"fp32 greedy reproduces the llama2.c reference: first {n_match}/{n} ids equal")
    top2 = np.sort(logits32, axis=1)[:, -2:]
    print(f"  smallest top-1/top-2 logit gap along the {n} steps: {float((top2[:, 1] - top2[:, 0]).min()):.4f}")

    tl = torch_logits(WORK / "stories260k-hf", prompt + expected[:-1])
    if tl is not None:
        d = maxabs(tl, logits32)
        check(d < FP32_LAYOUT_TOL, f"fp32 ONNX vs PyTorch (transformers), all {n} positions: max |dlogit| = {d:.2e}")

    int8 = Decoder("stories260k-optimum-int8")
    steps = STORIES_INT8_STEPS
    free8, _ = int8.run(prompt, steps)
    forced8_argmax, logits8 = int8.run(prompt, steps, forced=expected)
    d8 = np.abs(logits8 - logits32[:steps]).max(axis=1)
    agree = sum(a == b for a, b in zip(forced8_argmax, expected[:steps]))
    scale = float(np.abs(logits32[:steps]).max())
    print(f"stories260k-optimum-int8 vs fp32, first {steps} greedy steps along the reference path "
          f"(max |logit| there {scale:.2f}):")
    print(f"  max |dlogit| = {d8.max():.4f} (per step: {' '.join(f'{x:.3f}' for x in d8)})")
    print(f"  int8 argmax equals the reference at {agree}/{steps} of those steps")
    top2 = np.argsort(-logits32[0])[:2]
    print(f"  (fp32 first step: top-2 logits {top2[0]}: {logits32[0, top2[0]]:.3f}, {top2[1]}: "
          f"{logits32[0, top2[1]]:.3f}; int8 there: {top2[0]}: {logits8[0, top2[0]]:.3f}, "
          f"{top2[1]}: {logits8[0, top2[1]]:.3f})")
    n8 = next((i for i, (a, b) in enumerate(zip(free8, expected)) if a != b), steps)
    print(f"  int8 free-running greedy ({steps} steps): {' '.join(map(str, free8))}")
    print(f"  equal to the fp32 reference for the first {n8}/{steps} ids")

    ref_out["stories260k"] = {
        "prompt": prompt,
        "reference_greedy_ids": expected,
        "reference_source": "llama2.c run.c greedy (models/stories260k_reference.json)",
        "fixtures": {
            "stories260k-optimum-fp32": {
                "greedy_ids": got,
                "first_step_logits_first16": [float(x) for x in logits32[0, :16]],
            },
            "stories260k-optimum-int8": {
                "greedy_ids": free8,
                "first_step_logits_first16": [float(x) for x in logits8[0, :16]],
                "max_abs_dlogit_vs_fp32_first_%d_steps" % steps: float(d8.max()),
            },
        },
    }


# --------------------------------------------------------------------------- tiny-llama2
def check_tiny(ref_out):
    from tokenizers import Tokenizer

    print(f"\n# tiny-llama2 (random weights, Llama 2 tokenizer), prompt {TINY_PROMPT!r}")
    prompts = {}
    for name in TINY_FIXTURES:
        tok = Tokenizer.from_file(str(FIX / name / "tokenizer.json"))
        prompts[name] = tok.encode(TINY_PROMPT, add_special_tokens=True).ids
    prompt = prompts[TINY_FIXTURES[0]]
    print(f"prompt ids (tokenizers, BOS added by tokenizer.json): {prompt}")
    check(prompt[0] == 1 and all(p == prompt for p in prompts.values()),
          f"all {len(TINY_FIXTURES)} fixtures' tokenizer.json give the same ids, starting with BOS 1")

    decs = {name: Decoder(name) for name in TINY_FIXTURES}
    for name, d in decs.items():
        print(f"  {name}: position_ids input: {'yes' if 'position_ids' in d.input_names else 'no'}")

    base = "tiny-llama2-genai-fp32"
    free = {}
    for name, d in decs.items():
        free[name] = d.run(prompt, TINY_NEW_TOKENS)
    path = free[base][0]
    print(f"greedy ({TINY_NEW_TOKENS} new tokens, prefill then one token at a time):")
    for name in TINY_FIXTURES:
        ids, logits = free[name]
        steps = logits[len(prompt) - 1:]
        top2 = np.sort(steps, axis=1)[:, -2:]
        gap = float((top2[:, 1] - top2[:, 0]).min())
        print(f"  {name:32s} {ids}  (smallest top-1/top-2 logit gap along it: {gap:.4f})")

    # Teacher-forced along the genai-fp32 greedy path: identical contexts everywhere.
    forced = {name: d.run(prompt, TINY_NEW_TOKENS, forced=path)[1] for name, d in decs.items()}
    n_pos = forced[base].shape[0]
    print(f"logit comparisons over {n_pos} positions ({len(prompt)} prompt + {TINY_NEW_TOKENS - 1} decode steps), "
          f"max |logit| {np.abs(forced[base]).max():.2f}:")
    for name in TINY_FIXTURES[1:]:
        dd = maxabs(forced[name], forced[base])
        if "int4" in name:
            agree = sum(int(a) == int(b) for a, b in zip(forced[name].argmax(1), forced[base].argmax(1)))
            print(f"  {name} vs {base}: max |dlogit| = {dd:.4f}; argmax agrees at {agree}/{n_pos} positions")
        else:
            check(dd < FP32_LAYOUT_TOL, f"{name} vs {base}: max |dlogit| = {dd:.2e}")
            check(free[name][0] == path, f"{name} greedy ids equal {base}'s")

    tl = torch_logits(WORK / "tiny-llama2-hf", prompt + path[:-1])
    if tl is not None:
        for name in ("tiny-llama2-genai-fp32", "tiny-llama2-optimum-fp32"):
            dd = maxabs(forced[name], tl)
            check(dd < FP32_LAYOUT_TOL, f"{name} vs PyTorch (transformers): max |dlogit| = {dd:.2e}")
        print(f"  tiny-llama2-genai-int4 vs PyTorch: max |dlogit| = {maxabs(forced['tiny-llama2-genai-int4'], tl):.4f}")

    # Prompt fed one token at a time must match the one-shot prefill.
    for name in ("tiny-llama2-genai-fp32", "tiny-llama2-optimum-fp32", GGUF_FIXTURE):
        d = decs[name]
        d.reset()
        rows = [d.step([t]) for t in prompt]
        dd = maxabs(np.concatenate(rows, 0), forced[name][: len(prompt)])
        check(dd < FP32_LAYOUT_TOL, f"{name}: prompt token-by-token vs one-shot prefill, max |dlogit| = {dd:.2e}")

    ref_out["tiny_llama2"] = {
        "prompt_text": TINY_PROMPT,
        "prompt_ids": prompt,
        "new_tokens": TINY_NEW_TOKENS,
        "fixtures": {},
    }
    for name in TINY_FIXTURES:
        last = free[name][1][len(prompt) - 1]
        ref_out["tiny_llama2"]["fixtures"][name] = {
            "greedy_ids": free[name][0],
            "last_prompt_logits_first16": [float(x) for x in last[:16]],
            "last_prompt_argmax": int(last.argmax()),
            "last_prompt_max": float(last.max()),
            "max_abs_dlogit_vs_genai_fp32": maxabs(forced[name], forced[base]),
        }
    return prompt, free


def check_gguf(prompt, free):
    """tiny-llama2-gguf-int4 (gguf_to_onnx.py --precision int4 on make_tiny_gguf.py's Q4_0 file)
    vs transformers loading the same GGUF, and its tokenizer.json vs the original Llama 2 one."""
    from tokenizers import Tokenizer

    print(f"\n# {GGUF_FIXTURE}: models/gguf_to_onnx.py --precision int4 on {GGUF_FILE.relative_to(HERE.parent)}")
    src = json.loads((FIX / GGUF_FIXTURE / "config.json").read_text()).get("gguf_source", {})
    print(f"  GGUF tensor types {src.get('tensor_types')}; int4 {src.get('int4', {}).get('scheme', '?')}")
    print(f"  embedding: {src.get('int4', {}).get('embedding')}; lm_head: {src.get('int4', {}).get('lm_head')}")

    # (b) tokenizer.json built by the converter from the GGUF metadata vs the original file
    ours = Tokenizer.from_file(str(FIX / GGUF_FIXTURE / "tokenizer.json"))
    ref = Tokenizer.from_file(str(LLAMA2_TOKENIZER))
    diff = []
    for text in GGUF_TOKENIZER_PROBES:
        a, b = ours.encode(text).ids, ref.encode(text).ids
        if a != b or ours.decode(a, skip_special_tokens=False) != ref.decode(b, skip_special_tokens=False):
            diff.append(text)
            print(f"  {text!r}: ours {a} vs Llama 2 {b}")
    check(not diff, f"tokenizer.json from the GGUF vs the original Llama 2 tokenizer.json: "
                    f"{len(GGUF_TOKENIZER_PROBES) - len(diff)}/{len(GGUF_TOKENIZER_PROBES)} probe strings "
                    "encode (with BOS) and decode identically")
    check(ours.get_vocab(with_added_tokens=True) == ref.get_vocab(with_added_tokens=True),
          f"same vocabulary ({ours.get_vocab_size()} entries)")
    same_file = (FIX / GGUF_FIXTURE / "tokenizer.json").read_bytes() == LLAMA2_TOKENIZER.read_bytes()
    print(f"  tokenizer.json byte-identical to the original: {'yes' if same_file else 'no'}")

    # (a) onnxruntime vs transformers' GGUF loader (dequantizes the same file to float32)
    ids, ort_logits = free[GGUF_FIXTURE]
    if not GGUF_FILE.exists():
        print(f"  {GGUF_FILE} missing (make_fixtures.sh writes it): transformers comparison skipped")
        return
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, LlamaForCausalLM
    except ImportError:
        print("  torch/transformers unavailable: transformers comparison skipped")
        return
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF loader's tqdm progress bars
        hf = AutoModelForCausalLM.from_pretrained(str(GGUF_FILE.parent), gguf_file=GGUF_FILE.name,
                                                  dtype=torch.float32).eval()
    seq = torch.tensor([prompt + ids[:-1]])
    with torch.no_grad():
        tl = hf(seq).logits[0].numpy()
    n_pos = tl.shape[0]
    dd = maxabs(ort_logits, tl)
    # The graph may store the embedding rows in a narrower type than float32 (the converter's
    # int4 output keeps them as float16, cast after the Gather). Compare also with a reference
    # whose input embedding is rounded the same way (the tied head stays float32 as in the graph).
    m = onnx.load(FIX / GGUF_FIXTURE / "model.onnx", load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    gather = next(n for n in m.graph.node if n.op_type == "Gather" and "input_ids" in n.input)
    emb_type = onnx.TensorProto.DataType.Name(inits[gather.input[0]].data_type).lower()
    print(f"  embedding Gather reads a {emb_type} initializer {list(inits[gather.input[0]].dims)}")
    if emb_type == "float":
        check(dd < FP32_LAYOUT_TOL, f"{GGUF_FIXTURE} vs transformers loading the GGUF (float32 dequantized), "
                                    f"{n_pos} positions along its greedy path: max |dlogit| = {dd:.2e}")
        ref = tl
    else:
        print(f"  vs transformers loading the GGUF (float32 dequantized), {n_pos} positions along its greedy "
              f"path: max |dlogit| = {dd:.2e} (the {emb_type} embedding rows)")
        np_type = onnx.helper.tensor_dtype_to_np_dtype(inits[gather.input[0]].data_type)
        w = hf.model.embed_tokens.weight.detach().clone()
        rounded = torch.from_numpy(w.numpy().astype(np_type).astype(np.float32))
        hf.lm_head.weight = torch.nn.Parameter(w)  # untie: the head keeps the float32 values
        hf.model.embed_tokens.weight = torch.nn.Parameter(rounded)
        with torch.no_grad():
            ref = hf(seq).logits[0].numpy()
        d2 = maxabs(ort_logits, ref)
        check(d2 < FP32_LAYOUT_TOL, f"{GGUF_FIXTURE} vs transformers loading the GGUF with its input embedding "
                                    f"rounded to {emb_type} as in the graph: max |dlogit| = {d2:.2e}")
    hf_ids = [int(x) for x in ref[len(prompt) - 1:].argmax(1)]
    check(hf_ids == ids, f"transformers' argmax along that path = onnxruntime's greedy ids {ids}")

    # Orientation of the Q/K row permutation: transformers undoes llama.cpp's permutation when it
    # loads the GGUF; its weights must then equal the float checkpoint up to Q4_0 rounding.
    ckpt = WORK / "tiny-llama2-hf"
    if (ckpt / "config.json").exists():
        orig = dict(LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).named_parameters())
        worst = {}
        for name, p in hf.named_parameters():
            if name not in orig:  # an untied lm_head copy, if transformers made one
                continue
            o = orig[name].detach()
            rel = float((p.detach() - o).norm() / o.norm())
            kind = "q/k" if name.endswith(("q_proj.weight", "k_proj.weight")) else "other"
            worst[kind] = max(worst.get(kind, 0.0), rel)
        print(f"  transformers' GGUF weights vs the float checkpoint, max relative error per tensor: "
              f"q/k {worst['q/k']:.3f}, others {worst['other']:.3f} (Q4_0 / Q8_0 rounding)")
        check(worst["q/k"] < 0.2, "Q/K permutation round-trips (q/k weights equal the checkpoint's up to "
                                  "4-bit rounding)")


def check_genai_api(prompt, free):
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    print(f"\n# onnxruntime-genai {og.__version__} Python API (og.Model, og.Tokenizer, og.Generator)")
    for name in TINY_FIXTURES:
        if not (FIX / name / "genai_config.json").exists():
            continue
        model = og.Model(str(FIX / name))
        tok = og.Tokenizer(model)
        hf_tok = Tokenizer.from_file(str(FIX / name / "tokenizer.json"))
        ids = [int(x) for x in tok.encode(TINY_PROMPT)]
        plain = hf_tok.encode(TINY_PROMPT, add_special_tokens=False).ids
        check(ids == plain, f"{name}: og.Tokenizer.encode gives {ids} = tokenizers' ids without BOS "
                            f"(og adds no BOS; the BOS is prepended for generation below)")
        diff = [s for s in TOKENIZER_PROBES
                if [int(x) for x in tok.encode(s)] != hf_tok.encode(s, add_special_tokens=False).ids]
        print(f"    og.Tokenizer vs tokenizers (no special tokens) on {len(TOKENIZER_PROBES)} probe strings: "
              + (f"differ on {diff!r}" if diff else "all equal"))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + TINY_NEW_TOKENS)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array(prompt, np.int32))
        og_last = np.array(gen.get_logits(), np.float32).reshape(-1)
        while not gen.is_done():
            gen.generate_next_token()
        seq = [int(x) for x in gen.get_sequence(0)]
        new = seq[len(prompt):]
        ort_last = free[name][1][len(prompt) - 1]
        print(f"  {name}: og generated {new} -> {tok.decode(np.array(new, np.int32))!r}")
        check(new == free[name][0], f"{name}: og greedy ids equal the plain onnxruntime loop's")
        print(f"    og logits at the last prompt position vs plain onnxruntime: max |dlogit| = "
              f"{maxabs(og_last, ort_last):.2e}")


def compare_builder_tokenizer():
    """The builder writes its own tokenizer.json (re-saved by transformers 5);
    the fixtures ship the original one instead. Show how they differ."""
    from tokenizers import Tokenizer

    written = WORK / "tiny-llama2-genai-fp32" / "tokenizer.json"
    if not written.exists():
        return
    print("\n# tokenizer.json written by the builder (models/work/) vs the shipped Llama 2 tokenizer.json")
    a = Tokenizer.from_file(str(written))
    b = Tokenizer.from_file(str(FIX / "tiny-llama2-genai-fp32" / "tokenizer.json"))
    n_diff = 0
    for text in TOKENIZER_PROBES + [TINY_PROMPT]:
        ea, eb = a.encode(text).ids, b.encode(text).ids
        if ea != eb:
            n_diff += 1
            print(f"  {text!r}: builder {ea} vs original {eb}")
    print(f"  {n_diff}/{len(TOKENIZER_PROBES) + 1} probe strings encode differently")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-reference", action="store_true", help="write fixtures/REFERENCE.json")
    args = ap.parse_args()

    import onnxruntime_genai
    import tokenizers
    print(f"onnxruntime {ort.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}, "
          f"onnx {onnx.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}")
    try:
        import torch
        import transformers
        print(f"(PyTorch reference: torch {torch.__version__}, transformers {transformers.__version__})")
    except ImportError:
        print("(torch/transformers unavailable: PyTorch comparisons skipped)")

    print("\n# Graphs")
    graphs = {}
    for name in ["stories260k-optimum-fp32", "stories260k-optimum-int8"] + TINY_FIXTURES:
        graphs[name] = describe_graph(name)

    ref_out = {"_about": "Written by models/check_fixtures.py from onnxruntime runs of models/fixtures/*; "
                         "see models/README.md. Logits are float32 values from onnxruntime on CPU."}
    check_stories(ref_out)
    prompt, free = check_tiny(ref_out)
    check_gguf(prompt, free)
    check_genai_api(prompt, free)
    compare_builder_tokenizer()
    for name, g in graphs.items():
        fx = ref_out["stories260k" if name.startswith("stories") else "tiny_llama2"]["fixtures"][name]
        fx["graph"] = g

    print()
    if failures:
        print(f"FAILED: {len(failures)} check(s):")
        for f in failures:
            print("  -", f)
    else:
        print("ALL CHECKS PASSED")
    if args.write_reference:
        (FIX / "REFERENCE.json").write_text(json.dumps(ref_out, indent=1) + "\n")
        print("wrote", (FIX / "REFERENCE.json").relative_to(HERE.parent))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

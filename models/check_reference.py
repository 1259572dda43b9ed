#!/usr/bin/env python3
"""Check that the converted stories260K HF checkpoint reproduces the llama2.c
reference: greedy decoding from [1] (BOS) for 99 new tokens with transformers.

Run with the `optimum` venv:
    python models/check_reference.py models/work/stories260k-hf
Exits non-zero on any mismatch. Output is kept in models/fixtures/CHECK_REFERENCE.txt.
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import LlamaForCausalLM

HERE = Path(__file__).resolve().parent


def main():
    hf_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "work" / "stories260k-hf"
    ref = json.loads((HERE / "stories260k_reference.json").read_text())
    prompt, expected = ref["prompt"], ref["greedy_ids"]

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"checkpoint: {hf_dir.name}, params {sum(p.numel() for p in model.parameters())}, "
          f"tied lm_head: {model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()}")

    # 1. generate() with the KV cache.
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=len(expected),
            min_new_tokens=len(expected),
            do_sample=False,
            num_beams=1,
            eos_token_id=None,
            pad_token_id=0,
        )
    got = out[0, len(prompt):].tolist()
    n_match = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(expected))
    print(f"generate (KV cache): {n_match}/{len(expected)} ids match the reference")

    # 2. One full forward over prompt + reference (no cache): argmax at every
    #    position must be the next reference id; also report the top-1 margin.
    seq = torch.tensor([prompt + expected])
    with torch.no_grad():
        logits = model(seq).logits[0, len(prompt) - 1 : -1]
    argmax = logits.argmax(-1).tolist()
    tf_match = sum(a == b for a, b in zip(argmax, expected))
    probs = logits.softmax(-1)
    top1 = probs.max(-1).values
    top2 = probs.topk(2, -1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    print(f"teacher-forced full forward: {tf_match}/{len(expected)} argmax match; "
          f"top-1 prob median {top1.median().item():.3f} min {top1.min().item():.3f}; "
          f"min top1-top2 prob gap {margin:.4f}")

    ok = n_match == len(expected) and tf_match == len(expected)
    print("greedy ids:", " ".join(map(str, got)))
    print("RESULT:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

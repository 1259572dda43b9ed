#!/usr/bin/env python3
"""onnxruntime-genai's own Python generate loop on a model directory: the baseline
llamad's benchmark compares with (same model file, same prompt ids, greedy).

    python models/bench_genai.py MODEL_DIR --prompt-tokens 64 --new-tokens 64 --threads 1

Prints one JSON line: prompt tokens/s (append_tokens plus the first
generate_next_token), decode tokens/s (the later generate_next_token calls),
time to first token. For an Optimum-layout directory (no genai_config.json) a
genai_config.json is written into a temporary copy made of symlinks.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import onnxruntime_genai as og


def genai_view(model_dir):
    if os.path.exists(os.path.join(model_dir, "genai_config.json")):
        return model_dir
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    heads = cfg["num_attention_heads"]
    tmp = tempfile.mkdtemp(prefix="genai-view-")
    for f in os.listdir(model_dir):
        os.symlink(os.path.abspath(os.path.join(model_dir, f)), os.path.join(tmp, f))
    eos = cfg.get("eos_token_id", 2)
    genai = {
        "model": {
            "bos_token_id": cfg.get("bos_token_id", 1), "eos_token_id": eos, "pad_token_id": eos if isinstance(eos, int) else eos[0],
            "context_length": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"], "type": "llama",
            "decoder": {
                "filename": "model.onnx", "session_options": {"provider_options": []},
                "head_size": cfg.get("head_dim", cfg["hidden_size"] // heads), "hidden_size": cfg["hidden_size"],
                "num_attention_heads": heads, "num_key_value_heads": cfg.get("num_key_value_heads", heads),
                "num_hidden_layers": cfg["num_hidden_layers"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
            },
        },
        "search": {"past_present_share_buffer": False, "max_length": cfg["max_position_embeddings"]},
    }
    json.dump(genai, open(os.path.join(tmp, "genai_config.json"), "w"))
    return tmp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    config = og.Config(genai_view(a.model))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    ids = [1] + [100 + i for i in range(a.prompt_tokens - 1)]
    params = og.GeneratorParams(model)
    total = a.prompt_tokens + a.new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    gen.generate_next_token()
    t1 = time.perf_counter()
    for _ in range(a.new_tokens - 1):
        gen.generate_next_token()
    t2 = time.perf_counter()
    print(json.dumps({
        "backend": "onnxruntime-genai (python)", "threads": a.threads,
        "prompt_tokens": a.prompt_tokens, "generated_tokens": a.new_tokens,
        "ttft_ms": (t1 - t0) * 1e3, "prompt_tokens_per_s": a.prompt_tokens / (t1 - t0),
        "decode_tokens_per_s": (a.new_tokens - 1) / (t2 - t1),
    }))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A TinyLlama-1.1B-shaped random-weight Llama checkpoint, for benchmarks only.

Same shape as TinyLlama-1.1B-Chat (22 layers, hidden 2048, 32 heads / 4
key-value heads, head size 64, MLP 5632, vocab 32000, untied head, 2048
positions), weights N(0, 0.02^2) from a seeded generator, the Llama 2
tokenizer. Its text is meaningless; its speed is that of the real model.
Not committed (4.4 GB): `models/make_bench_model.sh` builds it and its int4
ONNX export with the onnxruntime-genai builder.

    python models/make_bench_tinyllama.py ../shared/tokenizers/llama2 OUT_DIR
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    tok_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, head_dim=64, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
    )
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok_dir / f, out / f)
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()

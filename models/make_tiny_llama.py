#!/usr/bin/env python3
"""Make a tiny random-weight LlamaForCausalLM with the real Llama 2 tokenizer.

Run with the `optimum` venv (transformers 4.57; the checkpoint it writes also
loads in transformers 5, which the onnxruntime-genai builder uses):
    python models/make_tiny_llama.py ../shared/tokenizers/llama2 models/work/tiny-llama2-hf

Shape: vocab 32000, hidden 32, 2 attention heads (head size 16, what
onnxruntime's GroupQueryAttention CPU kernel needs), 1 key/value head, 2 layers,
MLP 64, tied input/output embeddings, 256 positions, bos 1, eos 2.

Weights are drawn from a seeded torch generator (seed 0) in a fixed order
(parameter names sorted), independent of transformers' own init code:
embeddings and linear weights N(0, 0.2^2) -- large enough that logits spread
over a few units and attention is far from uniform, so RoPE/KV-cache mistakes
show up in the logits -- and RMSNorm weights 1 + N(0, 0.1^2).
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
SEED = 0
STD = 0.2
NORM_STD = 0.1


def main():
    tok_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        initializer_range=STD,
        attention_bias=False,
        mlp_bias=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):  # tied lm_head is not listed twice
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_STD * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(STD * torch.randn(p.shape, generator=gen))
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tok_dir / name, out_dir / name)

    # Sanity: logits of "Hello world" spread over a few units.
    ids = torch.tensor([[1, 15043, 3186]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    print(f"saved {out_dir}: {sum(p.numel() for p in model.parameters())} parameters; "
          f"logits of [1, 15043, 3186] at the last position: std {logits.std().item():.3f}, "
          f"max {logits.max().item():.3f}, argmax {logits.argmax().item()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Random-weight Llama GGUF files: the TinyLlama-1.1B-shaped benchmark model, and the tiny fixture
of the fused graph.

    python models/make_bench_gguf.py TOKENIZER_MODEL OUT.gguf              (the 1.1B benchmark model)
    python models/make_bench_gguf.py --llama2-7b TOKENIZER_MODEL OUT.gguf  (the 7B benchmark model)
    python models/make_bench_gguf.py --fixture OUT.gguf                     (the test fixture's source)

Same shape as TinyLlama-1.1B-Chat (22 layers, hidden 2048, 32 heads / 4 key-value heads, head
size 64, MLP 5632, vocab 32000, untied head, 2048 positions), weights N(0, 0.02²) from a seeded
generator, the Llama 2 SentencePiece vocabulary (TOKENIZER_MODEL is its tokenizer.model).
Types as llama.cpp's `llama-quantize Q4_0` would write them, with Q8_0 where that writes Q6_K
(which gguf-py cannot quantize): every linear weight and the embedding Q4_0, the output head
Q8_0, the norms F32. Its text is meaningless; its speed is that of the real model. Not
committed (640 MB): `models/bench-peers.sh` makes it, then converts it for llamad and
onnxruntime-genai with `models/gguf_to_onnx.py`, so that every tool runs the same weights.
About a minute on 2 cores; the output is deterministic and written to OUT.part first.

--llama2-7b: Llama 2 7B's shape instead (32 layers, hidden 4096, 32 heads and 32 key-value
heads of 128, MLP 11008, vocab 32000, untied head, 4096 positions), the same types: 3.8 GB,
about 8 minutes on 2 cores.

--fixture: the source of models/fixtures/tiny-gguf-fused (models/make_fixtures.sh): 2 layers,
hidden 64, 4 heads / 2 KV heads of 16, MLP 128, 512 positions, tied embeddings, a made-up
SentencePiece-style vocabulary of 512 (specials, the 256 byte pieces, letter pairs), and the
types of SmolLM2's demo GGUF and TinyLlama's mixed: attention Q4_0, MLP Q4_1, embedding Q8_0.
Weights are drawn wider than a trained model's (std 0.15, embedding 1.0), so that its next
tokens are decided by clear margins rather than near-ties.
"""
import os
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from make_tiny_gguf import llama_writer, sentencepiece_vocab

BENCH = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
             rms_norm_eps=1e-5, rope_theta=10000.0)
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, rope_theta=10000.0)
FIXTURE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
               rms_norm_eps=1e-5, rope_theta=10000.0)


def made_up_vocab(n):
    """<unk>, <s>, </s>, the 256 byte pieces, then "▁a", "▁b", ..., "ab", ... up to n pieces."""
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["\u2581" + a for a in letters] + [a + b for a in letters for b in letters]
    for word in words[: n - len(tokens)]:
        tokens.append(word.encode())
        types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def main():
    args = sys.argv[1:]
    fixture = args[:1] == ["--fixture"]
    big = args[:1] == ["--llama2-7b"]
    if fixture or big:
        args = args[1:]
    if len(args) != (1 if fixture else 2):
        sys.exit(__doc__)
    out = Path(args[-1])
    c = FIXTURE if fixture else LLAMA2_7B if big else BENCH
    vocab = made_up_vocab(c["vocab_size"]) if fixture else sentencepiece_vocab(Path(args[0]))
    rng = np.random.default_rng(0)
    part = out.with_name(out.name + ".part")
    name = ("tiny random Llama (llamad fused-graph fixture)" if fixture
            else "Llama-2-7B shape, random (llamad benchmark)" if big
            else "TinyLlama-1.1B shape, random (llamad benchmark)")
    w = llama_writer(part, c, vocab, name, gguf.LlamaFileType.MOSTLY_Q4_0)
    hidden, ffn, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    kv = c["num_key_value_heads"] * d
    std = np.float32(0.15 if fixture else 0.02)

    def add(name, shape, qtype, scale=std):
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, np.ones(hidden, dtype=np.float32))

    attn, mlp = (Q.Q4_0, Q.Q4_1) if fixture else (Q.Q4_0, Q.Q4_0)
    add("token_embd.weight", (c["vocab_size"], hidden), Q.Q8_0 if fixture else Q.Q4_0, 1.0 if fixture else std)
    for i in range(c["num_hidden_layers"]):
        norm(f"blk.{i}.attn_norm.weight")
        for name, shape, qt in (("attn_q", (hidden, hidden), attn), ("attn_k", (kv, hidden), attn),
                                ("attn_v", (kv, hidden), attn), ("attn_output", (hidden, hidden), attn),
                                ("ffn_gate", (ffn, hidden), mlp), ("ffn_up", (ffn, hidden), mlp),
                                ("ffn_down", (hidden, ffn), mlp)):
            add(f"blk.{i}.{name}.weight", shape, qt)
        norm(f"blk.{i}.ffn_norm.weight")
    norm("output_norm.weight")
    if not fixture:  # the fixture's head is its embedding (tied)
        add("output.weight", (c["vocab_size"], hidden), Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(part, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()

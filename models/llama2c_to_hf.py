#!/usr/bin/env python3
"""Convert a llama2.c checkpoint (e.g. stories260K.bin) to a Hugging Face
LlamaForCausalLM checkpoint (config.json + model.safetensors).

Run with the `optimum` venv (transformers 4.57):
    python models/llama2c_to_hf.py ../shared/models/stories260K/stories260K.bin models/work/stories260k-hf

llama2.c layout (all little-endian): 7 int32 header
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
(vocab_size > 0 means the classifier shares the token embedding), then float32
tensors: token_embedding [vocab, dim]; rms_att [L, dim]; wq [L, dim, dim];
wk [L, kv*hd, dim]; wv [L, kv*hd, dim]; wo [L, dim, dim]; rms_ffn [L, dim];
w1 [L, hidden, dim]; w2 [L, dim, hidden]; w3 [L, hidden, dim]; rms_final [dim];
freq_cis_real/imag [seq_len, hd/2] (unused); then wcls [vocab, dim] only if
vocab_size < 0.

llama2.c (like Meta's reference code) applies RoPE to adjacent pairs
(x[2i], x[2i+1]); HF's Llama rotates halves (x[i], x[i + hd/2]). So the rows of
wq and wk are permuted within each head, exactly as transformers'
convert_llama_weights_to_hf.py does for Meta's weights.
"""
import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved-pair RoPE rows -> rotate-half rows, within each head."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return (
        w.reshape(n_heads, hd // 2, 2, in_dim)
        .transpose(0, 2, 1, 3)
        .reshape(out_dim, in_dim)
    )


def read_llama2c(path: Path):
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        t = data[pos : pos + n].reshape(shape).copy()
        pos += n
        return t

    w = {}
    w["tok"] = take(vocab, dim)
    w["rms_att"] = take(n_layers, dim)
    w["wq"] = take(n_layers, dim, dim)
    w["wk"] = take(n_layers, n_kv * hd, dim)
    w["wv"] = take(n_layers, n_kv * hd, dim)
    w["wo"] = take(n_layers, dim, dim)
    w["rms_ffn"] = take(n_layers, dim)
    w["w1"] = take(n_layers, hidden, dim)
    w["w2"] = take(n_layers, dim, hidden)
    w["w3"] = take(n_layers, hidden, dim)
    w["rms_final"] = take(dim)
    take(seq_len, hd // 2)  # freq_cis_real (unused)
    take(seq_len, hd // 2)  # freq_cis_imag (unused)
    if not shared:
        w["wcls"] = take(vocab, dim)
    if pos != data.size:
        sys.exit(f"size mismatch: consumed {pos} floats, file has {data.size}")
    hdr = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads,
               n_kv=n_kv, vocab=vocab, seq_len=seq_len, shared=shared)
    return hdr, w


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()

    hdr, w = read_llama2c(args.checkpoint)
    print("header:", json.dumps(hdr))
    L, H, KV = hdr["n_layers"], hdr["n_heads"], hdr["n_kv"]

    config = LlamaConfig(
        vocab_size=hdr["vocab"],
        hidden_size=hdr["dim"],
        intermediate_size=hdr["hidden"],
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=KV,
        hidden_act="silu",
        max_position_embeddings=hdr["seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=hdr["shared"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        attention_bias=False,
        mlp_bias=False,
        dtype="float32",
    )

    sd = {"model.embed_tokens.weight": w["tok"], "model.norm.weight": w["rms_final"]}
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = w["rms_att"][i]
        sd[p + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_rotary(w["wq"][i], H)
        sd[p + "self_attn.k_proj.weight"] = permute_rotary(w["wk"][i], KV)
        sd[p + "self_attn.v_proj.weight"] = w["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = w["wo"][i]
        sd[p + "mlp.gate_proj.weight"] = w["w1"][i]
        sd[p + "mlp.down_proj.weight"] = w["w2"][i]
        sd[p + "mlp.up_proj.weight"] = w["w3"][i]
    sd["lm_head.weight"] = w["tok"] if hdr["shared"] else w["wcls"]
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}

    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # rotary inv_freq buffers are not persistent; nothing else may be missing.
    if unexpected or [m for m in missing if "rotary" not in m]:
        sys.exit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if hdr["shared"]:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out_dir, safe_serialization=True)
    print("saved", args.out_dir, "params:", sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write the tiny random Llama checkpoint as a llama.cpp-style GGUF file (Q4_0 / Q8_0 / F32).

Run with the `genai` venv (gguf, numpy, safetensors, sentencepiece; models/requirements-genai.txt):
    python models/make_tiny_gguf.py models/work/tiny-llama2-hf \\
        ../shared/tokenizers/llama2/tokenizer.model models/work/tiny-llama2.Q4_0.gguf

The input is the checkpoint that models/make_tiny_llama.py writes (LlamaForCausalLM, vocab
32000, hidden 32, 2 heads / 1 KV head, head dim 16, 2 layers, MLP 64, tied embeddings). The
file is laid out the way llama.cpp's convert_hf_to_gguf.py lays out a Llama, followed by a
llama-quantize-style type choice:

  * tensor names token_embd, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,
    ffn_gate,ffn_up,ffn_down}, output_norm; no output.weight (the embeddings are tied);
  * attn_q / attn_k rows permuted per head as convert_hf_to_gguf.py's LlamaModel.permute
    does for llama.cpp's interleaved RoPE (K with the KV head count);
  * types: every linear weight Q4_0, token_embd Q8_0 (both with gguf.quants.quantize), the
    1-D norm weights F32; general.file_type MOSTLY_Q4_0;
  * llama.* hyperparameters from config.json, and the SentencePiece vocabulary (pieces,
    scores, token types unknown/control/byte/normal) read from tokenizer.model, as
    convert_hf_to_gguf.py's sentencepiece vocab path does: tokenizer.ggml.model "llama",
    bos 1, eos 2, unk 0, add_bos_token true, add_eos_token false. No chat template.

The output is deterministic: the same input files give the same bytes. It is written to
OUT.part and renamed when complete.
"""
import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm
from gguf import GGMLQuantizationType as Q
LINEAR = {  # HF suffix in model.layers.N -> GGUF name in blk.N
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> llama.cpp interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def sentencepiece_vocab(sp_model: Path):
    """(pieces, scores, token types) of a SentencePiece model, as convert_hf_to_gguf.py's
    _create_vocab_sentencepiece reads them."""
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def llama_writer(part: Path, cfg: dict, vocab, name: str, file_type) -> gguf.GGUFWriter:
    """A GGUFWriter with general.*, llama.* (from an HF LlamaConfig dict) and a SentencePiece-style
    vocabulary `vocab` ((pieces, scores, token types), unk 0, bos 1, eos 2) written, ready for
    the tensors."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    part.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(part), "llama")
    # general.*
    w.add_type("model")
    w.add_name(name)
    w.add_license("other")
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # llama.*
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    # tokenizer.ggml.* (a SentencePiece vocabulary, as convert_hf_to_gguf.py writes it)
    tokens, scores, types = vocab
    assert len(tokens) == cfg["vocab_size"], (len(tokens), cfg["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    return w


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    hf_dir, sp_model, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"], "expects the tiny tied Llama"
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    from safetensors.numpy import load_file

    weights = load_file(str(hf_dir / "model.safetensors"))
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}

    part = out.with_name(out.name + ".part")
    w = llama_writer(part, cfg, sentencepiece_vocab(sp_model), "tiny-llama2 random (llamad test fixture)",
                     gguf.LlamaFileType.MOSTLY_Q4_0)

    # tensors
    def add(name, x, qtype):
        data = gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
        return qtype.name

    counts = {}

    def count(t):
        counts[t] = counts.get(t, 0) + 1

    count(add("token_embd.weight", weights.pop("model.embed_tokens.weight"), Q.Q8_0))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        count(add(f"blk.{i}.attn_norm.weight", weights.pop(p + "input_layernorm.weight"), Q.F32))
        for hf, gg in LINEAR.items():
            x = weights.pop(p + hf + ".weight")
            if gg == "attn_q":
                x = permute(x, n_head)
            elif gg == "attn_k":
                x = permute(x, n_kv)
            count(add(f"blk.{i}.{gg}.weight", x, Q.Q4_0))
        count(add(f"blk.{i}.ffn_norm.weight", weights.pop(p + "post_attention_layernorm.weight"), Q.F32))
    count(add("output_norm.weight", weights.pop("model.norm.weight"), Q.F32))
    weights.pop("lm_head.weight", None)  # tied: llama.cpp reuses token_embd
    assert not weights, f"tensors not written: {sorted(weights)}"

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(part, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): tensor types {counts}, "
          f"vocab {cfg['vocab_size']}, tied embeddings (no output.weight)")


if __name__ == "__main__":
    main()

"""The fused decoder graph for ONNX Runtime's CPU provider (`gguf_to_onnx.py --graph fused`).

Written in the shape of the onnxruntime-genai builder's CPU output, which is what ONNX
Runtime's fastest kernels want, from the same GGUF weights as the standard graph:

  * one `MatMulNBits` per projection group (Q, K and V packed into one), `accuracy_level` 4
    (int8 activations: MLAS's integer kernels instead of its float path);
  * `GroupQueryAttention` with the rotary embedding inside (cos/sin caches, rotate-half
    layout) and the KV cache in one buffer per layer that is bound as both past and present
    (`genai_config.json` sets `past_present_share_buffer`; llamad binds it through
    IoBinding): a step writes only its new positions;
  * RMSNorm fused with the residual add (`SimplifiedLayerNormalization`, then
    `SkipSimplifiedLayerNormalization`, whose fourth output is the running residual);
  * logits for the last `logits_to_keep` positions only (an input whose default, 0, means every
    position, as runtimes that do not know it expect; llamad feeds 1, so a prompt does not pay
    for a head over every position, and k to verify a speculative draft);
  * the output head in 8 bits (`MatMulNBits` bits 8): a GGUF Q8_0 head is carried over
    bit-exactly, any other type is quantized per block of 32 with a float scale. With tied
    embeddings the embedding rows are gathered from the same 8-bit tensor
    (`GatherBlockQuantized`), so the model holds the table once; an untied Q4_0 embedding is
    gathered from its own 4-bit codes, any other from float16 rows.

Q4_0 and Q4_1 tensors are carried over bit-exactly: Q4_0 is MatMulNBits' symmetric format;
Q4_1 (w = d·q + m) becomes the symmetric MatMulNBits of its codes plus a small float MatMul of
the input's block sums by (m + 8d). Two other exact forms were measured and rejected: a float
zero point per block runs on a slow path in ONNX Runtime 1.32 (0.1-0.2 GB/s against 10 GB/s),
and requantizing to uint8 zero points costs SmolLM2-135M 17 % of its top-1 agreement with the
float model. Any other type is requantized as the standard graph's `asym` scheme does. tract cannot run these
operators: the standard graph (`--graph standard`, the default) is the one for tract.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

BLOCK = 32


def q8_blocks(m, name: str):
    """A Q8_0 tensor's int8 codes [N, K/32, 32] and float32 scales [N, K/32] (w = d·q), or None."""
    from gguf import GGMLQuantizationType

    t = m.tensors[name]
    if t.tensor_type != GGMLQuantizationType.Q8_0 or len(t.shape) != 2:
        return None
    m.used.add(name)
    k, n = int(t.shape[0]), int(t.shape[1])
    raw = np.asarray(t.data, dtype=np.uint8).reshape(n, k // BLOCK, 34)  # {f16 d; i8 qs[32]}
    d = np.ascontiguousarray(raw[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
    q = np.ascontiguousarray(raw[..., 2:34]).view(np.int8)
    return q, d


def quantize_q8(w: np.ndarray):
    """Symmetric 8-bit blocks of 32 along K (as Q8_0): int8 codes [N, K/32, 32], scales [N, K/32]."""
    n, k = w.shape
    x = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    amax = np.abs(x).max(axis=-1)
    d = (amax / 127.0).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d[..., None] > 0, np.rint(x / d[..., None]), 0)
    return np.clip(q, -127, 127).astype(np.int8), d


class FusedLlamaGraph:
    """Builds the fused graph from a `GGUFModel` into a `GraphBuilder` (see the module doc)."""

    def __init__(self, m, g, log, quantize_q4, q4_scheme="transcode", kv_cache_type="f16", block_size=BLOCK,
                 head_bits=8):
        self.m, self.g, self.log = m, g, log
        self.kv_type = kv_cache_type
        self.block = block_size
        self.head_bits = head_bits
        self.quantize_q4 = quantize_q4
        self.scheme = q4_scheme
        self.stats: dict[str, int] = {}
        self.sums: dict[str, str] = {}

    def count(self, what):
        self.stats[what] = self.stats.get(what, 0) + 1

    # -- weights --------------------------------------------------------------------------

    def q4(self, tensor: str, n_head: int | None = None):
        """(packed uint8 [N, K/32, 16], scales f32 [N, K/32], zero points, block offsets) of a linear.

        Zero points (requantized tensors) are one uint8 a block [N, K/32], packed when the
        groups are joined; block offsets (Q4_1) are float32 [N, K/32]; either may be None."""
        m = self.m
        # GGUF's Q4 blocks are 32 long: carried over only at that block size
        blocks = m.q4_blocks(tensor, n_head) if self.scheme == "transcode" and self.block == BLOCK else None
        if blocks is not None:
            codes, d, mins = blocks
            self.count("transcoded " + m.tensors[tensor].tensor_type.name)
            packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
            # Q4_1: w = d·q + m = d·(q − 8) + (m + 8d), the second term constant per block
            return packed, d, None, None if mins is None else (mins + 8.0 * d).astype(np.float32)
        w = m.qk_weight(tensor, n_head) if n_head is not None else m.weight(tensor)
        packed, scales, zp = self.quantize_q4(w, symmetric=self.scheme == "sym", block=self.block)
        self.count("requantized " + ("sym" if self.scheme == "sym" else "asym"))
        if zp is not None:  # unpack to one zero point per block, so groups can be concatenated
            n = w.shape[0]
            zp = np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1)[:, : scales.shape[1]]
        return packed, scales.reshape(packed.shape[0], -1), zp, None

    def block_sums(self, x: str, k: int) -> str:
        """Sums of x over each block of 32 along its last axis, [B, S, K] -> [B, S, K/32] (once per x)."""
        if x not in self.sums:
            g = self.g
            r = g.node("Reshape", [x, g.const([0, 0, k // BLOCK, BLOCK], np.int64)], f"{x}/block_sums/Reshape")
            self.sums[x] = g.node("ReduceSum", [r, g.const([-1], np.int64)], f"{x}/block_sums/ReduceSum",
                                  keepdims=0)
        return self.sums[x]

    def matmul_nbits(self, x: str, parts: list, name: str, k: int) -> str:
        """One MatMulNBits (4 bits, input width k) over the row-concatenation of `parts` (outputs
        side by side; a row's last block padded when the block size does not divide k);
        Q4_1 parts add their block offsets times the input's block sums (one small float MatMul)."""
        g = self.g
        packed = np.concatenate([p[0] for p in parts])
        scales = np.concatenate([p[1] for p in parts])
        n, nb, _ = packed.shape
        ins = [x, g.init(f"{name}.weight_Q4", packed), g.init(f"{name}.weight_scales", scales.reshape(-1))]
        if any(p[2] is not None for p in parts):
            z = np.concatenate([np.full(sc.shape, 8, np.uint8) if z is None else z.astype(np.uint8)
                                for (_, sc, z, _) in parts])
            if z.shape[1] % 2:  # two 4-bit zero points a byte, rows padded to whole bytes
                z = np.pad(z, ((0, 0), (0, 1)))
            z = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
            ins.append(g.init(f"{name}.weight_zero_points", np.ascontiguousarray(z).reshape(-1)))
        y = g.node("MatMulNBits", ins, f"{name}/MatMulNBits", domain="com.microsoft",
                   K=k, N=n, bits=4, block_size=self.block, accuracy_level=4)
        if all(p[3] is None for p in parts):
            return y
        offs = np.concatenate([np.zeros(sc.shape, np.float32) if o is None else o for (_, sc, _, o) in parts])
        corr = g.node("MatMul", [self.block_sums(x, nb * BLOCK),
                                 g.init(f"{name}.weight_block_offsets_T", np.ascontiguousarray(offs.T))],
                      f"{name}/offsets/MatMul")
        return g.node("Add", [y, corr], f"{name}/offsets/Add")

    def head(self):
        """The output head as 8-bit blocks: (uint8 codes [N, K/32, 32] with zero point 128, scales)."""
        m = self.m
        name = "token_embd.weight" if m.tied else "output.weight"
        blocks = q8_blocks(m, name)
        if blocks is not None:
            self.count("head transcoded Q8_0")
        else:
            blocks = quantize_q8(m.weight(name))
            self.count(f"head quantized to 8 bits from {m.tensors[name].tensor_type.name}")
        q, d = blocks
        return (q.astype(np.int16) + 128).astype(np.uint8), d

    # -- the model ----------------------------------------------------------------------

    def build(self):
        g, m = self.g, self.m
        L, H, kv, d = m.n_layers, m.n_heads, m.n_kv, m.head_dim
        i64, f32 = TensorProto.INT64, TensorProto.FLOAT
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "logits_length", m.vocab])]
        from gguf_to_onnx import kv_cache_io

        kv_elem = TensorProto.FLOAT16 if self.kv_type == "f16" else TensorProto.FLOAT
        past, present = kv_cache_io(m, "total_sequence_length", kv_elem)
        inputs += past
        outputs += present
        # How many of the last positions get logits: an input with an initializer, so a runtime
        # that does not know it (onnxruntime-genai, which expects every position's) gets the
        # default, 0: every position. llamad feeds 1, or k to verify a draft.
        inputs.append(helper.make_tensor_value_info("logits_to_keep", i64, []))
        g.init("logits_to_keep", np.array(0, dtype=np.int64))

        x, head = self.embedding_and_head()

        # GroupQueryAttention's lengths from the mask: seqlens_k = tokens - 1, total length
        mp = "/model/attn_mask"
        n_tok = g.node("ReduceSum", ["attention_mask", g.const([1], np.int64)], f"{mp}/ReduceSum", keepdims=0)
        seqlens = g.node("Cast", [g.node("Sub", [n_tok, g.const(1, np.int64)], f"{mp}/Sub")], f"{mp}/Cast",
                         to=TensorProto.INT32)
        total = g.node("Gather", [g.node("Shape", ["attention_mask"], f"{mp}/Shape"), g.const(1, np.int64)],
                       f"{mp}/Gather", axis=0)
        total = g.node("Cast", [total], f"{mp}/Cast_1", to=TensorProto.INT32)
        cos_t, sin_t = self.rope_tables()
        # f16 cache: GroupQueryAttention on the CPU wants its inputs, rotary tables and cache in one
        # type, so it runs in float16 between two Casts
        t = np.float16 if self.kv_type == "f16" else np.float32
        cos = g.init("model.rotary_emb.cos_cache", np.ascontiguousarray(cos_t[:, : d // 2]).astype(t))
        sin = g.init("model.rotary_emb.sin_cache", np.ascontiguousarray(sin_t[:, : d // 2]).astype(t))

        def norm(x_in, skip, w, name):
            """RMSNorm of x_in (+ skip, the residual): (normed, new residual)."""
            gamma = g.init(f"{name}.weight", w.astype(np.float32))
            if skip is None:
                out = g.node("SimplifiedLayerNormalization", [x_in, gamma], f"{name}/SimplifiedLayerNorm",
                             axis=-1, epsilon=m.eps, stash_type=1)
                return out, x_in
            out, _, _, res = g.node("SkipSimplifiedLayerNormalization", [x_in, skip, gamma],
                                    f"{name}/SkipLayerNorm", domain="com.microsoft", n_out=4, epsilon=m.eps)
            return out, res

        res = None
        for i in range(L):
            p, blk = f"/model/layers.{i}", f"blk.{i}."
            h, res = norm(x, res, m.weight(blk + "attn_norm.weight"), f"{p}/input_layernorm")
            qkv = self.matmul_nbits(h, [self.q4(blk + "attn_q.weight", H), self.q4(blk + "attn_k.weight", kv),
                                        self.q4(blk + "attn_v.weight")], f"{p}/attn/qkv_proj", m.hidden)
            if self.kv_type == "f16":
                qkv = g.node("Cast", [qkv], f"{p}/attn/qkv_proj/Cast", to=TensorProto.FLOAT16)
            attn = g.node("GroupQueryAttention",
                          [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
                           cos, sin],
                          f"{p}/attn/GroupQueryAttention",
                          outputs=[f"{p}/attn/GroupQueryAttention/output_0", f"present.{i}.key",
                                   f"present.{i}.value"],
                          domain="com.microsoft", num_heads=H, kv_num_heads=kv, do_rotary=1,
                          rotary_interleaved=0, scale=float(1.0 / np.sqrt(d)))
            out = attn[0]
            if self.kv_type == "f16":
                out = g.node("Cast", [out], f"{p}/attn/GroupQueryAttention/Cast", to=TensorProto.FLOAT)
            x = self.matmul_nbits(out, [self.q4(blk + "attn_output.weight")], f"{p}/attn/o_proj", H * d)
            h, res = norm(x, res, m.weight(blk + "ffn_norm.weight"), f"{p}/post_attention_layernorm")
            gate = self.matmul_nbits(h, [self.q4(blk + "ffn_gate.weight")], f"{p}/mlp/gate_proj", m.hidden)
            up = self.matmul_nbits(h, [self.q4(blk + "ffn_up.weight")], f"{p}/mlp/up_proj", m.hidden)
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{p}/mlp/act_fn/Sigmoid")], f"{p}/mlp/act_fn/Mul")
            act = g.node("Mul", [act, up], f"{p}/mlp/Mul")
            x = self.matmul_nbits(act, [self.q4(blk + "ffn_down.weight")], f"{p}/mlp/down_proj", m.ffn)
        h, _ = norm(x, res, m.weight("output_norm.weight"), "/model/norm")

        # the last logits_to_keep positions: h[:, -keep:, :] (keep 0: h[:, 0:, :], all of them)
        start = g.node("Neg", [g.node("Unsqueeze", ["logits_to_keep", g.const([0], np.int64)],
                                      "/lm_head/Unsqueeze")], "/lm_head/Neg")
        h = g.node("Slice", [h, start, g.const([np.iinfo(np.int64).max], np.int64), g.const([1], np.int64)],
                   "/lm_head/Slice")
        head(h)
        self.log("  fused graph: " + ", ".join(f"{v} {k}" for k, v in sorted(self.stats.items())))
        graph = helper.make_graph(g.nodes, "llama_gguf_fused", inputs, outputs, g.initializers)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets, producer_name="llamad gguf_to_onnx (fused)",
                                 producer_version="1")

    def embedding_and_head(self):
        """The embedding's output for `input_ids`, and a function that writes the head's node
        (`logits` from the final hidden state). With tied embeddings the rows are gathered from
        the head's own table (8 or 4 bits), so the model holds it once; an untied Q4_0
        embedding is gathered from its own 4-bit codes, any other from float16 rows."""
        g, m = self.g, self.m
        if self.head_bits == 4:
            name = "token_embd.weight" if m.tied else "output.weight"
            packed, scales, _ = self.quantize_q4(m.weight(name), symmetric=True, block=BLOCK)
            self.count(f"head quantized to 4 bits from {m.tensors[name].tensor_type.name}")
            hq = g.init("lm_head.weight_Q4", packed)
            hs = g.init("lm_head.weight_scales", scales)
            bits, block, scale_values = 4, BLOCK, scales
        else:
            head_q, head_d = self.head()
            hq = g.init("lm_head.weight_Q8", head_q)
            hs = g.init("lm_head.weight_scales", head_d)
            bits, block, scale_values = 8, BLOCK, head_d
        if m.tied:  # the head's codes ([vocab, K/block, bytes a block]), scales in the shape Gather wants
            gs = g.init("model.embed_tokens.weight_scales", scale_values[..., None])
            x = g.node("GatherBlockQuantized", [hq, "input_ids", gs], "/model/embed_tokens/GatherBlockQuantized",
                       domain="com.microsoft", bits=bits, block_size=block, gather_axis=0, quantize_axis=2)
            x = g.node("Reshape", [x, g.const([0, 0, m.hidden], np.int64)], "/model/embed_tokens/Reshape")
        elif (blocks := m.q4_blocks("token_embd.weight") if self.scheme == "transcode" else None) is not None \
                and blocks[2] is None:  # Q4_0 rows, gathered as they are (4 bits, zero point 8)
            codes, scales, _ = blocks
            self.count("embedding transcoded Q4_0")
            packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8).reshape(m.vocab, -1)
            x = g.node("GatherBlockQuantized", [g.init("model.embed_tokens.weight_Q4", packed), "input_ids",
                                                g.init("model.embed_tokens.weight_scales", scales)],
                       "/model/embed_tokens/GatherBlockQuantized", domain="com.microsoft",
                       bits=4, block_size=BLOCK, gather_axis=0, quantize_axis=1)
        else:  # float16 rows
            rows = g.init("model.embed_tokens.weight_fp16", m.weight("token_embd.weight").astype(np.float16))
            x = g.node("Gather", [rows, "input_ids"], "/model/embed_tokens/Gather", axis=0)
            x = g.node("Cast", [x], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)

        def head(h):
            g.node("MatMulNBits", [h, hq, hs], "/lm_head/MatMulNBits", outputs=["logits"], domain="com.microsoft",
                   K=m.hidden, N=m.vocab, bits=bits, block_size=block, accuracy_level=4)

        return x, head

    def rope_tables(self):
        from gguf_to_onnx import LlamaGraph  # the same tables as the standard graph

        return LlamaGraph(self.m, "fp32", self.g, self.log).rope_tables()

#!/usr/bin/env python3
"""Convert a Llama-architecture GGUF file into an ONNX model directory for llamad.

    python models/gguf_to_onnx.py MODEL.gguf OUTDIR --precision {fp32,int4}
        [--int4-scheme {transcode,asym,sym}] [--external-data {auto,always,never}]

The output directory follows the Hugging Face Optimum layout that llamad loads:

    model.onnx              decoder with KV cache (+ model.onnx.data when weights > ~1.9 GB)
    config.json             LlamaForCausalLM-style config (+ a "gguf_source" record)
    generation_config.json  bos / eos / pad ids
    tokenizer.json          built from the GGUF tokenizer metadata with the tokenizers library
    tokenizer_config.json   special tokens, add_bos_token, chat_template
    chat_template.jinja     the same template, as transformers 5 writes it

Graph inputs:  input_ids int64 [batch_size, sequence_length]
               attention_mask int64 [batch_size, past_sequence_length + sequence_length]
               position_ids int64 [batch_size, sequence_length]
               past_key_values.{i}.key / .value float32
                   [batch_size, kv_heads, past_sequence_length, head_dim]
Graph outputs: logits float32 [batch_size, sequence_length, vocab]
               present.{i}.key / .value float32
                   [batch_size, kv_heads, past_sequence_length + sequence_length, head_dim]

--precision fp32: standard ONNX operators only (opset 17), every weight dequantized to float32.
--precision int4: every linear layer (q/k/v/o, gate/up/down, lm_head) is a com.microsoft
MatMulNBits (bits=4, block_size=32); the embedding Gather stays float32. --int4-scheme:
  transcode (default)  Q4_0 tensors become MatMulNBits as they are (same codes, same f16
                       scales: lossless); Q4_1 tensors too, their per-block minimum carried
                       by a small float MatMul over per-block sums of the input (lossless);
                       every other tensor type is requantized as `asym`.
  asym                 every linear weight requantized from its dequantized floats:
                       per-block scale and uint8 zero point.
  sym                  the same with scales only (implicit zero point 8).

Needs only numpy, gguf, onnx and tokenizers (models/requirements-convert.txt).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

try:
    import gguf
    from gguf import GGUFReader, GGMLQuantizationType
    from gguf.quants import dequantize
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors
except ImportError as e:  # pragma: no cover
    sys.exit(f"error: missing Python package ({e}); install models/requirements-convert.txt")

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17
BLOCK = 32  # MatMulNBits block size along K
EXTERNAL_DATA_THRESHOLD = 1_900_000_000  # bytes of weights above which model.onnx.data is used

INT4_SCHEMES = {
    "transcode": "Q4_0/Q4_1 GGUF tensors carried over bit-exactly (Q4_1's per-block minimum "
                 "as a float block-offset MatMul beside the MatMulNBits), any other tensor "
                 "requantized asymmetrically (default)",
    "asym": "every linear layer requantized from the dequantized floats, per-block scale and "
            "uint8 zero point",
    "sym": "every linear layer requantized from the dequantized floats, per-block scale only "
           "(implicit zero point 8)",
}


class ConversionError(Exception):
    pass


# --------------------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------------------


def field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # older gguf without contents(): fall back to raw parts
        if len(f.data) == 1:
            v = f.parts[f.data[0]]
            if f.types and f.types[0] == gguf.GGUFValueType.STRING:
                return bytes(v).decode("utf-8")
            return v.tolist()[0]
        return [bytes(f.parts[i]).decode("utf-8") if f.types[-1] == gguf.GGUFValueType.STRING
                else f.parts[i].tolist()[0] for i in f.data]


def f32_value(x) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (9.99e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


class GGUFModel:
    def __init__(self, path: str):
        self.path = path
        try:
            self.reader = GGUFReader(path)
        except Exception as e:
            raise ConversionError(f"{path}: not a readable GGUF file ({e})") from e
        r = self.reader
        arch = field(r, "general.architecture")
        if arch != "llama":
            raise ConversionError(
                f"{path}: general.architecture is {arch!r}; only 'llama' GGUF files are supported")
        p = "llama."
        self.tensors = {t.name: t for t in r.tensors}
        self.n_layers = int(field(r, p + "block_count"))
        self.hidden = int(field(r, p + "embedding_length"))
        self.ffn = int(field(r, p + "feed_forward_length"))
        self.n_heads = int(field(r, p + "attention.head_count"))
        self.n_kv = int(field(r, p + "attention.head_count_kv", self.n_heads))
        self.head_dim = int(field(r, p + "attention.key_length", self.hidden // self.n_heads))
        v_len = int(field(r, p + "attention.value_length", self.head_dim))
        rope_dim = int(field(r, p + "rope.dimension_count", self.head_dim))
        self.ctx = int(field(r, p + "context_length", 2048))
        self.eps = f32_value(field(r, p + "attention.layer_norm_rms_epsilon", 1e-5))
        self.rope_theta = f32_value(field(r, p + "rope.freq_base", 10000.0))
        self.rope_scaling_type = field(r, p + "rope.scaling.type")
        self.rope_scaling_factor = field(r, p + "rope.scaling.factor")
        experts = int(field(r, p + "expert_count", 0) or 0)
        emb = self.tensors.get("token_embd.weight")
        if emb is None:
            raise ConversionError(f"{path}: no token_embd.weight tensor")
        self.vocab = int(emb.shape[1])  # ggml order: [hidden, vocab]
        meta_vocab = field(r, p + "vocab_size")
        if meta_vocab is not None and int(meta_vocab) != self.vocab:
            raise ConversionError(f"vocab_size {meta_vocab} != token_embd rows {self.vocab}")
        if experts:
            raise ConversionError(f"{path}: mixture-of-experts llama ({experts} experts) is not supported")
        if v_len != self.head_dim:
            raise ConversionError(f"key_length {self.head_dim} != value_length {v_len}: unsupported")
        if rope_dim != self.head_dim:
            raise ConversionError(f"partial rotary embedding (rope dim {rope_dim} of head dim "
                                  f"{self.head_dim}) is not supported")
        if self.n_heads % self.n_kv:
            raise ConversionError(f"{self.n_heads} heads is not a multiple of {self.n_kv} KV heads")
        if self.rope_scaling_type not in (None, "none", "linear"):
            raise ConversionError(f"rope scaling type {self.rope_scaling_type!r} is not supported "
                                  "(only none and linear)")
        self.tied = "output.weight" not in self.tensors
        self.used: set[str] = set()

    def weight(self, name: str) -> np.ndarray:
        """Dequantize a tensor to float32 in PyTorch layout ([out, in] for matrices)."""
        t = self.tensors.get(name)
        if t is None:
            raise ConversionError(f"{self.path}: missing tensor {name}")
        self.used.add(name)
        qt = t.tensor_type
        try:
            if qt == GGMLQuantizationType.F32:
                w = np.asarray(t.data, dtype=np.float32)
            elif qt == GGMLQuantizationType.F16:
                w = np.asarray(t.data).view(np.float16).astype(np.float32)
            else:
                w = dequantize(t.data, qt)
        except NotImplementedError as e:
            raise ConversionError(
                f"tensor {name}: GGUF type {qt.name} cannot be dequantized by gguf "
                f"{getattr(gguf, '__version__', '')} ({e})") from e
        except Exception as e:
            raise ConversionError(f"tensor {name}: unsupported GGUF type {qt.name} ({e})") from e
        expected = tuple(int(d) for d in reversed(t.shape))  # ggml dims are innermost first
        w = np.ascontiguousarray(w, dtype=np.float32).reshape(expected)
        if len(expected) == 2 and expected[0] == 1:
            w = w.reshape(expected[1])
        return w

    def q4_blocks(self, name: str, n_head: int | None = None):
        """For a Q4_0 / Q4_1 tensor, its 4-bit codes and per-block constants, without loss.

        Returns (codes uint8 [N, K/32, 32] in 0..15, d float32 [N, K/32], m float32
        [N, K/32] or None) with w = d * (code - 8) (Q4_0) or w = d * code + m (Q4_1), rows
        un-permuted like qk_weight when n_head is given; None for any other tensor type.
        ggml block layouts: Q4_0 {f16 d; u8 qs[16]}, Q4_1 {f16 d; f16 m; u8 qs[16]}, where
        qs[j] holds element j in its low nibble and element j + 16 in its high nibble.
        """
        t = self.tensors.get(name)
        if t is None:
            raise ConversionError(f"{self.path}: missing tensor {name}")
        qt = t.tensor_type
        if qt not in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1) or len(t.shape) != 2:
            return None
        self.used.add(name)
        k, n = int(t.shape[0]), int(t.shape[1])
        nb = k // 32
        raw = np.asarray(t.data, dtype=np.uint8).reshape(n, nb, -1)
        d = np.ascontiguousarray(raw[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
        if qt == GGMLQuantizationType.Q4_1:
            m = np.ascontiguousarray(raw[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)
            qs = raw[..., 4:20]
        else:
            m = None
            qs = raw[..., 2:18]
        codes = np.concatenate([qs & 15, qs >> 4], axis=-1)
        # self-check against gguf's own dequantization
        w = codes.astype(np.float32) * d[..., None] + (m[..., None] if m is not None else -8 * d[..., None])
        ref = dequantize(t.data, qt).reshape(n, k)
        if not np.allclose(w.reshape(n, k), ref, rtol=1e-6, atol=1e-6):
            raise ConversionError(f"tensor {name}: {qt.name} block decoding does not match gguf's")
        if n_head is not None:
            def unpermute(a):
                return np.ascontiguousarray(
                    a.reshape(n_head, n // n_head // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape))
            codes, d = unpermute(codes), unpermute(d)
            m = unpermute(m) if m is not None else None
        return codes, d, m

    def qk_weight(self, name: str, n_head: int) -> np.ndarray:
        """Q/K projections: undo llama.cpp's convert_hf_to_gguf row permutation.

        The converter reorders each head's rows from rotate-half (HF) to interleaved
        (llama.cpp's RoPE, pairs (2i, 2i+1)): permute(w) = w.reshape(h, 2, d/2, in)
        .swapaxes(1, 2). The inverse below brings back HF's layout, where the rotary pairs
        are (i, i + d/2) and RoPE is rotate-half.
        """
        w = self.weight(name)
        out, inp = w.shape
        return np.ascontiguousarray(
            w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp))


# --------------------------------------------------------------------------------------
# int4 quantization (MatMulNBits layout)
# --------------------------------------------------------------------------------------


def quantize_q4(w: np.ndarray, symmetric: bool = False, block: int = BLOCK):
    """4-bit block quantization of a [N, K] weight (PyTorch layout), `block` (32) along K.

    Returns (B uint8 [N, K/block, block/2], scales float32 [N, K/block], zero_points uint8
    [N, ceil(K/block / 2)] or None when symmetric), in the layout of onnxruntime's
    com.microsoft MatMulNBits: element k of a block sits in byte k//2 of the block's 16
    bytes, low nibble for even k; block b's zero point sits in byte b//2 of the column's
    zero-point row, low nibble for even b; w ~= (code - zero_point) * scale, zero point 8
    when omitted (symmetric).

    Each block's scale (and zero point) is picked among a small set of candidate ranges by
    least squares, as llama.cpp's quantizers do, and the scale is rounded to a float16
    value, so runtimes that keep scales in f16 (tract's Q4_0 packing) compute exactly the
    weight onnxruntime computes.
    """
    n, k = w.shape
    kp = -(-k // block) * block
    if kp != k:
        w = np.pad(w, ((0, 0), (0, kp - k)))
    x = w.reshape(n, kp // block, block).astype(np.float32)
    if symmetric:
        idx = np.argmax(np.abs(x), axis=-1)[..., None]
        vmax = np.take_along_axis(x, idx, axis=-1)  # signed value of largest magnitude
        steps = np.arange(-0.5, 0.51, 0.1)  # step 0: llama.cpp's Q4_0 scale vmax / -8
    else:
        lo = np.minimum(x.min(axis=-1, keepdims=True), 0.0)
        hi = np.maximum(x.max(axis=-1, keepdims=True), 0.0)
        steps = np.arange(-1.0, 1.01, 0.1)  # step 0: min/max scale (hi - lo) / 15
    best = None
    for step in steps:
        with np.errstate(divide="ignore", invalid="ignore"):
            if symmetric:
                zp = np.full_like(vmax, 8.0)
                iscale = np.where(vmax != 0, -(8.0 + step) / vmax, 0.0).astype(np.float32)
                c = np.clip(np.rint(x * iscale), -8, 7)
            else:
                rng = hi - lo
                s0 = np.where(rng > 0, rng / np.float32(15.0 + step), 1.0).astype(np.float32)
                zp = np.clip(np.rint(-lo / s0), 0, 15)
                c = np.clip(np.rint(x / s0) + zp, 0, 15) - zp
        # least-squares scale for these codes, rounded to float16
        scc = np.sum(c * c, axis=-1, keepdims=True)
        sxc = np.sum(x * c, axis=-1, keepdims=True)
        d = np.where(scc > 0, sxc / np.maximum(scc, 1e-30), 0.0).astype(np.float16).astype(np.float32)
        d = np.where(np.isfinite(d), d, 0.0).astype(np.float32)
        err = np.sum((x - c * d) ** 2, axis=-1, keepdims=True)
        if best is None:
            best = [err, c, zp, d]
        else:
            better = err < best[0]
            best = [np.where(better, new, old) for new, old in zip((err, c, zp, d), best)]
    _, c, zp, d = best
    codes = (c + zp).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    zp_packed = None
    if not symmetric:
        z = zp[..., 0].astype(np.uint8)  # [N, n_blocks]
        if z.shape[1] % 2:
            z = np.pad(z, ((0, 0), (0, 1)))
        zp_packed = np.ascontiguousarray((z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8))
    return np.ascontiguousarray(packed), np.ascontiguousarray(d[..., 0]), zp_packed


# --------------------------------------------------------------------------------------
# ONNX graph construction
# --------------------------------------------------------------------------------------


class GraphBuilder:
    def __init__(self, external_path: str | None):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.const_cache: dict = {}
        self.names: set[str] = set()
        self.external_path = external_path
        self.external_file = open(external_path, "wb") if external_path else None
        self.external_offset = 0
        self.weight_bytes = 0

    def close(self):
        if self.external_file:
            self.external_file.close()

    def init(self, name: str, arr: np.ndarray) -> str:
        # Not np.ascontiguousarray: it turns 0-d scalars into shape [1], which strict
        # runtimes (tract) reject where ONNX wants a scalar (Range, Gather indices).
        arr = np.require(arr, requirements="C")
        self.weight_bytes += arr.nbytes
        if self.external_file is not None and arr.nbytes >= 1024:
            t = TensorProto()
            t.name = name
            t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
            t.dims.extend(arr.shape)
            pad = (-self.external_offset) % 64
            if pad:
                self.external_file.write(b"\0" * pad)
                self.external_offset += pad
            self.external_file.write(arr.tobytes())
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", os.path.basename(self.external_path)),
                         ("offset", str(self.external_offset)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.external_offset += arr.nbytes
        else:
            t = numpy_helper.from_array(arr, name)
        self.initializers.append(t)
        return name

    def const(self, value, dtype) -> str:
        """A small constant initializer (shared between users)."""
        arr = np.array(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.const_cache:
            name = f"const_{len(self.const_cache)}"
            self.const_cache[key] = self.init(name, arr)
        return self.const_cache[key]

    def node(self, op: str, inputs: list[str], name: str, outputs: list[str] | None = None,
             domain: str | None = None, n_out: int = 1, **attrs) -> str | list[str]:
        assert name not in self.names, name
        self.names.add(name)
        if outputs is None:
            outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


def kv_cache_io(m: GGUFModel, present_len: str, elem=TensorProto.FLOAT):
    """The graph's past_key_values.{i}.key/value inputs and present.{i}.key/value outputs (`elem`,
    float32 by default, [batch_size, kv_heads, length, head_dim]; presents `present_len` long)."""
    past, present = [], []
    for i in range(m.n_layers):
        for kind in ("key", "value"):
            past.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", elem,
                ["batch_size", m.n_kv, "past_sequence_length", m.head_dim]))
            present.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", elem, ["batch_size", m.n_kv, present_len, m.head_dim]))
    return past, present


class LlamaGraph:
    def __init__(self, m: GGUFModel, precision: str, g: GraphBuilder, log, scheme="transcode",
                 int4_lm_head=False):
        self.m, self.precision, self.g, self.log = m, precision, g, log
        self.scheme = scheme
        self.int4_lm_head = int4_lm_head
        self.block_sum_cache: dict[str, str] = {}
        self.stats = collections.Counter()

    # -- helpers ------------------------------------------------------------------------

    def block_sums(self, x: str, k: int) -> str:
        """Sums of x over each block of 32 along its last axis: [B, S, K] -> [B, S, K/32]."""
        if x not in self.block_sum_cache:
            g = self.g
            r = g.node("Reshape", [x, g.const([0, 0, k // BLOCK, BLOCK], np.int64)],
                       f"{x}/block_sums/Reshape")
            self.block_sum_cache[x] = g.node("ReduceSum", [r, g.const([-1], np.int64)],
                                             f"{x}/block_sums/ReduceSum", keepdims=0)
        return self.block_sum_cache[x]

    def matmul_nbits(self, x, packed, scales, zp, n, k, name):
        g = self.g
        ins = [x, g.init(f"{name}.weight_Q4", packed), g.init(f"{name}.weight_scales", scales.reshape(-1))]
        if zp is not None:
            ins.append(g.init(f"{name}.weight_zero_points", zp.reshape(-1)))
        return g.node("MatMulNBits", ins, f"{name}/MatMulNBits", domain="com.microsoft",
                      K=k, N=n, bits=4, block_size=BLOCK)

    def linear(self, x: str, tensor: str | np.ndarray, name: str, n_head: int | None = None) -> str:
        """x @ W.T for the GGUF tensor `tensor` (or a [N, K] array), PyTorch layout [N, K].

        n_head: Q/K projection of that many heads (undo llama.cpp's row permutation)."""
        g, m = self.g, self.m
        if self.precision == "int4" and self.scheme == "transcode" and isinstance(tensor, str):
            blocks = m.q4_blocks(tensor, n_head)
            if blocks is not None:
                codes, d, mins = blocks
                n, nb, _ = codes.shape
                k = nb * BLOCK
                packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
                y = self.matmul_nbits(x, packed, d, None, n, k, name)  # d * (code - 8)
                self.stats["transcoded " + m.tensors[tensor].tensor_type.name] += 1
                if mins is None:  # Q4_0: exactly MatMulNBits' symmetric format
                    return y
                # Q4_1: w = d * (code - 8) + (m + 8 d); the second term is constant per block,
                # so it adds block_sums(x) @ (m + 8 d).T (as a zero point would, but a float one)
                offs = (mins + 8.0 * d).astype(np.float32)  # [N, K/32]
                corr = g.node("MatMul", [self.block_sums(x, k),
                                         g.init(f"{name}.weight_block_offsets_T", np.ascontiguousarray(offs.T))],
                              f"{name}/offsets/MatMul")
                return g.node("Add", [y, corr], f"{name}/offsets/Add")
        if isinstance(tensor, str):
            w = m.qk_weight(tensor, n_head) if n_head is not None else m.weight(tensor)
        else:
            w = tensor
        n, k = w.shape
        if self.precision == "int4":
            packed, scales, zp = quantize_q4(w, symmetric=self.scheme == "sym")
            self.stats["requantized " + ("sym" if self.scheme == "sym" else "asym")] += 1
            return self.matmul_nbits(x, packed, scales, zp, n, k, name)
        wt = g.init(f"{name}.weight_T", np.ascontiguousarray(w.T))
        return g.node("MatMul", [x, wt], f"{name}/MatMul")

    def rms_norm(self, x: str, w: np.ndarray, name: str) -> str:
        g = self.g
        sq = g.node("Pow", [x, g.const(2.0, np.float32)], f"{name}/Pow")
        mean = g.node("ReduceMean", [sq], f"{name}/ReduceMean", axes=[-1], keepdims=1)
        var = g.node("Add", [mean, g.const(self.m.eps, np.float32)], f"{name}/Add")
        std = g.node("Sqrt", [var], f"{name}/Sqrt")
        inv = g.node("Reciprocal", [std], f"{name}/Reciprocal")
        normed = g.node("Mul", [x, inv], f"{name}/Mul")
        return g.node("Mul", [g.init(f"{name}.weight", w.astype(np.float32)), normed], f"{name}/Mul_1")

    def rope(self, x: str, cos: str, sin: str, name: str) -> str:
        """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2])."""
        g = self.g
        half = self.m.head_dim // 2
        axes = g.const([-1], np.int64)
        x1 = g.node("Slice", [x, g.const([0], np.int64), g.const([half], np.int64), axes],
                    f"{name}/Slice")
        x2 = g.node("Slice", [x, g.const([half], np.int64),
                              g.const([self.m.head_dim], np.int64), axes], f"{name}/Slice_1")
        neg = g.node("Neg", [x2], f"{name}/Neg")
        rot = g.node("Concat", [neg, x1], f"{name}/Concat", axis=-1)
        a = g.node("Mul", [x, cos], f"{name}/Mul")
        b = g.node("Mul", [rot, sin], f"{name}/Mul_1")
        return g.node("Add", [a, b], f"{name}/Add")

    def repeat_kv(self, x: str, name: str) -> str:
        """HF repeat_kv: [B, kv, T, d] -> [B, kv * n_rep, T, d]."""
        g, m = self.g, self.m
        n_rep = m.n_heads // m.n_kv
        if n_rep == 1:
            return x
        u = g.node("Unsqueeze", [x, g.const([2], np.int64)], f"{name}/Unsqueeze")
        e = g.node("Expand", [u, g.const([1, 1, n_rep, 1, 1], np.int64)], f"{name}/Expand")
        return g.node("Reshape", [e, g.const([0, m.n_heads, -1, m.head_dim], np.int64)],
                      f"{name}/Reshape")

    def heads(self, x: str, n: int, name: str) -> str:
        """[B, S, n*d] -> [B, n, S, d]."""
        g = self.g
        r = g.node("Reshape", [x, g.const([0, 0, n, self.m.head_dim], np.int64)], f"{name}/Reshape")
        return g.node("Transpose", [r], f"{name}/Transpose", perm=[0, 2, 1, 3])

    def rope_tables(self):
        m = self.m
        d = m.head_dim
        # as HF's LlamaRotaryEmbedding (float32 inv_freq, float32 position * inv_freq)
        inv_freq = (1.0 / (np.float32(m.rope_theta) **
                           (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))).astype(np.float32)
        if "rope_freqs.weight" in m.tensors:  # llama 3.1-style per-frequency factors
            inv_freq = (inv_freq / m.weight("rope_freqs.weight").astype(np.float32)).astype(np.float32)
        if m.rope_scaling_type == "linear" and m.rope_scaling_factor:
            inv_freq = (inv_freq / np.float32(m.rope_scaling_factor)).astype(np.float32)
        pos = np.arange(m.ctx, dtype=np.float32)
        freqs = (pos[:, None] * inv_freq[None, :]).astype(np.float32)
        emb = np.concatenate([freqs, freqs], axis=-1).astype(np.float64)
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    # -- the model ----------------------------------------------------------------------

    def build(self):
        g, m = self.g, self.m
        L, H, kv, d = m.n_layers, m.n_heads, m.n_kv, m.head_dim
        i64, f32 = TensorProto.INT64, TensorProto.FLOAT
        PS = "past_sequence_length + sequence_length"
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", i64, ["batch_size", PS]),
            helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", m.vocab])]
        past, present = kv_cache_io(m, PS)
        inputs += past
        outputs += present

        t0 = time.time()
        emb = m.weight("token_embd.weight")  # [vocab, hidden]
        # int4 output: the embedding rows are stored as float16 and cast after the Gather.
        half = self.precision == "int4"

        if half:
            rows = g.init("model.embed_tokens.weight_fp16", emb.astype(np.float16))
            x = g.node("Gather", [rows, "input_ids"], "/model/embed_tokens/Gather", axis=0)
            x = g.node("Cast", [x], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
        else:
            rows = g.init("model.embed_tokens.weight", emb)
            x = g.node("Gather", [rows, "input_ids"], "/model/embed_tokens/Gather", axis=0)
        # A tied float head gets its own pre-transposed copy ([hidden, vocab]): tract only
        # reaches its fast MatMul path for a constant that nothing else uses.
        float_head = m.tied and not (self.precision == "int4" and self.int4_lm_head)

        # RoPE: cos/sin tables gathered by position_ids -> [B, 1, S, d]
        cos_t, sin_t = self.rope_tables()
        cos = g.node("Gather", [g.init("model.rotary_emb.cos_cached", cos_t), "position_ids"],
                     "/model/rotary_emb/Gather", axis=0)
        sin = g.node("Gather", [g.init("model.rotary_emb.sin_cached", sin_t), "position_ids"],
                     "/model/rotary_emb/Gather_1", axis=0)
        ax1 = g.const([1], np.int64)
        cos = g.node("Unsqueeze", [cos, ax1], "/model/rotary_emb/Unsqueeze")
        sin = g.node("Unsqueeze", [sin, ax1], "/model/rotary_emb/Unsqueeze_1")

        # additive mask [B, 1, S, P+S]: causal over absolute positions, and padding
        mp = "/model/attn_mask"
        q_len = g.node("Gather", [g.node("Shape", ["input_ids"], f"{mp}/Shape"),
                                  g.const(1, np.int64)], f"{mp}/Gather", axis=0)
        kv_len = g.node("Gather", [g.node("Shape", ["attention_mask"], f"{mp}/Shape_1"),
                                   g.const(1, np.int64)], f"{mp}/Gather_1", axis=0)
        past_len = g.node("Sub", [kv_len, q_len], f"{mp}/Sub")
        one = g.const(1, np.int64)
        key_pos = g.node("Range", [g.const(0, np.int64), kv_len, one], f"{mp}/Range")
        query_pos = g.node("Range", [past_len, kv_len, one], f"{mp}/Range_1")
        key_pos = g.node("Unsqueeze", [key_pos, g.const([0], np.int64)], f"{mp}/Unsqueeze")
        query_pos = g.node("Unsqueeze", [query_pos, g.const([1], np.int64)], f"{mp}/Unsqueeze_1")
        future = g.node("Greater", [key_pos, query_pos], f"{mp}/Greater")  # [S, P+S]
        padded = g.node("Equal", ["attention_mask", g.const(0, np.int64)], f"{mp}/Equal")  # [B, P+S]
        padded = g.node("Unsqueeze", [padded, g.const([1, 2], np.int64)], f"{mp}/Unsqueeze_2")
        masked = g.node("Or", [future, padded], f"{mp}/Or")  # [B, 1, S, P+S]
        mask = g.node("Where", [masked, g.const(np.finfo(np.float32).min, np.float32),
                                g.const(0.0, np.float32)], f"{mp}/Where")
        self.log(f"  embeddings, rope tables, mask: {time.time() - t0:.1f}s")

        scale = g.const(1.0 / np.sqrt(d), np.float32)
        for i in range(L):
            t0 = time.time()
            p = f"/model/layers.{i}"
            blk = f"blk.{i}."
            h = self.rms_norm(x, m.weight(blk + "attn_norm.weight"), f"{p}/input_layernorm")
            q = self.linear(h, blk + "attn_q.weight", f"{p}/self_attn/q_proj", n_head=H)
            k = self.linear(h, blk + "attn_k.weight", f"{p}/self_attn/k_proj", n_head=kv)
            v = self.linear(h, blk + "attn_v.weight", f"{p}/self_attn/v_proj")
            q = self.heads(q, H, f"{p}/self_attn/q")
            k = self.heads(k, kv, f"{p}/self_attn/k")
            v = self.heads(v, kv, f"{p}/self_attn/v")
            q = self.rope(q, cos, sin, f"{p}/self_attn/q_rope")
            k = self.rope(k, cos, sin, f"{p}/self_attn/k_rope")
            k = g.node("Concat", [f"past_key_values.{i}.key", k], f"{p}/self_attn/Concat",
                       outputs=[f"present.{i}.key"], axis=2)
            v = g.node("Concat", [f"past_key_values.{i}.value", v], f"{p}/self_attn/Concat_1",
                       outputs=[f"present.{i}.value"], axis=2)
            k = self.repeat_kv(k, f"{p}/self_attn/repeat_kv_k")
            v = self.repeat_kv(v, f"{p}/self_attn/repeat_kv_v")
            kt = g.node("Transpose", [k], f"{p}/self_attn/Transpose", perm=[0, 1, 3, 2])
            s = g.node("MatMul", [q, kt], f"{p}/self_attn/MatMul")
            s = g.node("Mul", [s, scale], f"{p}/self_attn/Mul")
            s = g.node("Add", [s, mask], f"{p}/self_attn/Add")
            a = g.node("Softmax", [s], f"{p}/self_attn/Softmax", axis=-1)
            o = g.node("MatMul", [a, v], f"{p}/self_attn/MatMul_1")
            o = g.node("Transpose", [o], f"{p}/self_attn/Transpose_1", perm=[0, 2, 1, 3])
            o = g.node("Reshape", [o, g.const([0, 0, H * d], np.int64)], f"{p}/self_attn/Reshape")
            o = self.linear(o, blk + "attn_output.weight", f"{p}/self_attn/o_proj")
            x = g.node("Add", [x, o], f"{p}/Add")

            h = self.rms_norm(x, m.weight(blk + "ffn_norm.weight"), f"{p}/post_attention_layernorm")
            gate = self.linear(h, blk + "ffn_gate.weight", f"{p}/mlp/gate_proj")
            up = self.linear(h, blk + "ffn_up.weight", f"{p}/mlp/up_proj")
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{p}/mlp/act_fn/Sigmoid")],
                         f"{p}/mlp/act_fn/Mul")
            act = g.node("Mul", [act, up], f"{p}/mlp/Mul")
            dn = self.linear(act, blk + "ffn_down.weight", f"{p}/mlp/down_proj")
            x = g.node("Add", [x, dn], f"{p}/Add_1")
            if i == 0 or (i + 1) % 10 == 0 or i == L - 1:
                self.log(f"  layer {i + 1}/{L}: {time.time() - t0:.1f}s")

        x = self.rms_norm(x, m.weight("output_norm.weight"), "/model/norm")
        if not m.tied:
            logits = self.linear(x, "output.weight", "/lm_head")
        elif not float_head:
            logits = self.linear(x, "token_embd.weight", "/lm_head")
        else:  # MatMul(x, E^T) on its own pre-transposed copy
            # float32 even in int4 output: tract computes a float16-then-Cast head at every step.
            head = g.init("lm_head.weight_t", np.ascontiguousarray(emb.T))
            logits = g.node("MatMul", [x, head], "/lm_head/MatMul")
        if self.stats:
            self.log("  int4 linear layers: " + ", ".join(f"{v} {k}" for k, v in sorted(self.stats.items())))
        # name the lm_head's output "logits" (the graph output) instead of adding an Identity
        for nd in g.nodes:
            for j, o in enumerate(nd.output):
                if o == logits:
                    nd.output[j] = "logits"

        unused = sorted(set(m.tensors) - m.used - {"rope_freqs.weight"})
        if unused:
            raise ConversionError(f"GGUF tensors this converter does not know how to use: {unused[:8]}"
                                  f"{' ...' if len(unused) > 8 else ''}")

        graph = helper.make_graph(g.nodes, "llama_gguf", inputs, outputs, g.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.precision == "int4":
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="llamad gguf_to_onnx",
                                  producer_version="1")
        model.ir_version = IR_VERSION
        return model


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------

# GGUF token types (llama.cpp llama_token_type)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.ggml.pre -> pre-tokenizer, for the BPE ("gpt2") tokenizers llama-architecture
# models ship. Patterns are those of llama.cpp's llama-vocab.cpp / the models' tokenizer.json.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bpe_pre_tokenizer(pre: str | None):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        # digits split one by one, then GPT-2's byte-level regex split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]), pre
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]), pre
    if pre in (None, "default", "gpt2", "gpt-2"):
        return byte_level, pre or "default"
    raise ConversionError(f"tokenizer.ggml.pre {pre!r} is not supported by this converter "
                          "(supported: default/gpt2, smollm/starcoder/refact, llama-bpe/smaug-bpe)")


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to a SentencePiece BPE vocabulary, ordered as transformers'
    generate_merges orders them: by the merged piece's score, then the longer left part first
    (stable in id order). For Llama 2 this reproduces its tokenizer.json byte for byte."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (TT_NORMAL, TT_USER_DEFINED)}
    merges = []
    for piece, pid in vocab.items():
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                merges.append((scores[pid], a, b))
    merges.sort(key=lambda t: (-t[0], -len(t[1]), -len(t[2])))
    return [(a, b) for _, a, b in merges]


def build_tokenizer(reader: GGUFReader):
    tk_model = field(reader, "tokenizer.ggml.model")
    tokens = list(field(reader, "tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ConversionError("GGUF has no tokenizer.ggml.tokens")
    types = list(field(reader, "tokenizer.ggml.token_type") or [TT_NORMAL] * len(tokens))
    add_bos = field(reader, "tokenizer.ggml.add_bos_token")
    add_eos = bool(field(reader, "tokenizer.ggml.add_eos_token", False))
    bos_id = field(reader, "tokenizer.ggml.bos_token_id")
    eos_id = field(reader, "tokenizer.ggml.eos_token_id")
    unk_id = field(reader, "tokenizer.ggml.unknown_token_id")
    pad_id = field(reader, "tokenizer.ggml.padding_token_id")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConversionError("tokenizer.ggml.tokens has duplicate entries")

    if tk_model == "gpt2":
        merges = [tuple(mg.split(" ", 1)) for mg in field(reader, "tokenizer.ggml.merges") or []]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                   continuing_subword_prefix="", end_of_word_suffix="",
                                   fuse_unk=False, byte_fallback=False))
        pre, pre_name = bpe_pre_tokenizer(field(reader, "tokenizer.ggml.pre"))
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
        if add_bos is None:
            add_bos = False
        post_simple = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
        kind = f"byte-level BPE (pre-tokenizer {pre_name})"
    elif tk_model == "llama":
        scores = list(field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens))
        merges = spm_merges(tokens, scores, types)
        unk = tokens[unk_id] if unk_id is not None else None
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=unk,
                                   fuse_unk=True, byte_fallback=True))
        add_prefix = field(reader, "tokenizer.ggml.add_space_prefix", True)
        norms = [normalizers.Replace(" ", "\u2581")]
        if add_prefix:
            norms.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(norms)
        dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix:
            dec.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(dec)
        if add_bos is None:
            add_bos = True
        post_simple = None
        kind = "SentencePiece BPE (as byte-fallback BPE with merges ranked by score)"
    else:
        raise ConversionError(f"tokenizer.ggml.model {tk_model!r} is not supported (gpt2, llama)")

    # control (and unknown) tokens become special added tokens, user-defined ones plain added
    # tokens, as transformers does
    added = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (TT_CONTROL, TT_UNKNOWN):
            added.append(AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                    single_word=False))
        elif ty == TT_USER_DEFINED:
            added.append(AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False,
                                    single_word=False))
    # already in the vocab, so they keep their ids
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])

    def name_of(i):
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = name_of(bos_id), name_of(eos_id)
    if add_bos or add_eos:
        single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else [])
        pair = single + [s.replace("$A", "$B").replace(":0", ":1") for s in single]
        specials = [(t, vocab[t]) for t in {bos if add_bos else None, eos if add_eos else None} if t]
        tmpl = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                             special_tokens=specials)
        tok.post_processor = (processors.Sequence([post_simple, tmpl]) if post_simple else tmpl)
    elif post_simple is not None:
        tok.post_processor = post_simple

    info = dict(bos=bos, eos=eos, unk=name_of(unk_id), pad=name_of(pad_id), bos_id=bos_id,
                eos_id=eos_id, pad_id=pad_id, add_bos=bool(add_bos), add_eos=add_eos,
                kind=kind, added=[(vocab[a.content], a) for a in added])
    return tok, info


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def write_genai_config(path: str, m: GGUFModel, bos_id, eos_id, pad_id):
    """genai_config.json for the fused graph: what llamad's onnxruntime-genai layout reads (one KV
    buffer shared by past and present), and what onnxruntime-genai itself needs to run the file."""
    decoder = {
        "filename": "model.onnx",
        "session_options": {"log_id": "llamad", "provider_options": []},
        "head_size": m.head_dim, "hidden_size": m.hidden, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv, "num_hidden_layers": m.n_layers,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }
    first_eos = eos_id[0] if isinstance(eos_id, list) else eos_id
    cfg = {
        "model": {"bos_token_id": bos_id, "eos_token_id": eos_id,
                  "pad_token_id": pad_id if pad_id is not None else first_eos,
                  "context_length": m.ctx, "vocab_size": m.vocab, "type": "llama", "decoder": decoder},
        "search": {"past_present_share_buffer": True, "max_length": m.ctx, "do_sample": False,
                   "num_beams": 1, "num_return_sequences": 1, "min_length": 0},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def convert(gguf_path: str, outdir: str, precision: str, log=print, int4_scheme: str = "transcode",
            external_data: str = "auto", int4_lm_head: bool = False, graph: str = "standard",
            kv_cache_type: str = "f16", block_size: int = BLOCK, head_bits: int = 8):
    t_start = time.time()
    m = GGUFModel(gguf_path)
    log(f"{os.path.basename(gguf_path)}: llama, {m.n_layers} layers, hidden {m.hidden}, "
        f"{m.n_heads} heads / {m.n_kv} kv heads, head dim {m.head_dim}, ffn {m.ffn}, "
        f"vocab {m.vocab}, ctx {m.ctx}, rope theta {m.rope_theta}, eps {m.eps}, "
        f"tied embeddings {m.tied}")
    types = {}
    for t in m.reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    log(f"tensor types: {types}")

    tok, tinfo = build_tokenizer(m.reader)  # fail early on an unsupported tokenizer
    os.makedirs(outdir, exist_ok=True)

    # estimate weight bytes to decide on external data
    n_lin = sum(int(np.prod(t.shape)) for n, t in m.tensors.items() if t.name.endswith(".weight")
                and len(t.shape) == 2 and n != "token_embd.weight")
    n_emb = m.vocab * m.hidden
    if precision == "int4":
        est = n_lin * 0.5 * 1.25 + n_emb * 2 + (n_emb * (0.625 if int4_lm_head else 4) if m.tied else 0)
    else:
        est = n_lin * 4 + n_emb * 4 * (2 if m.tied else 1)
    est += 2 * m.ctx * m.head_dim * 4
    model_path = os.path.join(outdir, "model.onnx")
    data_path = os.path.join(outdir, "model.onnx.data")
    # The fused graph keeps its weights beside the graph by default: ONNX Runtime then maps the
    # file instead of holding a decoded copy of it while it prepacks (TinyLlama-1.1B: a load
    # peak of 1024 MiB against 1425 MiB with the weights inside model.onnx).
    if external_data == "auto":
        external = graph == "fused" or est > EXTERNAL_DATA_THRESHOLD
    else:
        external = external_data == "always"
    for pth in (model_path, data_path):
        if os.path.exists(pth):
            os.remove(pth)
    if graph == "fused" and precision != "int4":
        raise ConversionError("--graph fused writes int4 MatMulNBits: use it with --precision int4")
    if graph != "fused" and (block_size != BLOCK or head_bits != 8):
        raise ConversionError("--block-size and --head-bits are options of the fused graph (--graph fused)")
    if block_size not in (16, 32, 64, 128, 256):
        raise ConversionError(f"--block-size {block_size}: a power of two from 16 to 256 (rows whose length it "
                              f"does not divide are padded)")
    g = GraphBuilder(data_path if external else None)
    try:
        if graph == "fused":
            from ort_graph import FusedLlamaGraph
            model = FusedLlamaGraph(m, g, log, quantize_q4, q4_scheme=int4_scheme, kv_cache_type=kv_cache_type,
                                    block_size=block_size, head_bits=head_bits).build()
            model.ir_version = IR_VERSION
        else:
            model = LlamaGraph(m, precision, g, log, scheme=int4_scheme, int4_lm_head=int4_lm_head).build()
    finally:
        g.close()
    log(f"graph: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers, "
        f"{g.weight_bytes / 1e6:.1f} MB of weights{' (external data)' if external else ''}")
    onnx.save_model(model, model_path)
    try:
        # The fused graph uses ONNX Runtime's SimplifiedLayerNormalization, which it registers in
        # the ONNX domain although ONNX has no such operator: the checker cannot know it.
        if graph != "fused":
            onnx.checker.check_model(model_path if external else model)
    except Exception as e:
        raise ConversionError(f"onnx checker rejected the graph: {e}") from e

    bos_id = tinfo["bos_id"]
    eos_id = tinfo["eos_id"]
    pad_id = tinfo["pad_id"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": m.hidden,
        "intermediate_size": m.ffn,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv,
        "head_dim": m.head_dim,
        "vocab_size": m.vocab,
        "max_position_embeddings": m.ctx,
        "rms_norm_eps": m.eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": ({"rope_type": "linear", "factor": f32_value(m.rope_scaling_factor)}
                         if m.rope_scaling_type == "linear" and m.rope_scaling_factor else None),
        # transformers 5 spelling of the same
        "rope_parameters": ({"rope_type": "linear", "factor": f32_value(m.rope_scaling_factor),
                             "rope_theta": m.rope_theta}
                            if m.rope_scaling_type == "linear" and m.rope_scaling_factor
                            else {"rope_type": "default", "rope_theta": m.rope_theta}),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "tie_word_embeddings": m.tied,
        "torch_dtype": "float32",
        "gguf_source": {
            "file": os.path.basename(gguf_path),
            "name": field(m.reader, "general.name"),
            "license": field(m.reader, "general.license"),
            "tensor_types": types,
            "onnx_precision": precision,
            **({"int4": {"op": "com.microsoft.MatMulNBits", "bits": 4, "block_size": BLOCK,
                         "scheme": INT4_SCHEMES[int4_scheme],
                         "embedding": "float16 rows, cast to float32 after the Gather",
                         "lm_head": "int4" if int4_lm_head or not m.tied else "float32"}}
               if precision == "int4" else {}),
            "converter": "llamad models/gguf_to_onnx.py",
        },
    }
    if "rope_freqs.weight" in m.tensors:
        config["gguf_source"]["rope_freqs"] = "applied from rope_freqs.weight (baked into the ONNX cos/sin tables)"
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}
    if pad_id is not None:
        gen["pad_token_id"] = pad_id
    eot = field(m.reader, "tokenizer.ggml.eot_token_id")
    if eot is not None and eot != eos_id:
        gen["eos_token_id"] = [eos_id, eot]

    if graph == "fused":
        config["gguf_source"]["graph"] = ("fused for ONNX Runtime (models/ort_graph.py): packed QKV MatMulNBits "
                                          "accuracy_level 4, GroupQueryAttention with rotary and a shared KV "
                                          "buffer, SkipSimplifiedLayerNormalization, 8-bit head, last-position "
                                          "logits")
        config["gguf_source"]["kv_cache"] = "float16" if kv_cache_type == "f16" else "float32"
        config["gguf_source"]["int4"]["block_size"] = block_size
        config["gguf_source"]["int4"]["lm_head"] = f"{head_bits} bits"
        write_genai_config(os.path.join(outdir, "genai_config.json"), m, bos_id, gen["eos_token_id"], pad_id)
    tok.save(os.path.join(outdir, "tokenizer.json"))
    chat_template = field(m.reader, "tokenizer.chat_template")
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tinfo["add_bos"],
        "add_eos_token": tinfo["add_eos"],
        "bos_token": tinfo["bos"],
        "eos_token": tinfo["eos"],
        "unk_token": tinfo["unk"],
        "pad_token": tinfo["pad"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": m.ctx,
        "added_tokens_decoder": {
            str(i): {"content": a.content, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": a.special} for i, a in tinfo["added"]},
    }
    if chat_template:
        tcfg["chat_template"] = chat_template
        with open(os.path.join(outdir, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(chat_template)
    for fname, obj in (("config.json", config), ("generation_config.json", gen),
                       ("tokenizer_config.json", tcfg)):
        with open(os.path.join(outdir, fname), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
    log(f"tokenizer: {tinfo['kind']}, {len(tinfo['added'])} added tokens, add_bos_token "
        f"{tinfo['add_bos']}, bos {tinfo['bos']!r} eos {tinfo['eos']!r}")
    size = sum(os.path.getsize(os.path.join(outdir, f)) for f in os.listdir(outdir))
    log(f"wrote {outdir} ({size / 1e6:.1f} MB) in {time.time() - t_start:.1f}s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", help="input .gguf file (general.architecture = llama)")
    ap.add_argument("outdir", help="output model directory (created; existing files replaced)")
    ap.add_argument("--precision", choices=["fp32", "int4"], default="fp32",
                    help="fp32: standard ONNX ops only; int4: linear layers as com.microsoft "
                         "MatMulNBits (4 bits, block 32)")
    ap.add_argument("--int4-scheme", choices=list(INT4_SCHEMES), default="transcode",
                    help="int4 only: " + "; ".join(f"{k}: {v}" for k, v in INT4_SCHEMES.items()))
    ap.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                    help="weights in model.onnx.data: auto (default) for the fused graph and when "
                         "they exceed ~1.9 GB (protobuf's 2 GB limit), always, or never")
    ap.add_argument("--int4-lm-head", action="store_true",
                    help="int4 only, tied embeddings: quantize the output projection too (smaller "
                         "and faster, but on small models such as SmolLM2-135M it costs most of "
                         "int4's accuracy; by default the head reuses the float embedding, at no "
                         "extra size)")
    ap.add_argument("--graph", choices=["standard", "fused"], default="standard",
                    help="standard (default): standard ONNX operators, runs on tract and ONNX Runtime; "
                         "fused (int4 only): ONNX Runtime's fused CPU operators (models/ort_graph.py), the "
                         "fast graph for the onnxruntime backend, not loadable by tract")
    ap.add_argument("--kv-cache-type", choices=["f16", "f32"], default="f16",
                    help="fused graph only: the KV cache's element type, f16 (default: half the memory, "
                         "no measurable accuracy cost, docs/quality.md) or f32")
    ap.add_argument("--block-size", type=int, default=BLOCK,
                    help="fused graph only: MatMulNBits' block along K (default 32: Q4_0 and Q4_1 tensors are "
                         "carried over as they are; 64 or 128 requantize every linear layer, 4.5 or 4.25 bits "
                         "a weight with float32 scales, docs/quality.md)")
    ap.add_argument("--head-bits", type=int, choices=[4, 8], default=8,
                    help="fused graph only: the output head's bits (default 8; with tied embeddings the "
                         "embedding rows are read from the same table)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.gguf):
        sys.exit(f"error: {args.gguf}: no such file")
    try:
        convert(args.gguf, args.outdir, args.precision, int4_scheme=args.int4_scheme,
                external_data=args.external_data, int4_lm_head=args.int4_lm_head, graph=args.graph,
                kv_cache_type=args.kv_cache_type, block_size=args.block_size, head_bits=args.head_bits)
    except ConversionError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

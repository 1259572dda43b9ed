#!/usr/bin/env python3
"""ONNX Runtime's MatMulNBits kernels alone: how fast each variant the converter could write
runs a decode step (M = 1, weight streaming) and a prompt chunk (M = 128, compute), on the
ONNX Runtime the daemon ships.

A chain of `--layers` square MatMulNBits nodes (`--dim` × `--dim`, random 4-bit codes) big
enough not to fit the caches, so that M = 1 reads every weight from memory as a decode step
does. Each variant (block size, accuracy level, zero points) is timed in interleaved rounds
and reported as ms a pass, GB/s of packed weights and the ratio to the first variant measured
in the same round. Run with the peers' venv:

  models/work/peers/venv/bin/python models/bench_matmulnbits.py --threads 2 --rounds 5
"""
import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def graph(dim: int, layers: int, block: int, accuracy: int, zero_points: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_blocks = dim // block
    nodes, inits = [], []
    prev = "x"
    scale = 1.0 / (4.6 * np.sqrt(dim))
    for i in range(layers):
        codes = rng.integers(0, 256, size=(dim, n_blocks, block // 2), dtype=np.uint8)
        scales = (rng.uniform(0.5, 1.5, size=(dim, n_blocks)) * scale).astype(np.float32)
        inputs = [prev, f"w{i}", f"s{i}"]
        inits += [numpy_helper.from_array(codes, f"w{i}"), numpy_helper.from_array(scales, f"s{i}")]
        if zero_points:
            zp = np.full((dim, (n_blocks + 1) // 2), 0x88, dtype=np.uint8)
            inits.append(numpy_helper.from_array(zp, f"z{i}"))
            inputs.append(f"z{i}")
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMulNBits", inputs, [out], domain="com.microsoft", K=dim, N=dim, bits=4,
                                      block_size=block, accuracy_level=accuracy))
        prev = out
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", dim])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", dim])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 9
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=24, help="24 × 4096² = 384 M weights, 192 MiB of codes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="32:4:z,32:1:z,64:4:z,64:1:z,128:4:z,128:1:z,32:4:-",
                    help="BLOCK:ACCURACY_LEVEL:z|- (z: with zero points), comma-separated; the first is "
                         "the baseline")
    args = ap.parse_args()
    variants = []
    for v in args.variants.split(","):
        b, a, z = v.split(":")
        variants.append((int(b), int(a), z == "z"))
    sessions = {}
    for v in variants:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = graph(args.dim, args.layers, *v)
        sessions[v] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    weights = args.dim * args.dim * args.layers
    results = {(v, m): [] for v in variants for m in (1, 128)}
    rng = np.random.default_rng(1)
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for m, reps in ((1, 20), (128, 2)):
            x = rng.standard_normal((m, args.dim)).astype(np.float32)
            for v in order:
                s = sessions[v]
                s.run(None, {"x": x})
                t = time.perf_counter()
                for _ in range(reps):
                    s.run(None, {"x": x})
                results[(v, m)].append((time.perf_counter() - t) / reps)
    base = variants[0]
    print(f"{args.layers} × {args.dim}×{args.dim} MatMulNBits, {args.threads} threads, {args.rounds} rounds "
          f"(onnxruntime {ort.__version__}); ms a pass (median), ratio to {base} per round")
    print("| block | accuracy_level | zero points | bits/weight (codes + scales + zp) | M=1 ms | M=1 GB/s "
          "| M=1 speed vs baseline (per round) | M=128 ms | M=128 speed vs baseline (per round) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        block, acc, zp = v
        bits = 4 + 32 / block + (4 / block if zp else 0)
        row = []
        for m in (1, 128):
            t = results[(v, m)]
            ratios = [b / x for b, x in zip(results[(base, m)], t)]
            row.append((statistics.median(t) * 1e3, " ".join(f"{q:.2f}" for q in ratios)))
        gbs = weights * bits / 8 / (statistics.median(results[(v, 1)])) / 1e9
        print(f"| {block} | {acc} | {'yes' if zp else 'no'} | {bits:.2f} | {row[0][0]:.2f} | {gbs:.1f} | {row[0][1]} "
              f"| {row[1][0]:.1f} | {row[1][1]} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Dynamic int8 quantization of an Optimum ONNX export (weights QInt8,
activations quantized at run time), with onnxruntime's default options.

    python models/quantize_int8.py <fp32 dir> <int8 dir> [--external-data]

Quantizes <fp32 dir>/model.onnx into <int8 dir>/model.onnx and copies the
JSON side files (config.json, generation_config.json, tokenizer files if any).
--external-data stores the weights in <int8 dir>/model.onnx.data instead of
inside model.onnx: required when the result exceeds protobuf's 2 GB limit
(e.g. a 7B model); the small test fixtures do not use it.
"""
import argparse
import shutil
from pathlib import Path

import onnxruntime
from onnxruntime.quantization import QuantType, quantize_dynamic

SIDE_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--external-data", action="store_true")
    args = ap.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        args.src / "model.onnx",
        args.dst / "model.onnx",
        weight_type=QuantType.QInt8,
        use_external_data_format=args.external_data,
    )
    for name in SIDE_FILES:
        if (args.src / name).exists():
            shutil.copyfile(args.src / name, args.dst / name)
    print(f"onnxruntime {onnxruntime.__version__}: quantized {args.src / 'model.onnx'} -> {args.dst / 'model.onnx'}")


if __name__ == "__main__":
    main()

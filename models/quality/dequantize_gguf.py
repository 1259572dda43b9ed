#!/usr/bin/env python3
"""Writes a copy of a GGUF file with every tensor dequantized to F32 (metadata unchanged).

    python models/quality/dequantize_gguf.py IN.gguf OUT.gguf

The float reference of a model that is only distributed quantized (SmolLM2-135M-Instruct's
demo GGUF is Q4_1): its F32 dequantization is the model whose quality every candidate is
measured against, and the source llama.cpp's `llama-quantize` and llamad's converter both
quantize from (models/quality/run.sh). The file-type field says F32 (llama.cpp reads it to
name the model's type).
"""
import sys

import gguf
import numpy as np


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1:]
    r = gguf.GGUFReader(src)
    arch = r.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(dst, arch)
    for field in r.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        w.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF shapes are innermost-first; numpy's outermost-first
        w.add_tensor(t.name, x.reshape(tuple(int(d) for d in reversed(t.shape))), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()

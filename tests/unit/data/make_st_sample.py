"""Regenerates sample.safetensors and sample.json, the reference file that
tests/unit/test_safetensors.c reads to check lensd against the Python
`safetensors` package.

sample.safetensors is written by safetensors.torch.save_file; sample.json
holds, for every tensor, the dtype, shape and values (row-major, as Python
numbers: floats are the exact values stored, widened to float64) that the
C test compares against, and the metadata.

Usage: python tests/unit/data/make_st_sample.py  (needs torch, safetensors)
"""
import json
import pathlib

import torch
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def main():
    tensors = {
        "f32.matrix": torch.tensor([[0.5, -1.25, 3.0e-3], [1.0e10, -0.0, 7.0]], dtype=torch.float32),
        # 65504 is the largest half, 6e-8 rounds to the subnormal 2^-24.
        "f16.vec": torch.tensor([1.0, -2.5, 65504.0, 6.0e-8, 0.1], dtype=torch.float16),
        # 1e-40 is a bfloat16 subnormal.
        "bf16.vec": torch.tensor([1.0, -3.140625, 1.0e30, 1.0e-40], dtype=torch.bfloat16),
        "f64.vec": torch.tensor([0.1, -2.0 / 3.0, 1.0e-3], dtype=torch.float64),
        "i64.vec": torch.tensor([-(2**40), 0, 2**62], dtype=torch.int64),
        "i32.matrix": torch.tensor([[-7, 8], [2**31 - 1, -(2**31)]], dtype=torch.int32),
        "i16.vec": torch.tensor([-32768, 1, 32767], dtype=torch.int16),
        "i8.vec": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
        "u8.vec": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool.vec": torch.tensor([True, False, False, True]),
        "scalar": torch.tensor(42.5, dtype=torch.float32),
        "empty": torch.zeros((0, 4), dtype=torch.float32),
    }
    metadata = {"format": "pt", "made_by": "make_st_sample.py"}
    save_file(tensors, str(HERE / "sample.safetensors"), metadata=metadata)

    expected = {"metadata": metadata, "tensors": {}}
    for name, t in tensors.items():
        flat = t.reshape(-1)
        if t.is_floating_point():
            values = flat.double().tolist()
        else:
            values = flat.long().tolist()
        expected["tensors"][name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "values": values,
        }
    (HERE / "sample.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()

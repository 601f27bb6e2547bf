"""Quantized tensor kernels: GGUF block formats, dequantization, and the
fused products llama.cpp's CPU backend runs (activations quantized first).

The kernels are imported on first use: a command that needs only the type table (quantize, the
GGUF reader) does not pay for defining the product kernels.
"""

from importlib import import_module

from .types import (
    ACTIVATION_TYPES,
    BF16,
    F16,
    F32,
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    Q8_1,
    Q8_K,
    QUANT_TYPES,
    QuantType,
    UnsupportedQuantType,
    quant_type,
    row_bytes,
    type_name,
)

_LAZY = {
    "quantize_activations": "activations", "dequantize": "dequant", "dequantize_rows": "dequant",
    "get_rows": "dequant", "linear": "products", "matmul": "products", "matvec": "products",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATION_TYPES",
    "BF16",
    "F16",
    "F32",
    "Q2_K",
    "Q3_K",
    "Q4_0",
    "Q4_1",
    "Q4_K",
    "Q5_0",
    "Q5_1",
    "Q5_K",
    "Q6_K",
    "Q8_0",
    "Q8_1",
    "Q8_K",
    "QUANT_TYPES",
    "QuantType",
    "UnsupportedQuantType",
    "dequantize",
    "dequantize_rows",
    "get_rows",
    "linear",
    "matmul",
    "matvec",
    "quant_type",
    "quantize_activations",
    "row_bytes",
    "type_name",
]

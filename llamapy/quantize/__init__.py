"""Quantizers: llama.cpp's per-type quantizers (numba), llama-quantize's mixes, imatrix weighting.

    from llamapy.quantize import quantize, quantize_model
    packed = quantize(x_f32, Q4_K, importance=None)          # rows -> ggml blocks
    quantize_model("in.gguf", "out.gguf", "Q4_K_M", allow_requantize=True)

Imported lazily: `llamapy quantize --help` needs the type table (mixes.py), not the kernels.
"""

_EXPORTS = {
    "quantize": "tensors", "convert": "tensors", "quantize_model": "model", "default_output": "model",
    "FILE_TYPES": "mixes", "file_type_named": "mixes", "Options": "mixes",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)

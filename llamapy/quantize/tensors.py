"""Quantize float32 matrices, or convert packed tensors from one ggml type to another."""

from __future__ import annotations

import numba
import numpy as np

from ..quants._inputs import packed_rows, read_only
from ..quants.dequant import dequantize
from ..quants.types import F32, UnsupportedQuantType, quant_type, row_bytes
from ._kernels import rows_converter, rows_quantizer

_NO_WEIGHTS = read_only(np.zeros(0, np.float32))


def quantize(x: np.ndarray, type_id: int, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 rows [n, k] -> uint8 [n, row_bytes] of `type_id`, bytes as llama-quantize writes.

    `importance` (k values, an imatrix row) switches the types that have one to llama.cpp's
    weighted search; without it they use llama.cpp's reference quantizers.
    """
    _check_quantizable(type_id)
    rows = np.ascontiguousarray(x, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    n_cols = rows.shape[1]
    out = np.empty((rows.shape[0], row_bytes(type_id, n_cols)), np.uint8)
    rows_quantizer(int(type_id))(read_only(rows), _weights(importance, n_cols), out)
    return out


def _check_quantizable(type_id: int) -> None:
    qt = quant_type(type_id)
    if not qt.quantizable:
        raise UnsupportedQuantType(f"llamapy cannot quantize to {qt.name}")


def _weights(importance, n_cols: int) -> np.ndarray:
    if importance is None:
        return _NO_WEIGHTS
    qw = read_only(np.ascontiguousarray(importance, dtype=np.float32).reshape(-1))
    if qw.shape[0] != n_cols:
        raise ValueError(f"importance has {qw.shape[0]} values, rows have {n_cols}")
    return qw


def to_float(raw: np.ndarray, type_id: int, n_cols: int) -> np.ndarray:
    """Packed rows as float32 [rows, n_cols], decoded as ggml's dequantize_row_* does."""
    if int(type_id) == F32:
        return np.ascontiguousarray(raw).view(np.float32).reshape(-1, n_cols)
    return dequantize(packed_rows(raw, type_id, n_cols), type_id, n_cols)


def convert(raw: np.ndarray, src_type: int, dst_type: int, n_cols: int, importance=None) -> np.ndarray:
    """Packed rows of `src_type` re-encoded as `dst_type` (via float32, as llama-quantize)."""
    _check_quantizable(dst_type)
    rows = packed_rows(raw, src_type, n_cols)
    out = np.empty((rows.shape[0], row_bytes(dst_type, n_cols)), np.uint8)
    # Hand the 16-row tasks out one at a time rather than in one half per thread: on a shared
    # machine a thread that loses its core then delays only its current task, not half the tensor.
    with numba.parallel_chunksize(1):
        rows_converter(int(src_type), int(dst_type))(rows, _weights(importance, n_cols), out, n_cols)
    return out

"""Dequantization of packed GGUF rows to float32."""

from __future__ import annotations

import numpy as np

from ._inputs import packed_rows, row_ids
from ._kernels import decode_rows


def dequantize_rows(
    raw: np.ndarray, type_id: int, n_cols: int, start: int, stop: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows [start, stop) of `raw` (uint8 [rows, row_bytes]) as float32
    [stop - start, n_cols], written into `out` when given (e.g. a reused tile)."""
    rows = packed_rows(raw, type_id, n_cols)
    ids = row_ids(np.arange(start, stop), rows.shape[0])
    return _decode(rows, type_id, n_cols, ids, out)


def dequantize(raw: np.ndarray, type_id: int, n_cols: int) -> np.ndarray:
    """The whole tensor as float32 [rows, n_cols]; mind the size on big ones."""
    rows = packed_rows(raw, type_id, n_cols)
    return _decode(rows, type_id, n_cols, row_ids(np.arange(rows.shape[0]), rows.shape[0]), None)


def get_rows(raw: np.ndarray, type_id: int, n_cols: int, ids) -> np.ndarray:
    """Embedding lookup: float32 [len(ids), n_cols], decoding only those rows.
    No activation quantization is involved (ggml's get_rows neither)."""
    rows = packed_rows(raw, type_id, n_cols)
    return _decode(rows, type_id, n_cols, row_ids(ids, rows.shape[0]), None)


def _decode(rows, type_id, n_cols, ids, out):
    if out is None:
        out = np.empty((ids.shape[0], n_cols), np.float32)
    elif out.shape != (ids.shape[0], n_cols) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {(ids.shape[0], n_cols)}")
    decode_rows(rows, int(type_id), ids, out)
    return out

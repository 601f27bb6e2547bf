"""Argument normalisation shared by the public wrappers.

Every kernel sees one array type per argument (C-contiguous; read-only for
every input, writable only for outputs), so numba compiles each kernel once
whether the data comes from a read-only GGUF mmap or a writable buffer.
"""

from __future__ import annotations

import numpy as np

from .types import row_bytes


def packed_rows(raw: np.ndarray, type_id: int, n_cols: int) -> np.ndarray:
    """`raw` as a read-only uint8 [rows, row_bytes] view (copies only if the
    input is not contiguous)."""
    width = row_bytes(type_id, n_cols)
    arr = np.asarray(raw)
    if arr.dtype != np.uint8:
        raise TypeError(f"packed tensor data must be uint8, got {arr.dtype}")
    if arr.ndim == 1 and arr.size % width:
        raise ValueError(f"{arr.size} bytes is not a whole number of {width}-byte rows")
    if arr.ndim == 1 or (arr.ndim > 2 and arr.shape[-1] == width):
        arr = arr.reshape(-1, width)  # flat bytes, or a stack of matrices
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"expected rows of {width} bytes for {n_cols} columns, got shape {arr.shape}")
    return read_only(np.ascontiguousarray(arr))


def read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def float_rows(x: np.ndarray, n_cols: int | None = None) -> np.ndarray:
    """`x` as a read-only C-contiguous float32 [n, k] array (a view when possible)."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"expected a vector or a matrix of activations, got shape {arr.shape}")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise ValueError(f"activations have {arr.shape[1]} columns, the weights {n_cols}")
    return read_only(arr)


def row_ids(ids, n_rows: int) -> np.ndarray:
    arr = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n_rows):
        raise IndexError(f"row ids must lie in [0, {n_rows})")
    return read_only(arr)

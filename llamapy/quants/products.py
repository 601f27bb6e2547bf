"""Products of packed weights W [rows, k] with activations: y = x @ W.T.

Both run one numba kernel: each task decodes a few rows into an L1/L2
scratch and dots them with every token, so the packed bytes are streamed once
(`matvec`, one token, memory-bound) and each decoded row is reused across the
batch (`matmul`, prompt tokens); no big matrix is ever materialised.  Both
expect activations already fake-quantized (see activations.py); `linear`
does that.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from ..numerics import EXACT, Numerics
from ._exact import quantize_q8, quantize_q8_k
from ._inputs import float_rows, packed_rows, read_only
from ._int8 import dot_q32_int8, lane_sums, matvec_q4_k_int8, matvec_q6_k_int8, matvec_q32_int8
from ._int8_k import dot_q4_k_int8, dot_q6_k_int8
from ._int8_multi import MAX_TOKENS, dot_q32_few
from ._kernels import block_mins, decode_rows, product_kernel
from .activations import quantize_activations
from .types import Q4_K, Q6_K, quant_type

# Tile of decoded rows for the BLAS variant: ~1 MiB of float32 stays in L2
# while BLAS sweeps the batch over it (measured flat from 0.5 to 2 MiB).
_TILE_BYTES = 1 << 20


def _uses_correction(type_id: int) -> bool:
    return quant_type(type_id).min_correction


def matvec(
    w_raw: np.ndarray,
    type_id: int,
    x_fq: np.ndarray,
    out: np.ndarray | None = None,
    corr: np.ndarray | None = None,
) -> np.ndarray:
    """out[r] = sum_j W[r, j] * x_fq[j] for packed W; float32 [rows].

    `corr` is the Q8_1 correction from quantize_activations (Q4_1/Q5_1 only).
    """
    x = float_rows(x_fq)
    if x.shape[0] != 1:
        raise ValueError("matvec takes one activation vector; use matmul for a batch")
    rows = packed_rows(w_raw, type_id, x.shape[1])
    if out is None:
        out = np.empty(rows.shape[0], np.float32)
    elif out.shape != (rows.shape[0],) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be contiguous float32 of shape ({rows.shape[0]},)")
    product_kernel(rows, int(type_id), x, _correction(corr, type_id, 1, x.shape[1]), out.reshape(1, -1))
    return out


def matmul(
    w_raw: np.ndarray,
    type_id: int,
    x_fq: np.ndarray,
    corr: np.ndarray | None = None,
    *,
    use_blas: bool = False,
    tile_rows: int | None = None,
) -> np.ndarray:
    """x_fq [n, k] @ W.T -> float32 [n, rows]; W is never materialised.

    Default: the numba kernel decodes 16 rows at a time and sweeps the batch
    over them.  `use_blas=True` decodes tiles of `tile_rows` rows and hands
    them to numpy's BLAS: more GFLOP/s on its own where OpenBLAS has AVX-512
    kernels, but see _blas_product for what it costs the kernels that run
    after it.  `corr` as in matvec, shape [n, k/32].
    """
    x = float_rows(x_fq)
    n, k = x.shape
    rows = packed_rows(w_raw, type_id, k)
    c = _correction(corr, type_id, n, k)
    out = np.empty((n, rows.shape[0]), np.float32)
    if n == 0:
        return out
    if use_blas:
        _blas_product(rows, int(type_id), x, c, out, tile_rows or max(16, _TILE_BYTES // (4 * k)))
    else:
        product_kernel(rows, int(type_id), x, c, out)
    return out


def _blas_product(rows, type_id, x, corr, out, tile_rows):
    """Tiles decoded by numba, multiplied by BLAS.

    The decode runs on one numba thread on purpose: numba's and OpenBLAS's
    worker threads each spin-wait after their parallel regions, and taking
    turns on 2 cores measured 5-100x slower than either alone.  BLAS then
    owns the cores.  Its threads keep spinning after it returns, which made a
    numba mat-vec issued right after 3-7x slower; OPENBLAS_NUM_THREADS=1
    (set before numpy is imported) avoids that.
    """
    tile = np.empty((min(tile_rows, rows.shape[0]), x.shape[1]), np.float32)
    threads = numba.get_num_threads()
    for start in range(0, rows.shape[0], tile_rows):
        ids = read_only(np.arange(start, min(start + tile_rows, rows.shape[0]), dtype=np.int64))
        part = tile[: ids.shape[0]]
        numba.set_num_threads(1)
        try:
            decode_rows(rows, type_id, ids, part)
        finally:
            numba.set_num_threads(threads)
        block = out[:, start : start + ids.shape[0]]
        np.matmul(x, part.T, out=block)
        if corr.shape[1]:
            mins = np.empty((ids.shape[0], corr.shape[1]), np.float32)
            block_mins(rows, type_id, ids, mins)
            block += corr @ mins.T


def _correction(corr, type_id, n, k) -> np.ndarray:
    if corr is None or not _uses_correction(type_id):
        return float_rows(np.zeros((n, 0), np.float32))
    c = float_rows(corr)
    if c.shape != (n, k // 32):
        raise ValueError(f"corr must have shape {(n, k // 32)}, got {np.shape(corr)}")
    return c


def linear(w_raw: np.ndarray, type_id: int, x: np.ndarray, *, impl: str = "avx2") -> np.ndarray:
    """x @ W.T the way llama.cpp computes it: activations quantized to the
    weight type's vec_dot_type first.  x is [k] or [n, k]; the result is
    float32 [rows] or [n, rows].

    The formats of the shipped models take the bit-exact path of _exact.py;
    the others the fake-quantized product above, equal to float rounding.
    """
    qt = quant_type(type_id)
    x2 = float_rows(x)
    if impl == "avx2" and is_exact(type_id):
        rows = packed_rows(w_raw, type_id, x2.shape[1])
        y = exact_product(rows, int(type_id), quantize_for(type_id, x2))
    else:
        xq, corr = quantize_activations(x2, qt.vec_dot_type, impl=impl, return_correction=True)
        y = matvec(w_raw, type_id, xq[0], corr=corr) if x2.shape[0] == 1 else matmul(w_raw, type_id, xq, corr)
    return y.reshape(*np.shape(x)[:-1], -1)


# llama.cpp sends non-repacked K-quant products of 8 or more tokens through its tiled kernel,
# whose per-superblock arithmetic differs from the one-token dot product (the registry's
# `tiled_min_batch`; Q6_K's value, kept here for callers that name it).
TILED_MIN_BATCH = quant_type(Q6_K).tiled_min_batch


def is_exact(type_id: int) -> bool:
    """Whether llama.cpp's own arithmetic is reproduced bit for bit for this weight type."""
    return quant_type(type_id).exact is not None


class Q32Kernels(NamedTuple):
    """A 32-quant type's products (out, then the activations' bytes, d, Q8_1 sums, lane sums)."""

    one: object  # one token: matvec_q32_int8
    few: object  # up to MAX_TOKENS tokens, rows streamed: dot_q32_few
    batch: object  # a prompt: dot_q32_int8


@functools.cache
def q32_kernels(type_id: int) -> Q32Kernels:
    """The entry points of one 32-quant type. Closures over the type, so numba compiles the kernels
    of the types a model holds (not all five), each with its type a constant."""

    @njit(cache=True)
    def one(raw, xb, xd, xs, xsum, out):
        return matvec_q32_int8(raw, type_id, xb, xd, xs, xsum, out)

    @njit(cache=True)
    def few(raw, xb, xd, xs, xsum, out):
        return dot_q32_few(raw, type_id, xb, xd, xs, xsum, out)

    @njit(cache=True)
    def batch(raw, xb, xd, xs, xsum, out):
        return dot_q32_int8(raw, type_id, xb, xd, xs, xsum, out)

    return Q32Kernels(one, few, batch)


class QuantizedActivations(NamedTuple):
    """Activations as llama.cpp's 8-bit blocks: integer quants, scales, and the extra sums (Q8_1's
    d·Σq per 32, or Q8_K's Σq per 16). One set serves every weight of its family."""

    super_blocks: bool  # Q8_K (for K-quants) rather than Q8_0/Q8_1
    q: np.ndarray  # the int8 quants [n, k]
    d: np.ndarray
    extra: np.ndarray  # float32: Q8_1's d·Σq per 32, or Q8_K's Σq per 16
    # The quants as bytes [n, k] (a uint8 view of q: the byte dot products' input), and for
    # Q8_0/Q8_1 their lane sums [n, k/4].
    q8: np.ndarray | None = None
    lane_sums: np.ndarray | None = None


def quantize_for(type_id: int, x: np.ndarray) -> QuantizedActivations:
    """Quantize float32 activations [n, k] (C-contiguous) for products with `type_id` weights."""
    n, k = x.shape
    if quant_type(type_id).exact == "k":
        q = np.empty((n, k), np.int8)
        d, extra = np.empty((n, k // 256), np.float32), np.empty((n, k // 16), np.float32)
        quantize_q8_k(x, q, d, extra)
        return QuantizedActivations(True, q, d, extra, q.view(np.uint8))
    q = np.empty((n, k), np.int8)
    d, extra = np.empty((n, k // 32), np.float32), np.empty((n, k // 32), np.float32)
    quantize_q8(x, q, d, extra)
    q8 = q.view(np.uint8)
    return QuantizedActivations(False, q, d, extra, q8, lane_sums(q8))


def exact_product(rows: np.ndarray, type_id: int, act: QuantizedActivations,
                  batch_rows: tuple[np.ndarray, np.ndarray] | None = None, numerics: Numerics = EXACT) -> np.ndarray:
    """act @ W.T for packed rows [rows, row_bytes] (read-only, contiguous): float32 [n, rows].

    llama.cpp picks some kernels by batch size (`tiled_min_batch`) or by a token's place in the
    batch (`gemm_group`); numerics says which of those choices to follow. batch_rows = (length of
    each row's sequence chunk, the row's index in it) makes them per sequence, so batching
    sequences together never changes a row."""
    n = act.q.shape[0]
    qt = quant_type(type_id)
    if batch_rows is None:
        return _product(rows, type_id, act, numerics.tiled(qt, n), numerics.gemm_rows(qt, n))
    grouped = numerics.batched_rows(qt, *batch_rows)
    if grouped.all() or not grouped.any():
        return _product(rows, type_id, act, bool(grouped[0]), n if grouped[0] else 0)
    out = np.empty((n, rows.shape[0]), np.float32)
    for mask, batched in ((grouped, True), (~grouped, False)):
        part = QuantizedActivations(act.super_blocks, *(None if a is None else np.ascontiguousarray(a[mask])
                                                          for a in act[1:]))
        m = part.q.shape[0]
        out[mask] = _product(rows, type_id, part, batched, m if batched else 0)
    return out


def _product(rows, type_id, act: QuantizedActivations, tiled: bool, gemm_rows: int) -> np.ndarray:
    n = act.q.shape[0]
    out = np.empty((n, rows.shape[0]), np.float32)
    if type_id == Q4_K and n == 1 and gemm_rows == 0:
        matvec_q4_k_int8(rows, act.q8[0], act.d[0], act.extra[0], out[0])
    elif type_id == Q4_K:
        dot_q4_k_int8(rows, act.q8, act.d, act.extra, out, gemm_rows)
    elif type_id == Q6_K and n == 1:
        matvec_q6_k_int8(rows, act.q8[0], act.d[0], act.extra[0], out[0])
    elif type_id == Q6_K and tiled:
        dot_q6_k_int8(rows, act.q8, act.d, act.extra, out, True)
    elif type_id == Q6_K:
        dot_q6_k_int8(rows, act.q8, act.d, act.extra, out, False)
    elif n == 1:
        q32_kernels(type_id).one(rows, act.q8[0], act.d[0], act.extra[0], act.lane_sums[0], out[0])
    elif n <= MAX_TOKENS:  # a decode step of several sequences
        q32_kernels(type_id).few(rows, act.q8, act.d, act.extra, act.lane_sums, out)
    else:
        q32_kernels(type_id).batch(rows, act.q8, act.d, act.extra, act.lane_sums, out)
    return out

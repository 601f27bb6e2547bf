"""Products of 32-quant weights with a few tokens at once: the decode step of several sequences.

A server decoding N sequences multiplies every weight by N activation rows. The prompt kernel
(_int8.dot_q32_int8) decodes 16 rows to a scratch first, which pays off over hundreds of tokens
but not over four; this one streams the rows as the one-token kernel does (prefetched ahead), and
each weight block, loaded and unpacked once, serves four tokens side by side, each token with its
own fma chain in ggml's order. Every output is therefore the one-token kernel's bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import fma32, load_words, vfloat, vfma, vsplat, vzero
from ._exact import ROWS_PER_TASK, _hsum
from ._int8 import PREFETCH_ROWS, _block_quants, _lane_sum, _prefetch_rows, _row_dot
from ._isa import abs_bytes
from .types import Q4_1, Q5_1, Q8_0

MAX_TOKENS = 8  # up to this many tokens take this kernel (exact_product's choice)


@njit(cache=True, inline="always")
def _row_x4_tokens(row, type_id, xb, xd, xs, xsum, t, nb, out, r):
    """out[t:t+4, r]: row r's blocks unpacked once, dotted with tokens t..t+3."""
    with_min = type_id == Q4_1 or type_id == Q5_1
    x0, x1, x2, x3 = xb[t], xb[t + 1], xb[t + 2], xb[t + 3]
    s0, s1, s2, s3 = xsum[t], xsum[t + 1], xsum[t + 2], xsum[t + 3]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    m0 = m1 = m2 = m3 = np.float32(0.0)
    for b in range(nb):
        w, d, mn = _block_quants(row, type_id, b)
        w_abs = abs_bytes(w) if type_id == Q8_0 else w
        o = 32 * b
        a0 = vfma(vsplat(d * xd[t, b]), vfloat(_lane_sum(type_id, w, w_abs, load_words(x0, o), s0, 8 * b)), a0)
        a1 = vfma(vsplat(d * xd[t + 1, b]), vfloat(_lane_sum(type_id, w, w_abs, load_words(x1, o), s1, 8 * b)), a1)
        a2 = vfma(vsplat(d * xd[t + 2, b]), vfloat(_lane_sum(type_id, w, w_abs, load_words(x2, o), s2, 8 * b)), a2)
        a3 = vfma(vsplat(d * xd[t + 3, b]), vfloat(_lane_sum(type_id, w, w_abs, load_words(x3, o), s3, 8 * b)), a3)
        if with_min:
            m0, m1 = fma32(mn, xs[t, b], m0), fma32(mn, xs[t + 1, b], m1)
            m2, m3 = fma32(mn, xs[t + 2, b], m2), fma32(mn, xs[t + 3, b], m3)
    out[t, r], out[t + 1, r] = _hsum(a0) + m0, _hsum(a1) + m1
    out[t + 2, r], out[t + 3, r] = _hsum(a2) + m2, _hsum(a3) + m3


@njit(cache=True, inline="always")
def _rows(raw, type_id, xb, xd, xs, xsum, out, r, end, nb):
    n = xb.shape[0]
    for row in range(r, end):
        _prefetch_rows(raw, row + PREFETCH_ROWS, 1)
        w = raw[row]
        for t in range(0, n - n % 4, 4):
            _row_x4_tokens(w, type_id, xb, xd, xs, xsum, t, nb, out, row)
        for t in range(n - n % 4, n):
            out[t, row] = _row_dot(w, type_id, xb[t], xd[t], xs[t], xsum[t], nb)


@njit(cache=True, parallel=True)
def dot_q32_few(raw, type_id, xb, xd, xs, xsum, out):
    """out[t, r] = W[r] · x[t] for a few tokens; xb [n, k] int8 quants as bytes, xsum their lane sums."""
    rows = raw.shape[0]
    nb = xb.shape[1] // 32
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r, end = task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)
        _rows(raw, type_id, xb, xd, xs, xsum, out, r, end, nb)
    return out

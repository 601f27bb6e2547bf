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

from ._bits import half_pairs, lane, load_u32, load_words, vfloat, vfma, vload, vsplat, vzero
from ._exact import ROWS_PER_TASK, _hsum
from ._int8 import PREFETCH_ROWS, _block_quants, _lane_sum, _prefetch_rows, _row_dot, block_bytes
from ._isa import unsigned_form
from .types import Q4_1, Q5_1, Q8_0

MAX_TOKENS = 8  # up to this many tokens take this kernel (exact_product's choice)


@njit(cache=True, inline="always")
def _rows2_x4_tokens(ra, rb, type_id, xb, xd4, xs4, xsum, t, nb, out, r):
    """out[t:t+4, r:r+2]: rows ra and rb's blocks unpacked once, dotted with tokens t..t+3, each
    activation block loaded once for both rows. xd4 / xs4 hold the four tokens' activation scales and
    Q8_1 sums side by side per block (_side_by_side), so one multiply forms d_w·d_x for all four and
    one fma adds all four mins: each lane does its token's scalar arithmetic, in the same order."""
    with_min = type_id == Q4_1 or type_id == Q5_1
    x0, x1, x2, x3 = xb[t], xb[t + 1], xb[t + 2], xb[t + 3]
    s0, s1, s2, s3 = xsum[t], xsum[t + 1], xsum[t + 2], xsum[t + 3]
    scales, sums = xd4[t // 4], xs4[t // 4]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    b0, b1, b2, b3 = vzero(), vzero(), vzero(), vzero()
    mins_a, mins_b = vzero(), vzero()
    size = block_bytes(type_id)
    for b in range(nb):
        wa, wb = _block_quants(ra, type_id, b)[0], _block_quants(rb, type_id, b)[0]
        dm = half_pairs(load_u32(ra, b * size), load_u32(rb, b * size), 0, 0)  # one conversion, as _rows_x4
        da, ma, db, mb = lane(dm, 0), lane(dm, 1), lane(dm, 2), lane(dm, 3)
        wa_u = unsigned_form(wa) if type_id == Q8_0 else wa
        wb_u = unsigned_form(wb) if type_id == Q8_0 else wb
        o, so = 32 * b, 8 * b
        xs_b = vload(scales, 8 * b)
        dda, ddb = vsplat(da) * xs_b, vsplat(db) * xs_b
        y0, y1, y2, y3 = load_words(x0, o), load_words(x1, o), load_words(x2, o), load_words(x3, o)
        a0 = vfma(vsplat(lane(dda, 0)), vfloat(_lane_sum(type_id, wa, wa_u, y0, s0, so)), a0)
        a1 = vfma(vsplat(lane(dda, 1)), vfloat(_lane_sum(type_id, wa, wa_u, y1, s1, so)), a1)
        a2 = vfma(vsplat(lane(dda, 2)), vfloat(_lane_sum(type_id, wa, wa_u, y2, s2, so)), a2)
        a3 = vfma(vsplat(lane(dda, 3)), vfloat(_lane_sum(type_id, wa, wa_u, y3, s3, so)), a3)
        b0 = vfma(vsplat(lane(ddb, 0)), vfloat(_lane_sum(type_id, wb, wb_u, y0, s0, so)), b0)
        b1 = vfma(vsplat(lane(ddb, 1)), vfloat(_lane_sum(type_id, wb, wb_u, y1, s1, so)), b1)
        b2 = vfma(vsplat(lane(ddb, 2)), vfloat(_lane_sum(type_id, wb, wb_u, y2, s2, so)), b2)
        b3 = vfma(vsplat(lane(ddb, 3)), vfloat(_lane_sum(type_id, wb, wb_u, y3, s3, so)), b3)
        if with_min:
            xm = vload(sums, 8 * b)
            mins_a = vfma(vsplat(ma), xm, mins_a)
            mins_b = vfma(vsplat(mb), xm, mins_b)
    out[t, r], out[t + 1, r] = _hsum(a0) + lane(mins_a, 0), _hsum(a1) + lane(mins_a, 1)
    out[t + 2, r], out[t + 3, r] = _hsum(a2) + lane(mins_a, 2), _hsum(a3) + lane(mins_a, 3)
    out[t, r + 1], out[t + 1, r + 1] = _hsum(b0) + lane(mins_b, 0), _hsum(b1) + lane(mins_b, 1)
    out[t + 2, r + 1], out[t + 3, r + 1] = _hsum(b2) + lane(mins_b, 2), _hsum(b3) + lane(mins_b, 3)


@njit(cache=True)
def _side_by_side(v):
    """v [n, nb] as [n // 4, nb * 8]: for each group of four tokens, block b's four values in lanes
    0-3 of an 8-lane vector (4-7 zero)."""
    n, nb = v.shape
    out = np.zeros((n // 4, nb * 8), np.float32)
    for g in range(n // 4):
        for b in range(nb):
            for j in range(4):
                out[g, 8 * b + j] = v[4 * g + j, b]
    return out


@njit(cache=True, inline="always")
def _rows(raw, type_id, xb, xd, xs, xd4, xs4, xsum, out, r, end, nb):
    n = xb.shape[0]
    row = r
    while row + 2 <= end:
        _prefetch_rows(raw, row + PREFETCH_ROWS, 2)
        for t in range(0, n - n % 4, 4):
            _rows2_x4_tokens(raw[row], raw[row + 1], type_id, xb, xd4, xs4, xsum, t, nb, out, row)
        for t in range(n - n % 4, n):
            out[t, row] = _row_dot(raw[row], type_id, xb[t], xd[t], xs[t], xsum[t], nb)
            out[t, row + 1] = _row_dot(raw[row + 1], type_id, xb[t], xd[t], xs[t], xsum[t], nb)
        row += 2
    if row < end:  # an odd last row (no model matrix has one): the one-token kernel, same bits
        for t in range(n):
            out[t, row] = _row_dot(raw[row], type_id, xb[t], xd[t], xs[t], xsum[t], nb)


@njit(cache=True, parallel=True)
def dot_q32_few(raw, type_id, xb, xd, xs, xsum, out):
    """out[t, r] = W[r] · x[t] for a few tokens; xb [n, k] int8 quants as bytes, xsum their lane sums."""
    rows = raw.shape[0]
    nb = xb.shape[1] // 32
    xd4, xs4 = _side_by_side(xd), _side_by_side(xs)
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r, end = task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)
        _rows(raw, type_id, xb, xd, xs, xd4, xs4, xsum, out, r, end, nb)
    return out

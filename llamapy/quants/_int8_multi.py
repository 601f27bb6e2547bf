"""Products of 32-quant weights with a few tokens at once: the decode step of several sequences.

A server decoding N sequences multiplies every weight by N activation rows. The prompt kernel
(_int8.dot_q32_int8) decodes 16 rows to a scratch first, which pays off over hundreds of tokens
but not over four; this one streams the rows as the one-token kernel does (prefetched ahead), and
each weight block, loaded and unpacked once, serves four tokens, each token with its own fma
chain in ggml's order. Every output is therefore the one-token kernel's bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import even_dup, half_pairs, lane, load_u32, load_words, vfloat, vfma, vload, vsplat, vzero
from ._exact import ROWS_PER_TASK, _hsum
from ._int8 import PREFETCH_ROWS, _block_quants, _lane_sum, _prefetch_rows, _row_dot, block_bytes
from ._isa import unsigned_form
from .types import Q4_1, Q5_1, Q8_0

MAX_TOKENS = 8  # up to this many tokens take this kernel (exact_product's choice)


@njit(cache=True, inline="always")
def _row_x4_tokens(row, type_id, xb, scale_splats, sums4, xsum, t, nb, out, r):
    """out[t:t+4, r]: the row's blocks unpacked once, dotted with tokens t..t+3.

    One row at a time, not two: two rows' eight fma chains, with the constants and the four tokens'
    activations, spill past AVX2's sixteen registers, and the spilled chains then wait on the stack
    (1.05-1.2x slower on AMD Zen 3). d_w·d_x is one multiply per token with the token's scale read
    already broadcast (scale_splats, from _splats) rather than four lane broadcasts of one product;
    the four mins are one fma with the tokens' Q8_1 sums side by side (sums4, from _side_by_side).
    Each lane does its token's scalar arithmetic in ggml's order: the one-token kernel's bits."""
    with_min = type_id == Q4_1 or type_id == Q5_1
    x0, x1, x2, x3 = xb[t], xb[t + 1], xb[t + 2], xb[t + 3]
    s0, s1, s2, s3 = xsum[t], xsum[t + 1], xsum[t + 2], xsum[t + 3]
    splats, sums = scale_splats[t // 4], sums4[t // 4]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    mins = vzero()
    size = block_bytes(type_id)
    for b in range(nb):
        w = _block_quants(row, type_id, b)[0]
        w_u = unsigned_form(w) if type_id == Q8_0 else w
        d, o, so = _scale_splat(row, type_id, b * size), 32 * b, 8 * b
        a0 = vfma(d * vload(splats, o), vfloat(_lane_sum(type_id, w, w_u, load_words(x0, o), s0, so)), a0)
        a1 = vfma(d * vload(splats, o + 8), vfloat(_lane_sum(type_id, w, w_u, load_words(x1, o), s1, so)), a1)
        a2 = vfma(d * vload(splats, o + 16), vfloat(_lane_sum(type_id, w, w_u, load_words(x2, o), s2, so)), a2)
        a3 = vfma(d * vload(splats, o + 24), vfloat(_lane_sum(type_id, w, w_u, load_words(x3, o), s3, so)), a3)
        if with_min:
            m = lane(half_pairs(load_u32(row, b * size), 0, 0, 0), 1)  # d's conversion too (LLVM merges them)
            mins = vfma(vsplat(m), vload(sums, 8 * b), mins)
    out[t, r], out[t + 1, r] = _hsum(a0) + lane(mins, 0), _hsum(a1) + lane(mins, 1)
    out[t + 2, r], out[t + 3, r] = _hsum(a2) + lane(mins, 2), _hsum(a3) + lane(mins, 3)


@njit(cache=True, inline="always")
def _scale_splat(row, type_id, head):
    """The block's d in every lane. Without a min (Q4_0, Q5_0, Q8_0) the block's first word (d and
    two quant bytes) is converted broadcast, d landing in the even lanes, which are copied over: over
    four tokens, 1.3x (Zen 3) / 1.17x (Zen 5) faster for Q4_0, 1.05x / 1.37x for Q5_0 and 1.07-1.1x /
    1.14x for Q8_0 than converting one word and broadcasting lane 0. That stays for Q4_1 and Q5_1,
    whose d and m are converted together for the mins (the broadcast form measured 1.02x slower)."""
    word = load_u32(row, head)
    if type_id != Q4_1 and type_id != Q5_1:
        return even_dup(half_pairs(word, word, word, word))
    return vsplat(lane(half_pairs(word, 0, 0, 0), 0))


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


@njit(cache=True)
def _splats(v):
    """v [n, nb] as [n // 4, nb * 32]: for each group of four tokens, block b's four values each
    broadcast to an 8-lane vector."""
    n, nb = v.shape
    out = np.empty((n // 4, nb * 32), np.float32)
    for g in range(n // 4):
        for b in range(nb):
            for j in range(4):
                out[g, 32 * b + 8 * j:32 * b + 8 * j + 8] = v[4 * g + j, b]
    return out


@njit(cache=True, inline="always")
def _rows(raw, type_id, xb, xd, xs, scale_splats, sums4, xsum, out, r, end, nb):
    n = xb.shape[0]
    for row in range(r, end):
        _prefetch_rows(raw, row + PREFETCH_ROWS, 1)
        for t in range(0, n - n % 4, 4):
            _row_x4_tokens(raw[row], type_id, xb, scale_splats, sums4, xsum, t, nb, out, row)
        for t in range(n - n % 4, n):
            out[t, row] = _row_dot(raw[row], type_id, xb[t], xd[t], xs[t], xsum[t], nb)


@njit(cache=True, parallel=True)
def dot_q32_few(raw, type_id, xb, xd, xs, xsum, out):
    """out[t, r] = W[r] · x[t] for a few tokens; xb [n, k] int8 quants as bytes, xsum their lane sums."""
    rows = raw.shape[0]
    nb = xb.shape[1] // 32
    scale_splats, sums4 = _splats(xd), _side_by_side(xs)
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r, end = task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)
        _rows(raw, type_id, xb, xd, xs, scale_splats, sums4, xsum, out, r, end, nb)
    return out

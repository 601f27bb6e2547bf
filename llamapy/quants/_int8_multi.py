"""Products of 32-quant weights with a few tokens at once: the decode step of several sequences.

A server decoding N sequences multiplies every weight by N activation rows. The prompt kernel
(_int8.dot_q32_int8) decodes 16 rows to a scratch first, which pays off over hundreds of tokens
but not over four; this one streams the rows as the one-token kernel does (prefetched ahead), and
each weight block, loaded and unpacked once, serves four tokens, each token with its own fma
chain in ggml's order. Every output is therefore the one-token kernel's bits. Two tokens' chains
share each sixteen-lane vector (_pairs.py), one zmm instruction with AVX-512, where two rows also
go side by side.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import even_dup, half_pairs, lane, load_u32, vfma, vload, vsplat, vzero
from ._exact import ROWS_PER_TASK, _hsum
from ._int8 import PREFETCH_ROWS, _block_quants, _prefetch_rows, _row_dot, block_bytes
from ._isa import unsigned_form
from ._pairs import (
    has_32_registers,
    high_half,
    low_half,
    pair_dot4,
    pair_float,
    pair_fma,
    pair_iload,
    pair_izero,
    pair_load,
    pair_q8_base,
    pair_q8_sum,
    pair_words,
    pair_zero,
    twice,
)
from .types import Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

MAX_TOKENS = 8  # up to this many tokens take this kernel (exact_product's choice)


@njit(cache=True, inline="always")
def _pair_lane_sum(type_id, w, w_u, x, sums):
    """_int8._lane_sum for two tokens at once: w (w_u) a block's quants in both halves, x and sums
    the two tokens' activation bytes and lane sums side by side."""
    if type_id == Q8_0:
        return pair_q8_sum(pair_q8_base(sums), w_u, w, x)
    s = pair_dot4(pair_izero(), w, x)
    if type_id == Q4_0:
        s = s - (sums << 3)
    elif type_id == Q5_0:
        s = s - (sums << 4)
    return s


@njit(cache=True, inline="always")
def _block_step(row, type_id, b, groups, a01, a23):
    """Block b of a row, unpacked once, into the fma chains of four tokens: tokens 0 and 1 share
    a01, tokens 2 and 3 a23, sixteen lanes each (_pairs.py). d_w·d_x is one multiply per pair of
    tokens, their scales read already broadcast (scale_splats, from _splats)."""
    x_pairs, scale_splats, sum_pairs = groups
    w = _block_quants(row, type_id, b)[0]
    w2 = twice(w)
    w2_u = twice(unsigned_form(w)) if type_id == Q8_0 else w2
    d = twice(_scale_splat(row, type_id, b * block_bytes(type_id)))
    o, xo = 32 * b, 128 * b
    s01 = _pair_lane_sum(type_id, w2, w2_u, pair_words(x_pairs, xo), pair_iload(sum_pairs, o))
    s23 = _pair_lane_sum(type_id, w2, w2_u, pair_words(x_pairs, xo + 64), pair_iload(sum_pairs, o + 16))
    a01 = pair_fma(d * pair_load(scale_splats, o), pair_float(s01), a01)
    return a01, pair_fma(d * pair_load(scale_splats, o + 16), pair_float(s23), a23)


@njit(cache=True, inline="always")
def _min_step(row, type_id, b, sums, mins):
    """The four tokens' min terms of block b: one fma with their Q8_1 sums side by side (sums, from
    _side_by_side)."""
    m = lane(half_pairs(load_u32(row, b * block_bytes(type_id)), 0, 0, 0), 1)  # d's word, converted again
    return vfma(vsplat(m), vload(sums, 8 * b), mins)


@njit(cache=True, inline="always")
def _store_x4(out, t, r, a01, a23, mins):
    out[t, r], out[t + 1, r] = _hsum(low_half(a01)) + lane(mins, 0), _hsum(high_half(a01)) + lane(mins, 1)
    out[t + 2, r], out[t + 3, r] = _hsum(low_half(a23)) + lane(mins, 2), _hsum(high_half(a23)) + lane(mins, 3)


@njit(cache=True, inline="always")
def _row_x4_tokens(row, type_id, groups, sums, nb, out, t, r):
    """out[t:t+4, r]: the row's blocks dotted with tokens t..t+3. Each lane does its token's scalar
    arithmetic in ggml's order: the one-token kernel's bits."""
    a01, a23, mins = pair_zero(), pair_zero(), vzero()
    for b in range(nb):
        a01, a23 = _block_step(row, type_id, b, groups, a01, a23)
        if type_id == Q4_1 or type_id == Q5_1:
            mins = _min_step(row, type_id, b, sums, mins)
    _store_x4(out, t, r, a01, a23, mins)


@njit(cache=True, inline="always")
def _rows2_x4_tokens(ra, rb, type_id, groups, sums, nb, out, t, r):
    """out[t:t+4, r:r+2]: _row_x4_tokens for two rows in one pass, whose independent chains keep
    the pipes busy and share the loads of the activations: with AVX-512's 32 registers, about 1.15x
    (Q4_1) and 1.3x (Q8_0) faster than one row on AMD Zen 5 (1536x576, 4 tokens, -t 1). AVX2's
    sixteen do not hold two rows' chains (1.05-1.2x slower on AMD Zen 3), so there _rows takes one
    row at a time."""
    a01, a23, c01, c23 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
    ma, mc = vzero(), vzero()
    for b in range(nb):
        a01, a23 = _block_step(ra, type_id, b, groups, a01, a23)
        c01, c23 = _block_step(rb, type_id, b, groups, c01, c23)
        if type_id == Q4_1 or type_id == Q5_1:
            ma, mc = _min_step(ra, type_id, b, sums, ma), _min_step(rb, type_id, b, sums, mc)
    _store_x4(out, t, r, a01, a23, ma)
    _store_x4(out, t, r + 1, c01, c23, mc)


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
def _pairs_of(v, width):
    """v [n, nb * width] as [n // 4, nb * 4 * width]: for each group of four tokens, block b's
    `width` values of tokens 0 and 1 side by side, then those of tokens 2 and 3 (one 16-lane load
    for each pair: the activation bytes, width 32, or their lane sums, width 8)."""
    n, nb = v.shape[0], v.shape[1] // width
    out = np.empty((n // 4, nb * 4 * width), v.dtype)
    for g in range(n // 4):
        for b in range(nb):
            for j in range(4):
                o = 4 * width * b + width * j
                for i in range(width):  # not a slice copy: numba's slices cost ~2 us per call here
                    out[g, o + i] = v[4 * g + j, width * b + i]
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
                for i in range(8):
                    out[g, 32 * b + 8 * j + i] = v[4 * g + j, b]
    return out


@njit(cache=True, inline="always")
def _rows(raw, type_id, xb, xd, xs, xsum, layouts, out, r, end, nb):
    """Rows r..end-1 against every token: groups of four by _row(s)_x4_tokens, the rest one by one.
    layouts: per group of four tokens, (x_pairs, scale_splats, sum_pairs) and sums4."""
    n = xb.shape[0]
    x_pairs, scale_splats, sum_pairs, sums4 = layouts
    pairs_of_rows = has_32_registers()
    while r < end:
        two = pairs_of_rows and r + 1 < end
        _prefetch_rows(raw, r + PREFETCH_ROWS, 2 if two else 1)
        for t in range(0, n - n % 4, 4):
            g = (x_pairs[t // 4], scale_splats[t // 4], sum_pairs[t // 4])
            if two:
                _rows2_x4_tokens(raw[r], raw[r + 1], type_id, g, sums4[t // 4], nb, out, t, r)
            else:
                _row_x4_tokens(raw[r], type_id, g, sums4[t // 4], nb, out, t, r)
        for j in range(2 if two else 1):
            for t in range(n - n % 4, n):
                out[t, r + j] = _row_dot(raw[r + j], type_id, xb[t], xd[t], xs[t], xsum[t], nb)
        r += 2 if two else 1


@njit(cache=True, parallel=True)
def dot_q32_few(raw, type_id, xb, xd, xs, xsum, out):
    """out[t, r] = W[r] · x[t] for a few tokens; xb [n, k] int8 quants as bytes, xsum their lane sums."""
    rows = raw.shape[0]
    nb = xb.shape[1] // 32
    layouts = (_pairs_of(xb, 32), _splats(xd), _pairs_of(xsum, 8), _side_by_side(xs))
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r, end = task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)
        _rows(raw, type_id, xb, xd, xs, xsum, layouts, out, r, end, nb)
    return out

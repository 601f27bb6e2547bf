"""The batch K-quant products on int8 bytes (quants/_int8_k.py) against the float kernels they
replaced, kept below as they were: same bits for Q4_K (gemm and gemv tokens), Q6_K and Q6_K tiled,
for random rows and batches of 1 to 13 tokens; and through products.exact_product's routing."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit, prange

import llamapy.quants as Q
from llamapy.quants import products
from llamapy.quants._bits import (
    add_halves,
    fma32,
    hadd,
    lane,
    load_sbytes,
    load_words,
    reduce_add,
    vfloat,
    vfma,
    vint,
    vload,
    vsplat,
    vstore,
    vzero,
)
from llamapy.quants._exact import (
    ROWS_PER_TASK,
    _half,
    _hsum,
    _parts,
    _q4_k_add,
    _q4_k_scales,
    _q6_k_lanes,
    _q6_k_offsets,
    _q6_k_scales,
    quantize_q8_k,
)
from llamapy.quants._int8_k import dot_q4_k_int8, dot_q6_k_int8

# ---------------------------------------------------------------- the float kernels, as they were
# Each 32-quant vector's lane sums by float multiply-adds over decoded float lanes, activations as
# a float32 copy of the Q8_K quants.

# --- the lane-major layout -------------------------------------------------------------------------
# ggml's lane l of a 32-quant vector sums the products of quants 4l..4l+3. Stored "lane-major",
# position 8m + l of each 32 holding quant 4l + m, the m-th products of all eight lanes form one
# contiguous vector, so a block's lane sums are four vector multiply-adds. Activations are
# permuted once per call; weights are decoded straight into that order (byte m of word l).


@njit(cache=True)
def _lane_major(xq):
    """xq [n, k] permuted to the lane-major order (a copy)."""
    n, k = xq.shape
    xp = np.empty((n, k), dtype=np.float32)
    for t in range(n):
        for v in range(0, k, 32):
            for m in range(4):
                for i in range(8):
                    xp[t, v + 8 * m + i] = xq[t, v + 4 * i + m]
    return xp


@njit(cache=True)
def _lanes(w0, w1, w2, w3, x, o):
    """Per-lane sums of four products: exact integers, so fused or not, any order gives them."""
    return vfma(w3, vload(x, o + 24), vfma(w2, vload(x, o + 16), vfma(w1, vload(x, o + 8), w0 * vload(x, o))))




@njit(cache=True)
def _q6_k_quants(row, o, v):
    """Quants (0..63, offset not applied) of 32-vector v of the superblock at o, lane-major."""
    low = load_words(row, o + 64 * (v >> 2) + 32 * (v & 1)) >> (4 * ((v >> 1) & 1))
    high = load_words(row, o + 128 + 32 * (v >> 2)) >> (2 * (v & 3))
    q = (low & 0x0F0F0F0F) | ((high & 0x03030303) << 4)
    return vfloat(q & 63), vfloat((q >> 8) & 63), vfloat((q >> 16) & 63), vfloat(q >> 24)




@njit(cache=True, inline="always")
def _decode_q6_k_lanes(row, wq, wsp, wsc, wd):
    """A row into lane-major quants wq, per-vector lane scales wsp (8 per vector), scales wsc, d wd."""
    for b in range(wd.shape[0]):
        o = b * 210
        wd[b] = _half(row, o + 208)
        vstore(wsc, b * 16, load_sbytes(row, o + 192))
        vstore(wsc, b * 16 + 8, load_sbytes(row, o + 200))
        for v in range(8):
            q0, q1, q2, q3 = _q6_k_quants(row, o, v)
            e = b * 256 + 32 * v
            vstore(wq, e, q0)
            vstore(wq, e + 8, q1)
            vstore(wq, e + 16, q2)
            vstore(wq, e + 24, q3)
            vstore(wsp, 8 * (b * 8 + v), _q6_k_scales(row, o, v))


@njit(cache=True)
def _q6_k_half(wq, wsp, x, b, v0):
    """Σ over vectors v0..v0+3 of superblock b of scale · lane sums."""
    h = vzero()
    for v in range(v0, v0 + 4):
        e = b * 256 + 32 * v
        w = _lanes(vload(wq, e), vload(wq, e + 8), vload(wq, e + 16), vload(wq, e + 24), x, e)
        h = vfma(vload(wsp, 8 * (b * 8 + v)), w, h)
    return h


@njit(cache=True, inline="always")
def _q6_k_token(wq, wsp, wsc, wd, xp, xd, xbs, t):
    """out[t, r] from a decoded row."""
    x = xp[t]
    bs = xbs[t]
    acc = vzero()
    for b in range(wd.shape[0]):
        offsets = _q6_k_offsets(bs, b * 16, vload(wsc, b * 16), vload(wsc, b * 16 + 8))
        lanes = _q6_k_lanes(_q6_k_half(wq, wsp, x, b, 0), _q6_k_half(wq, wsp, x, b, 4), offsets)
        acc = vfma(vsplat(xd[t, b] * wd[b]), lanes, acc)
    return _hsum(acc)


@njit(cache=True)
def _q6_k_half_x4(wq, wsp, x0, x1, x2, x3, b, v0):
    """_q6_k_half for four tokens, each weight vector loaded once."""
    h0, h1, h2, h3 = vzero(), vzero(), vzero(), vzero()
    for v in range(v0, v0 + 4):
        e = b * 256 + 32 * v
        w0, w1, w2, w3 = vload(wq, e), vload(wq, e + 8), vload(wq, e + 16), vload(wq, e + 24)
        sc = vload(wsp, 8 * (b * 8 + v))
        h0 = vfma(sc, _lanes(w0, w1, w2, w3, x0, e), h0)
        h1 = vfma(sc, _lanes(w0, w1, w2, w3, x1, e), h1)
        h2 = vfma(sc, _lanes(w0, w1, w2, w3, x2, e), h2)
        h3 = vfma(sc, _lanes(w0, w1, w2, w3, x3, e), h3)
    return h0, h1, h2, h3


@njit(cache=True, inline="always")
def _q6_k_x4(wq, wsp, wsc, wd, xp, xd, xbs, t, out, r):
    """out[t:t+4, r]: _q6_k_token for four tokens in one pass over the decoded row."""
    x0, x1, x2, x3 = xp[t], xp[t + 1], xp[t + 2], xp[t + 3]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    for b in range(wd.shape[0]):
        g = b * 16
        sc_lo, sc_hi = vload(wsc, g), vload(wsc, g + 8)
        h0, h1, h2, h3 = _q6_k_half_x4(wq, wsp, x0, x1, x2, x3, b, 0)
        k0, k1, k2, k3 = _q6_k_half_x4(wq, wsp, x0, x1, x2, x3, b, 4)
        a0 = vfma(vsplat(xd[t, b] * wd[b]), _q6_k_lanes(h0, k0, _q6_k_offsets(xbs[t], g, sc_lo, sc_hi)), a0)
        a1 = vfma(vsplat(xd[t + 1, b] * wd[b]), _q6_k_lanes(h1, k1, _q6_k_offsets(xbs[t + 1], g, sc_lo, sc_hi)), a1)
        a2 = vfma(vsplat(xd[t + 2, b] * wd[b]), _q6_k_lanes(h2, k2, _q6_k_offsets(xbs[t + 2], g, sc_lo, sc_hi)), a2)
        a3 = vfma(vsplat(xd[t + 3, b] * wd[b]), _q6_k_lanes(h3, k3, _q6_k_offsets(xbs[t + 3], g, sc_lo, sc_hi)), a3)
    out[t, r] = _hsum(a0)
    out[t + 1, r] = _hsum(a1)
    out[t + 2, r] = _hsum(a2)
    out[t + 3, r] = _hsum(a3)


@njit(cache=True, parallel=True)
def dot_q6_k(raw, xq, xd, xbs, out):
    """out[t, r] = W[r] · x[t] for Q6_K weights and Q8_K activations, as ggml_vec_dot_q6_K_q8_K (AVX2).

    Lane i of a superblock sums the scaled products of bytes 4i..4i+3 of each 32-quant vector,
    minus 32·(bsums·scales) of 16-groups 2i and 2i+1; all integer, then one fma per lane.
    A task decodes its rows once, then runs every token over them.
    """
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 256
    xp = _lane_major(xq)
    tasks, parts = _parts(rows)
    for part in prange(parts):
        wq = np.empty((ROWS_PER_TASK, k), dtype=np.float32)
        wsp = np.empty((ROWS_PER_TASK, nb * 64), dtype=np.float32)
        wsc = np.empty((ROWS_PER_TASK, nb * 16), dtype=np.float32)
        wd = np.empty((ROWS_PER_TASK, nb), dtype=np.float32)
        for task in range(part * tasks // parts, (part + 1) * tasks // parts):
            r0 = task * ROWS_PER_TASK
            count = min(rows, r0 + ROWS_PER_TASK) - r0
            for i in range(count):
                _decode_q6_k_lanes(raw[r0 + i], wq[i], wsp[i], wsc[i], wd[i])
            for t in range(0, n - 3, 4):
                for i in range(count):
                    _q6_k_x4(wq[i], wsp[i], wsc[i], wd[i], xp, xd, xbs, t, out, r0 + i)
            for t in range(n - n % 4, n):
                for i in range(count):
                    out[t, r0 + i] = _q6_k_token(wq[i], wsp[i], wsc[i], wd[i], xp, xd, xbs, t)
    return out


# --- Q6_K, tiled: ggml's K-quant matmul for batches of 8 tokens or more ----------------------------
# Per row, token and superblock: the exact integer Σ scale·(q - 32)·x over its 256 quants, rounded
# to float32 once, times d_w, then one fma with d_x. The scale is folded into the decoded quants
# (at most 128·32 = 4096), so a lane's sum over the eight vectors stays within 8·4·4096·128 = 2**24,
# exact in float32; the eight lanes are added as int32.


@njit(cache=True, inline="always")
def _decode_q6_k_tiled(row, wq, wd):
    """A row into lane-major scale·(q - 32) wq, and d per 256 wd."""
    for b in range(wd.shape[0]):
        o = b * 210
        wd[b] = _half(row, o + 208)
        for v in range(8):
            sc = _q6_k_scales(row, o, v)
            q0, q1, q2, q3 = _q6_k_quants(row, o, v)
            e = b * 256 + 32 * v
            off = vsplat(np.float32(32.0))
            vstore(wq, e, sc * (q0 - off))
            vstore(wq, e + 8, sc * (q1 - off))
            vstore(wq, e + 16, sc * (q2 - off))
            vstore(wq, e + 24, sc * (q3 - off))


@njit(cache=True)
def _tiled_add(h, d, xd, acc):
    """acc + (d · Σ lanes of h) · xd, with the lane sum exact and rounded once."""
    return fma32(d * np.float32(reduce_add(vint(h))), xd, acc)


@njit(cache=True, inline="always")
def _q6_k_tiled_x4(wq, wd, xp, xd, t, out, r):
    """out[t:t+4, r]: four tokens in one pass over the decoded row."""
    x0, x1, x2, x3 = xp[t], xp[t + 1], xp[t + 2], xp[t + 3]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for b in range(wd.shape[0]):
        h0, h1, h2, h3 = vzero(), vzero(), vzero(), vzero()
        for e in range(b * 256, b * 256 + 256, 32):
            w0, w1, w2, w3 = vload(wq, e), vload(wq, e + 8), vload(wq, e + 16), vload(wq, e + 24)
            h0 = h0 + _lanes(w0, w1, w2, w3, x0, e)
            h1 = h1 + _lanes(w0, w1, w2, w3, x1, e)
            h2 = h2 + _lanes(w0, w1, w2, w3, x2, e)
            h3 = h3 + _lanes(w0, w1, w2, w3, x3, e)
        d = wd[b]
        a0 = _tiled_add(h0, d, xd[t, b], a0)
        a1 = _tiled_add(h1, d, xd[t + 1, b], a1)
        a2 = _tiled_add(h2, d, xd[t + 2, b], a2)
        a3 = _tiled_add(h3, d, xd[t + 3, b], a3)
    out[t, r] = a0
    out[t + 1, r] = a1
    out[t + 2, r] = a2
    out[t + 3, r] = a3


@njit(cache=True, inline="always")
def _q6_k_tiled_x1(wq, wd, xp, xd, t, out, r):
    x = xp[t]
    acc = np.float32(0.0)
    for b in range(wd.shape[0]):
        h = vzero()
        for e in range(b * 256, b * 256 + 256, 32):
            h = h + _lanes(vload(wq, e), vload(wq, e + 8), vload(wq, e + 16), vload(wq, e + 24), x, e)
        acc = _tiled_add(h, wd[b], xd[t, b], acc)
    out[t, r] = acc


@njit(cache=True, parallel=True)
def dot_q6_k_tiled(raw, xq, xd, out):
    """out[t, r] = W[r] · x[t] for Q6_K weights and Q8_K activations with the arithmetic of ggml's
    tiled K-quant matmul (llama.cpp's path for batches of 8 or more): bit for bit _tiled.tiled_q6_k."""
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 256
    xp = _lane_major(xq)
    tasks, parts = _parts(rows)
    for part in prange(parts):
        wq = np.empty((ROWS_PER_TASK, k), dtype=np.float32)
        wd = np.empty((ROWS_PER_TASK, nb), dtype=np.float32)
        for task in range(part * tasks // parts, (part + 1) * tasks // parts):
            r0 = task * ROWS_PER_TASK
            count = min(rows, r0 + ROWS_PER_TASK) - r0
            for i in range(count):
                _decode_q6_k_tiled(raw[r0 + i], wq[i], wd[i])
            for t in range(0, n - 3, 4):
                for i in range(count):
                    _q6_k_tiled_x4(wq[i], wd[i], xp, xd, t, out, r0 + i)
            for t in range(n - n % 4, n):
                for i in range(count):
                    _q6_k_tiled_x1(wq[i], wd[i], xp, xd, t, out, r0 + i)
    return out


# --- Q4_K (llama.cpp repacks it 8 rows at a time on AVX2) -----------------------------------------


@njit(cache=True)
def _q4_k_quants(row, o, j):
    """Quants (0..15) of sub-block j of the superblock at o, lane-major: chunk j/2's low or high nibbles."""
    w = load_words(row, o + 16 + 32 * (j >> 1)) >> (4 * (j & 1))
    return vfloat(w & 15), vfloat((w >> 8) & 15), vfloat((w >> 16) & 15), vfloat((w >> 24) & 15)


# The batch kernel folds each sub-block's scale into its decoded quants (scale·q, at most 945),
# so that the scaled sum of a pair of sub-blocks is one vector of lane sums (each at most
# 2·4·945·127 < 2**24, exact), and four such vectors reduce with three hadds.


@njit(cache=True, inline="always")
def _decode_q4_k_lanes(row, wq, wmin, wd, wdmin):
    """A row into lane-major scale·quant wq, the mins in _PAIR_ORDER (wmin), d and dmin per 256."""
    for b in range(wd.shape[0]):
        o = b * 144
        wd[b] = _half(row, o)
        wdmin[b] = _half(row, o + 2)
        scales, mins = _q4_k_scales(row, o)
        for i in range(8):
            wmin[8 * b + i] = lane(mins, _PAIR_ORDER[i])
        for j in range(8):
            sc = vsplat(lane(scales, j))
            q0, q1, q2, q3 = _q4_k_quants(row, o, j)
            e = b * 256 + 32 * j
            vstore(wq, e, sc * q0)
            vstore(wq, e + 8, sc * q1)
            vstore(wq, e + 16, sc * q2)
            vstore(wq, e + 24, sc * q3)


# Sub-blocks 0, 2, 4, 6, then 1, 3, 5, 7: add_halves of products in this order sums the pairs.
_PAIR_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@njit(cache=True)
def _bsum_pairs(xbs):
    """Per token and sub-block, the sum of its two 16-sums, in _PAIR_ORDER per superblock."""
    n, groups = xbs.shape
    out = np.empty((n, groups // 2), dtype=np.float32)
    for t in range(n):
        for b in range(groups // 16):
            for i in range(8):
                j = _PAIR_ORDER[i]
                out[t, 8 * b + i] = xbs[t, 16 * b + 2 * j] + xbs[t, 16 * b + 2 * j + 1]
    return out


@njit(cache=True)
def _q4_k_reduce(p0, p1, p2, p3, mins):
    """[Σ scale·dot of sub-block pairs 0-1, 2-3, 4-5, 6-7, then Σ min·bsum of the same pairs],
    from the pairs' lane sums p0..p3 and the mins·bsums in _PAIR_ORDER."""
    return add_halves(hadd(hadd(p0, p1), hadd(p2, p3)), mins)


@njit(cache=True)
def _q4_k_pair(wq, x, e):
    """Lane sums of the decoded sub-blocks at e and e + 32 against one token."""
    w = _lanes(vload(wq, e), vload(wq, e + 8), vload(wq, e + 16), vload(wq, e + 24), x, e)
    f = e + 32
    return w + _lanes(vload(wq, f), vload(wq, f + 8), vload(wq, f + 16), vload(wq, f + 24), x, f)


@njit(cache=True, inline="always")
def _q4_k_gemv(wq, wmin, wd, wdmin, xp, xd, bp, t):
    """out[t, r] for a gemv token (one fma per superblock)."""
    x = xp[t]
    acc = np.float32(0.0)
    acc_min = np.float32(0.0)
    for b in range(wd.shape[0]):
        e = b * 256
        sums = _q4_k_reduce(_q4_k_pair(wq, x, e), _q4_k_pair(wq, x, e + 64), _q4_k_pair(wq, x, e + 128),
                            _q4_k_pair(wq, x, e + 192), vload(wmin, 8 * b) * vload(bp[t], 8 * b))
        acc, acc_min = _q4_k_add(sums, wd[b] * xd[t, b], wdmin[b] * xd[t, b], acc, acc_min, False)
    return acc - acc_min


@njit(cache=True)
def _q4_k_pair_x4(wq, e, x0, x1, x2, x3):
    """_q4_k_pair for four tokens, each weight vector loaded once."""
    a0, a1, a2, a3 = vload(wq, e), vload(wq, e + 8), vload(wq, e + 16), vload(wq, e + 24)
    f = e + 32
    b0, b1, b2, b3 = vload(wq, f), vload(wq, f + 8), vload(wq, f + 16), vload(wq, f + 24)
    return (_lanes(a0, a1, a2, a3, x0, e) + _lanes(b0, b1, b2, b3, x0, f),
            _lanes(a0, a1, a2, a3, x1, e) + _lanes(b0, b1, b2, b3, x1, f),
            _lanes(a0, a1, a2, a3, x2, e) + _lanes(b0, b1, b2, b3, x2, f),
            _lanes(a0, a1, a2, a3, x3, e) + _lanes(b0, b1, b2, b3, x3, f))


@njit(cache=True)
def _q4_k_half_x4(wq, e, x0, x1, x2, x3):
    """hadd of the pair lane sums from e and e + 64, for four tokens (half of _q4_k_reduce)."""
    p0, p1, p2, p3 = _q4_k_pair_x4(wq, e, x0, x1, x2, x3)
    q0, q1, q2, q3 = _q4_k_pair_x4(wq, e + 64, x0, x1, x2, x3)
    return hadd(p0, q0), hadd(p1, q1), hadd(p2, q2), hadd(p3, q3)


@njit(cache=True)
def _q4_k_gemm(lo, hi, mins, bp, g, d, dmin, xd, acc, acc_min):
    """One superblock of one gemm token, from the two halves of its reduction."""
    sums = add_halves(hadd(lo, hi), mins * vload(bp, g))
    return _q4_k_add(sums, d * xd, dmin * xd, acc, acc_min, True)


@njit(cache=True, inline="always")
def _q4_k_x4(wq, wmin, wd, wdmin, xp, xd, bp, t, out, r):
    """out[t:t+4, r] for four gemm tokens in one pass over the decoded row."""
    x0, x1, x2, x3 = xp[t], xp[t + 1], xp[t + 2], xp[t + 3]
    c0 = c1 = c2 = c3 = m0 = m1 = m2 = m3 = np.float32(0.0)
    for b in range(wd.shape[0]):
        e = b * 256
        lo0, lo1, lo2, lo3 = _q4_k_half_x4(wq, e, x0, x1, x2, x3)
        hi0, hi1, hi2, hi3 = _q4_k_half_x4(wq, e + 128, x0, x1, x2, x3)
        mn, d, dmin, g = vload(wmin, 8 * b), wd[b], wdmin[b], 8 * b
        c0, m0 = _q4_k_gemm(lo0, hi0, mn, bp[t], g, d, dmin, xd[t, b], c0, m0)
        c1, m1 = _q4_k_gemm(lo1, hi1, mn, bp[t + 1], g, d, dmin, xd[t + 1, b], c1, m1)
        c2, m2 = _q4_k_gemm(lo2, hi2, mn, bp[t + 2], g, d, dmin, xd[t + 2, b], c2, m2)
        c3, m3 = _q4_k_gemm(lo3, hi3, mn, bp[t + 3], g, d, dmin, xd[t + 3, b], c3, m3)
    out[t, r] = c0 - m0
    out[t + 1, r] = c1 - m1
    out[t + 2, r] = c2 - m2
    out[t + 3, r] = c3 - m3


@njit(cache=True, parallel=True)
def dot_q4_k(raw, xq, xd, xbs, out, gemv_from):
    """out[t, r] = W[r] · x[t] for Q4_K weights and Q8_K activations, as ggml's repacked 8x8 kernels.

    Their gemm (tokens in fours) adds the scaled integer sum of each 64-quant pair of sub-blocks
    with one fma; their gemv (the last n % 4 tokens, and decoding) one fma per 256. Mins likewise.
    A task decodes its rows once, then runs every token over them. Tokens from gemv_from on take
    the gemv (ggml: n - n % 4; a batch of several sequences decides per sequence).
    """
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 256
    xp = _lane_major(xq)
    bp = _bsum_pairs(xbs)
    tasks, parts = _parts(rows)
    for part in prange(parts):
        wq = np.empty((ROWS_PER_TASK, k), dtype=np.float32)
        wmin = np.empty((ROWS_PER_TASK, nb * 8), dtype=np.float32)
        wd = np.empty((ROWS_PER_TASK, nb), dtype=np.float32)
        wdmin = np.empty((ROWS_PER_TASK, nb), dtype=np.float32)
        for task in range(part * tasks // parts, (part + 1) * tasks // parts):
            r0 = task * ROWS_PER_TASK
            count = min(rows, r0 + ROWS_PER_TASK) - r0
            for i in range(count):
                _decode_q4_k_lanes(raw[r0 + i], wq[i], wmin[i], wd[i], wdmin[i])
            for t in range(0, gemv_from, 4):
                for i in range(count):
                    _q4_k_x4(wq[i], wmin[i], wd[i], wdmin[i], xp, xd, bp, t, out, r0 + i)
            for t in range(gemv_from, n):
                for i in range(count):
                    out[t, r0 + i] = _q4_k_gemv(wq[i], wmin[i], wd[i], wdmin[i], xp, xd, bp, t)
    return out


# ---------------------------------------------------------------- tests

K = 512  # two superblocks
ROWS = 37  # not a multiple of the 16-row tasks
BLOCK = {Q.Q4_K: (144, (0, 2)), Q.Q6_K: (210, (208,))}


def k_weights(type_id: int, rows: int = ROWS, k: int = K, seed: int = 0) -> np.ndarray:
    """Random packed rows with finite fp16 scales; row 0 all ones bits (largest quants and scales,
    Q6_K's scales -1), row 1 Q6_K's scales -128 with the largest quants: the integer sums' extremes."""
    size, halves = BLOCK[type_id]
    rng = np.random.default_rng(seed + type_id)
    blocks = rng.integers(0, 256, (rows, k // 256, size), dtype=np.uint8)
    blocks[0] = 0xFF
    if type_id == Q.Q6_K:
        blocks[1] = 0xFF
        blocks[1, :, 192:208] = 0x80
    for off in halves:
        scales = (rng.standard_normal(blocks.shape[:2]) * 0.05).astype(np.float16)
        blocks[:, :, off:off + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


def k_activations(n: int, k: int = K, seed: int = 1):
    """Q8_K (float32 quants, int8 bytes, d, bsums) of random activations, with a zero block, a lone
    spike (quants ±127 and 0) and all-equal values (every quant -127) among them."""
    rng = np.random.default_rng(seed + n)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.01, 20.0, (n, 1))).astype(np.float32)
    x[0, :256] = 0.0
    if n > 1:
        x[1, k // 2:] = 0.0
        x[1, -5] = -500.0
    if n > 2:
        x[2, :256] = 3.0
    q = np.empty((n, k), np.float32)
    d, bs = np.empty((n, k // 256), np.float32), np.empty((n, k // 16), np.float32)
    quantize_q8_k(x, q, d, bs)
    return x, q, q.astype(np.int8).view(np.uint8), d, bs


@pytest.mark.parametrize("n", range(1, 14))
def test_q4_k_bytes_match_float_kernel(n):
    raw = k_weights(Q.Q4_K)
    _, q, xb, d, bs = k_activations(n)
    for gemv_from in sorted({0, 4 * (n // 8), n - n % 4}):  # all gemv, a split, ggml's own split
        want = dot_q4_k(raw, q, d, bs, np.empty((n, ROWS), np.float32), gemv_from)
        got = dot_q4_k_int8(raw, xb, d, bs, np.full((n, ROWS), np.nan, np.float32), gemv_from)
        np.testing.assert_array_equal(got, want, err_msg=f"gemv_from={gemv_from}")


@pytest.mark.parametrize("n", range(1, 14))
def test_q6_k_bytes_match_float_kernels(n):
    raw = k_weights(Q.Q6_K)
    _, q, xb, d, bs = k_activations(n)
    want = dot_q6_k(raw, q, d, bs, np.empty((n, ROWS), np.float32))
    np.testing.assert_array_equal(dot_q6_k_int8(raw, xb, d, bs, np.full((n, ROWS), np.nan, np.float32), False), want)
    want = dot_q6_k_tiled(raw, q, d, np.empty((n, ROWS), np.float32))
    got = dot_q6_k_int8(raw, xb, d, bs, np.full((n, ROWS), np.nan, np.float32), True)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [256, 1024])
def test_other_widths_match(k):
    n = 9
    _, q, xb, d, bs = k_activations(n, k)
    raw = k_weights(Q.Q4_K, 20, k)
    np.testing.assert_array_equal(dot_q4_k_int8(raw, xb, d, bs, np.empty((n, 20), np.float32), 8),
                                  dot_q4_k(raw, q, d, bs, np.empty((n, 20), np.float32), 8))
    raw = k_weights(Q.Q6_K, 20, k)
    np.testing.assert_array_equal(dot_q6_k_int8(raw, xb, d, bs, np.empty((n, 20), np.float32), True),
                                  dot_q6_k_tiled(raw, q, d, np.empty((n, 20), np.float32)))
    np.testing.assert_array_equal(dot_q6_k_int8(raw, xb, d, bs, np.empty((n, 20), np.float32), False),
                                  dot_q6_k(raw, q, d, bs, np.empty((n, 20), np.float32)))


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8, 12, 13])
def test_exact_product_routes_k_batches(n):
    """products.exact_product picks llama.cpp's kernel by batch size; the int8 quants are the activations."""
    x, q, _, d, bs = k_activations(n)
    act = products.quantize_for(Q.Q4_K, x)
    assert act.q.dtype == np.int8
    np.testing.assert_array_equal(act.q, q)
    for type_id in (Q.Q4_K, Q.Q6_K):
        raw = k_weights(type_id)
        got = products.exact_product(raw, type_id, act)
        if type_id == Q.Q4_K:
            want = dot_q4_k(raw, q, d, bs, np.empty((n, ROWS), np.float32), n - n % 4)
        elif n >= 8:
            want = dot_q6_k_tiled(raw, q, d, np.empty((n, ROWS), np.float32))
        else:
            want = dot_q6_k(raw, q, d, bs, np.empty((n, ROWS), np.float32))
        np.testing.assert_array_equal(got, want)

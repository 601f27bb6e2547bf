"""The exact products of 32-quant blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on int8 activations.

Same arithmetic as _exact.py's float kernels, so the same bits: per block, eight int32 lane sums
of four adjacent products (element order, as ggml's vectors hold them), one fused multiply-add of
d_w·d_x per lane, ggml's horizontal sum, and the Q8_1 min term on the side. The lane sums come from
_isa.dot4 (VNNI's vpdpbusd, or AVX2's maddubs + madd) on the packed bytes, instead of float
multiply-adds over decoded float32 lanes: four times fewer bytes of activations and no conversion
of the weights to float.

Unsigned quants (Q4_1, Q5_1) enter dot4 as they are. Offset ones (Q4_0: q - 8, Q5_0: q - 16)
enter unsigned, and offset × (lane sum of the activations) is subtracted: the same integer.
Q8_0's signed quants enter as _isa.unsigned_form(w): w + 128 where vpdpbusd serves (its −128·Σx
put in the starting sum, _isa.q8_base), else ggml's own |w| with w's sign moved onto x.

Every kernel takes the weight type as an argument, and is meant to be called with it as a constant
(products.q32_kernels' entry points, decode.py's step kernels): numba then compiles one copy per
type the model uses, the type folded away in it. The helpers are separate numba functions, which
LLVM inlines; only the 4 x 4 tile is inlined by numba, whose inlining costs seconds of compile
per call site while a call per tile measured 10 % slower.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import (
    fma32,
    half_pairs,
    lane,
    load_nibble_words,
    load_sbytes,
    load_u32,
    load_words,
    vfloat,
    vfma,
    vsplat,
    vzero,
)
from ._exact import (
    PARALLEL_MIN_ROWS,
    ROWS_PER_TASK,
    _half,
    _hsum,
    _parts,
    _q4_k_add,
    _q4_k_scales,
    _q4_k_sums,
    _q6_k_lanes,
    _q6_k_offsets,
    _q6_k_scales,
)
from ._isa import bit_bytes, dot4, iload, istore, izero, prefetch, q8_base, q8_sum, splat_i32, unsigned_form
from ._pairs import has_32_registers
from .types import Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

_LOW_NIBBLES = 0x0F0F0F0F
_ONES = 0x01010101

# One-token products stream each weight once from memory. The hardware prefetcher alone left a
# core at 7-8 GB/s; asking for the rows one task (16 rows) ahead of the ones being summed measured
# 1.6x faster on SmolLM2's layers (6.8 -> 11 GB/s on one thread, 11.5 -> 18 on two).
PREFETCH_ROWS = ROWS_PER_TASK


@njit(cache=True)
def _prefetch_rows(raw, first, count):
    """Hint the cache lines of rows first .. first+count-1 (clipped to the matrix). prefetch takes
    byte offsets into the whole C-contiguous matrix: a flat view (raw.reshape(-1)) was a call into
    numba's C helpers every few rows, 5 % of a four-sequence step."""
    width = raw.shape[1]
    for p in range(first * width, min(raw.shape[0] * width, (first + count) * width), 64):
        prefetch(raw, p)


@njit(cache=True)
def _lane_sums_row(xb, out, t):
    row, dst = xb[t], out[t]
    ones = splat_i32(_ONES)
    for b in range(xb.shape[1] // 32):
        istore(dst, 8 * b, dot4(izero(), ones, load_words(row, 32 * b)))


@njit(cache=True, parallel=True)
def lane_sums(xb):
    """Per token and block, the eight lane sums of the activations' bytes: [n, k/32 * 8] int32
    (tokens in parallel from PARALLEL_MIN_ROWS on)."""
    n, k = xb.shape
    out = np.empty((n, k // 4), np.int32)
    if n < PARALLEL_MIN_ROWS:
        for t in range(n):
            _lane_sums_row(xb, out, t)
    else:
        for t in prange(n):
            _lane_sums_row(xb, out, np.int64(t))
    return out


@njit(cache=True)
def block_bytes(type_id):
    """Bytes of one block. Every 32-quant block opens with its half scale d, then (Q4_1, Q5_1) its half min."""
    if type_id == Q8_0:
        return 34
    return 18 if type_id == Q4_0 else 20 if type_id == Q4_1 else 22 if type_id == Q5_0 else 24


@njit(cache=True)
def _block_quants(row, type_id, b):
    """Block b of a packed row: its 32 quants as bytes in element order (signed for Q8_0, else
    unsigned with Q4_0's / Q5_0's offset left in), its scale d and its min m (0 without one)."""
    base = b * block_bytes(type_id)
    if type_id == Q8_0:
        return load_words(row, base + 2), _half(row, base), np.float32(0.0)
    with_min = type_id == Q4_1 or type_id == Q5_1
    q = base + 4 if with_min else base + 2
    mn = _half(row, base + 2) if with_min else np.float32(0.0)
    if type_id == Q4_0 or type_id == Q4_1:
        u = load_nibble_words(row, q) & _LOW_NIBBLES
    else:
        u = (load_nibble_words(row, q + 4) & _LOW_NIBBLES) | bit_bytes(load_u32(row, q), 16)
    return u, _half(row, base), mn


@njit(cache=True)
def _lane_sum(type_id, w, w_u, xv, xsum, so):
    """The eight exact lane sums of a block's quants w (w_u = unsigned_form(w), Q8_0 only) with activation
    bytes xv, whose own lane sums are xsum[so:so+8] (for the offset of Q4_0 and Q5_0)."""
    if type_id == Q8_0:
        return q8_sum(q8_base(iload(xsum, so)), w_u, w, xv)
    s = dot4(izero(), w, xv)
    if type_id == Q4_0:
        s = s - (iload(xsum, so) << 3)
    elif type_id == Q5_0:
        s = s - (iload(xsum, so) << 4)
    return s


@njit(cache=True)
def _block_sum(row, type_id, b, x, o, xsum):
    """Block b of a packed row against the activation bytes x[o:o+32]: (lane sums, d_w, m_w)."""
    w, d, m = _block_quants(row, type_id, b)
    w_u = unsigned_form(w) if type_id == Q8_0 else w
    return _lane_sum(type_id, w, w_u, load_words(x, o), xsum, 8 * b), d, m


@njit(cache=True)
def _row_dot(row, type_id, x, xd, xs, xsum, nb):
    acc = vzero()
    mins = np.float32(0.0)
    with_min = type_id == Q4_1 or type_id == Q5_1
    for b in range(nb):
        s, d, m = _block_sum(row, type_id, b, x, 32 * b, xsum)
        acc = vfma(vsplat(d * xd[b]), vfloat(s), acc)
        if with_min:
            mins = fma32(m, xs[b], mins)
    return _hsum(acc) + mins


@njit(cache=True)
def _rows_x4(raw, type_id, xb, xd, xs, xsum, out, r, end, nb):
    """Rows r..end-1, four at a time: four independent fma chains (each row's own, in ggml's order)
    keep the float pipes busy where one row's chain would wait on each multiply-add's latency.
    The four rows' scales and mins of a block are converted by one instruction (half_pairs: d in
    even lanes, m in odd), and d·d_x formed and the mins accumulated lane by lane: each lane does
    its row's scalar arithmetic. One conversion per half measured 1.2x slower on AMD Zen 3."""
    with_min = type_id == Q4_1 or type_id == Q5_1
    size = block_bytes(type_id)
    while r + 4 <= end:
        _prefetch_rows(raw, r + PREFETCH_ROWS, 4)
        ra, rb, rc, rd = raw[r], raw[r + 1], raw[r + 2], raw[r + 3]
        a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
        mins = vzero()
        for b in range(nb):
            o, head = 32 * b, b * size
            dm = half_pairs(load_u32(ra, head), load_u32(rb, head), load_u32(rc, head), load_u32(rd, head))
            dd = dm * vsplat(xd[b])
            s0 = _block_sum(ra, type_id, b, xb, o, xsum)[0]  # its d and m unused: LLVM drops them
            s1 = _block_sum(rb, type_id, b, xb, o, xsum)[0]
            s2 = _block_sum(rc, type_id, b, xb, o, xsum)[0]
            s3 = _block_sum(rd, type_id, b, xb, o, xsum)[0]
            a0 = vfma(vsplat(lane(dd, 0)), vfloat(s0), a0)
            a1 = vfma(vsplat(lane(dd, 2)), vfloat(s1), a1)
            a2 = vfma(vsplat(lane(dd, 4)), vfloat(s2), a2)
            a3 = vfma(vsplat(lane(dd, 6)), vfloat(s3), a3)
            if with_min:
                mins = vfma(dm, vsplat(xs[b]), mins)
        if with_min:
            out[r], out[r + 1] = _hsum(a0) + lane(mins, 1), _hsum(a1) + lane(mins, 3)
            out[r + 2], out[r + 3] = _hsum(a2) + lane(mins, 5), _hsum(a3) + lane(mins, 7)
        else:
            out[r], out[r + 1], out[r + 2], out[r + 3] = _hsum(a0), _hsum(a1), _hsum(a2), _hsum(a3)
        r += 4
    while r < end:
        out[r] = _row_dot(raw[r], type_id, xb, xd, xs, xsum, nb)
        r += 1


@njit(cache=True, parallel=True)
def matvec_q32_int8(raw, type_id, xb, xd, xs, xsum, out):
    """out[r] = W[r] · x for one token; xb its int8 quants as bytes, xsum their lane sums."""
    rows = raw.shape[0]
    nb = xb.shape[0] // 32
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r, end = task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)
        if type_id == Q8_0 and not has_32_registers():
            # Without AVX-512, Q8_0 one row at a time: four rows of its signed blocks, each with
            # AVX2's sign step, measured slower. With it (and VNNI's w + 128, no sign step) four
            # rows are 2.7x faster: SmolLM2's head on AMD Zen 5, 2704 -> 987 us at -t 1.
            # The prefetch measured slower in a loop over one matrix (it stays cached) but 1.2x
            # faster in decoding, where the head (Gemma's 178 MB) comes from memory every token.
            _prefetch_rows(raw, r + PREFETCH_ROWS, ROWS_PER_TASK)
            for row in range(r, end):
                out[row] = _row_dot(raw[row], Q8_0, xb, xd, xs, xsum, nb)
        else:
            # The task's own rows too: the prefetch ahead covers the rows after a thread's first task,
            # not that one, and the layers' matrices are small (12-36 tasks), so their first rows on
            # each thread came from memory one miss after another. SmolLM2's step 1.04-1.08x faster
            # on AMD Zen 3; not for Q8_0's one-row path, whose head measured 2-3 % slower with it.
            _prefetch_rows(raw, r, end - r)
            _rows_x4(raw, type_id, xb, xd, xs, xsum, out, r, end, nb)
    return out


@njit(cache=True)
def _decode_row(row, type_id, nb, wu, ws, wo, wd, wm, i):
    """A row's quants as bytes at ws[wo:] (_block_quants'), and at wu[wo:] unsigned_form(w) for Q8_0."""
    for b in range(nb):
        w, d, m = _block_quants(row, type_id, b)
        wd[i, b], wm[i, b] = d, m
        istore(ws, wo + 8 * b, w)
        if type_id == Q8_0:
            istore(wu, wo + 8 * b, unsigned_form(w))


@njit(cache=True)
def _decoded_sum(type_id, wu, ws, wo, xflat, xo, sflat, so):
    """Lane sums of the decoded block at wo against activation bytes xflat[xo:] (lane sums sflat[so:])."""
    w = iload(ws, wo)
    w_u = iload(wu, wo) if type_id == Q8_0 else w
    return _lane_sum(type_id, w, w_u, load_words(xflat, xo), sflat, so)


@njit(cache=True)
def _decoded_dot_x4(type_id, wu, ws, wd, wm, i, xflat, xd, xs, sflat, t, out, r):
    """out[t:t+4, r] from decoded row i: its bytes loaded once for four tokens."""
    nb = wd.shape[1]
    k = nb * 32
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    m0 = m1 = m2 = m3 = np.float32(0.0)
    with_min = type_id == Q4_1 or type_id == Q5_1
    for b in range(nb):
        d = wd[i, b]
        wo = i * (k // 4) + 8 * b
        s0 = _decoded_sum(type_id, wu, ws, wo, xflat, t * k + 32 * b, sflat, t * (k // 4) + 8 * b)
        s1 = _decoded_sum(type_id, wu, ws, wo, xflat, (t + 1) * k + 32 * b, sflat, (t + 1) * (k // 4) + 8 * b)
        s2 = _decoded_sum(type_id, wu, ws, wo, xflat, (t + 2) * k + 32 * b, sflat, (t + 2) * (k // 4) + 8 * b)
        s3 = _decoded_sum(type_id, wu, ws, wo, xflat, (t + 3) * k + 32 * b, sflat, (t + 3) * (k // 4) + 8 * b)
        a0 = vfma(vsplat(d * xd[t, b]), vfloat(s0), a0)
        a1 = vfma(vsplat(d * xd[t + 1, b]), vfloat(s1), a1)
        a2 = vfma(vsplat(d * xd[t + 2, b]), vfloat(s2), a2)
        a3 = vfma(vsplat(d * xd[t + 3, b]), vfloat(s3), a3)
        if with_min:
            m = wm[i, b]
            m0 = fma32(m, xs[t, b], m0)
            m1 = fma32(m, xs[t + 1, b], m1)
            m2 = fma32(m, xs[t + 2, b], m2)
            m3 = fma32(m, xs[t + 3, b], m3)
    out[t, r] = _hsum(a0) + m0
    out[t + 1, r] = _hsum(a1) + m1
    out[t + 2, r] = _hsum(a2) + m2
    out[t + 3, r] = _hsum(a3) + m3


@njit(cache=True)
def _decoded_dot_x1(type_id, wu, ws, wd, wm, i, xflat, xd, xs, sflat, t, out, r):
    nb = wd.shape[1]
    k = nb * 32
    acc = vzero()
    mins = np.float32(0.0)
    with_min = type_id == Q4_1 or type_id == Q5_1
    for b in range(nb):
        s = _decoded_sum(type_id, wu, ws, i * (k // 4) + 8 * b, xflat, t * k + 32 * b, sflat, t * (k // 4) + 8 * b)
        acc = vfma(vsplat(wd[i, b] * xd[t, b]), vfloat(s), acc)
        if with_min:
            mins = fma32(wm[i, b], xs[t, b], mins)
    out[t, r] = _hsum(acc) + mins


@njit(cache=True)
def _x_block(type_id, xflat, sflat, xo, so):
    """A token's activation bytes of one block, and where its lane sums start from: minus the
    offset's term (8 or 16 x their own lane sums) for Q4_0 / Q5_0, else zero. dot4 adds the
    weights' products onto it, so the lane sums are _lane_sum's integers, formed once per token
    for every row of a tile instead of once per row."""
    xv = load_words(xflat, xo)
    if type_id == Q4_0:
        return xv, izero() - (iload(sflat, so) << 3)
    if type_id == Q5_0:
        return xv, izero() - (iload(sflat, so) << 4)
    if type_id == Q8_0:
        return xv, q8_base(iload(sflat, so))
    return xv, izero()


@njit(cache=True)
def _tile_sum(type_id, w, w_u, xv, base):
    if type_id == Q8_0:
        return q8_sum(base, w_u, w, xv)
    return dot4(base, w, xv)


@njit(cache=True)
def _row_step(type_id, wu, ws, wo, d, x0, x1, x2, x3, c0, c1, c2, c3, e0, e1, e2, e3, a0, a1, a2, a3):
    """One decoded block of a row (at wo, scale d) into its four tokens' accumulators."""
    w = iload(ws, wo)
    w_u = iload(wu, wo) if type_id == Q8_0 else w
    a0 = vfma(vsplat(d * e0), vfloat(_tile_sum(type_id, w, w_u, x0, c0)), a0)
    a1 = vfma(vsplat(d * e1), vfloat(_tile_sum(type_id, w, w_u, x1, c1)), a1)
    a2 = vfma(vsplat(d * e2), vfloat(_tile_sum(type_id, w, w_u, x2, c2)), a2)
    a3 = vfma(vsplat(d * e3), vfloat(_tile_sum(type_id, w, w_u, x3, c3)), a3)
    return a0, a1, a2, a3


@njit(cache=True)
def _min_step(m, s0, s1, s2, s3, m0, m1, m2, m3):
    return fma32(m, s0, m0), fma32(m, s1, m1), fma32(m, s2, m2), fma32(m, s3, m3)


@njit(cache=True)
def _store_x4(out, t, r, a0, a1, a2, a3, m0, m1, m2, m3):
    out[t, r], out[t + 1, r] = _hsum(a0) + m0, _hsum(a1) + m1
    out[t + 2, r], out[t + 3, r] = _hsum(a2) + m2, _hsum(a3) + m3


@njit(cache=True, inline="always")
def _decoded_tile(type_id, wu, ws, wd, wm, i, xflat, xd, xs, sflat, t, out, r):
    """out[t:t+4, r:r+4] from decoded rows i..i+3: sixteen independent fma chains (each output's own,
    blocks in order), every block's weight and activation bytes loaded once for the tile."""
    nb = wd.shape[1]
    k = nb * 32
    kw = k // 4
    with_min = type_id == Q4_1 or type_id == Q5_1
    a00, a01, a02, a03 = vzero(), vzero(), vzero(), vzero()
    a10, a11, a12, a13 = vzero(), vzero(), vzero(), vzero()
    a20, a21, a22, a23 = vzero(), vzero(), vzero(), vzero()
    a30, a31, a32, a33 = vzero(), vzero(), vzero(), vzero()
    z = np.float32(0.0)
    m00 = m01 = m02 = m03 = m10 = m11 = m12 = m13 = z
    m20 = m21 = m22 = m23 = m30 = m31 = m32 = m33 = z
    for b in range(nb):
        x0, c0 = _x_block(type_id, xflat, sflat, t * k + 32 * b, t * kw + 8 * b)
        x1, c1 = _x_block(type_id, xflat, sflat, (t + 1) * k + 32 * b, (t + 1) * kw + 8 * b)
        x2, c2 = _x_block(type_id, xflat, sflat, (t + 2) * k + 32 * b, (t + 2) * kw + 8 * b)
        x3, c3 = _x_block(type_id, xflat, sflat, (t + 3) * k + 32 * b, (t + 3) * kw + 8 * b)
        e0, e1, e2, e3 = xd[t, b], xd[t + 1, b], xd[t + 2, b], xd[t + 3, b]
        wo = i * kw + 8 * b
        a00, a01, a02, a03 = _row_step(type_id, wu, ws, wo, wd[i, b], x0, x1, x2, x3, c0, c1, c2, c3,
                                       e0, e1, e2, e3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _row_step(type_id, wu, ws, wo + kw, wd[i + 1, b], x0, x1, x2, x3, c0, c1, c2, c3,
                                       e0, e1, e2, e3, a10, a11, a12, a13)
        a20, a21, a22, a23 = _row_step(type_id, wu, ws, wo + 2 * kw, wd[i + 2, b], x0, x1, x2, x3, c0, c1, c2, c3,
                                       e0, e1, e2, e3, a20, a21, a22, a23)
        a30, a31, a32, a33 = _row_step(type_id, wu, ws, wo + 3 * kw, wd[i + 3, b], x0, x1, x2, x3, c0, c1, c2, c3,
                                       e0, e1, e2, e3, a30, a31, a32, a33)
        if with_min:
            s0, s1, s2, s3 = xs[t, b], xs[t + 1, b], xs[t + 2, b], xs[t + 3, b]
            m00, m01, m02, m03 = _min_step(wm[i, b], s0, s1, s2, s3, m00, m01, m02, m03)
            m10, m11, m12, m13 = _min_step(wm[i + 1, b], s0, s1, s2, s3, m10, m11, m12, m13)
            m20, m21, m22, m23 = _min_step(wm[i + 2, b], s0, s1, s2, s3, m20, m21, m22, m23)
            m30, m31, m32, m33 = _min_step(wm[i + 3, b], s0, s1, s2, s3, m30, m31, m32, m33)
    _store_x4(out, t, r, a00, a01, a02, a03, m00, m01, m02, m03)
    _store_x4(out, t, r + 1, a10, a11, a12, a13, m10, m11, m12, m13)
    _store_x4(out, t, r + 2, a20, a21, a22, a23, m20, m21, m22, m23)
    _store_x4(out, t, r + 3, a30, a31, a32, a33, m30, m31, m32, m33)


@njit(cache=True)
def _task_rows(raw, type_id, r0, count, n, nb, xflat, xd, xs, sflat, wu, ws, wd, wm, out):
    """Rows r0..r0+count-1 against every token: decoded once, then tiles of 4 rows x 4 tokens."""
    k = nb * 32
    for i in range(count):
        _decode_row(raw[r0 + i], type_id, nb, wu, ws, i * (k // 4), wd, wm, i)
    quads = count - count % 4
    for t in range(0, n - n % 4, 4):
        for i in range(0, quads, 4):
            _decoded_tile(type_id, wu, ws, wd, wm, i, xflat, xd, xs, sflat, t, out, r0 + i)
        for i in range(quads, count):
            _decoded_dot_x4(type_id, wu, ws, wd, wm, i, xflat, xd, xs, sflat, t, out, r0 + i)
    for t in range(n - n % 4, n):
        for i in range(count):
            _decoded_dot_x1(type_id, wu, ws, wd, wm, i, xflat, xd, xs, sflat, t, out, r0 + i)


@njit(cache=True, parallel=True)
def dot_q32_int8(raw, type_id, xb, xd, xs, xsum, out):
    """out[t, r] = W[r] · x[t] for a batch: a task decodes 16 rows to bytes once (an L1 scratch)
    and runs the tokens over them in tiles of 4 rows x 4 tokens. Flat arrays and offsets, no views,
    in the loops."""
    rows = raw.shape[0]
    n, k = xb.shape
    nb = k // 32
    xflat, sflat = xb.reshape(-1), xsum.reshape(-1)
    tasks, parts = _parts(rows)
    for part in prange(parts):
        wu = np.empty(ROWS_PER_TASK * (k // 4), np.int32)
        ws = np.empty(ROWS_PER_TASK * (k // 4), np.int32)
        wd = np.empty((ROWS_PER_TASK, nb), np.float32)
        wm = np.empty((ROWS_PER_TASK, nb), np.float32)
        for task in range(part * tasks // parts, (part + 1) * tasks // parts):
            r0 = task * ROWS_PER_TASK
            count = min(rows, r0 + ROWS_PER_TASK) - r0
            _task_rows(raw, type_id, r0, count, n, nb, xflat, xd, xs, sflat, wu, ws, wd, wm, out)
    return out


# --- K-quants: the one-token products of _exact.py with their lane sums from bytes ----------------
# The float kernels there form each 32-quant vector's lane sums with float multiply-adds over
# decoded lanes; here dot4 forms the same exact integers from the packed bytes. Everything after
# (scales, offsets, ggml's reductions) is _exact.py's own code, so the bits are its bits.


@njit(cache=True, inline="always")
def _q4_k_lane_sums(row, o, j, xb, e):
    """Lane sums of Q4_K sub-block j (chunk j/2's low or high nibbles) against xb[e:e+32]."""
    u = (load_words(row, o + 16 + 32 * (j >> 1)) >> (4 * (j & 1))) & _LOW_NIBBLES
    return vfloat(dot4(izero(), u, load_words(xb, e)))


@njit(cache=True, parallel=True)
def matvec_q4_k_int8(raw, xb, xd, xbs, out):
    """out[r] = W[r] · x for one token: _exact.matvec_q4_k's arithmetic (ggml's gemv)."""
    rows = raw.shape[0]
    nb = xb.shape[0] // 256
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            _prefetch_rows(raw, r + PREFETCH_ROWS, 1)
            row = raw[r]
            acc = np.float32(0.0)
            acc_min = np.float32(0.0)
            for b in range(nb):
                o = b * 144
                e = b * 256
                scales, mins = _q4_k_scales(row, o)
                sums = _q4_k_sums(
                    _q4_k_lane_sums(row, o, 0, xb, e), _q4_k_lane_sums(row, o, 1, xb, e + 32),
                    _q4_k_lane_sums(row, o, 2, xb, e + 64), _q4_k_lane_sums(row, o, 3, xb, e + 96),
                    _q4_k_lane_sums(row, o, 4, xb, e + 128), _q4_k_lane_sums(row, o, 5, xb, e + 160),
                    _q4_k_lane_sums(row, o, 6, xb, e + 192), _q4_k_lane_sums(row, o, 7, xb, e + 224),
                    scales, mins, xbs, b * 16)
                acc, acc_min = _q4_k_add(sums, _half(row, o) * xd[b], _half(row, o + 2) * xd[b], acc, acc_min, False)
            out[r] = acc - acc_min
    return out


@njit(cache=True, inline="always")
def _q6_k_lane_sums(row, o, v, xb, e):
    """Lane sums of Q6_K's 32-quant vector v (quants 0..63, offset left out) against xb[e:e+32]."""
    low = load_words(row, o + 64 * (v >> 2) + 32 * (v & 1)) >> (4 * ((v >> 1) & 1))
    high = load_words(row, o + 128 + 32 * (v >> 2)) >> (2 * (v & 3))
    q = (low & _LOW_NIBBLES) | ((high & 0x03030303) << 4)
    return vfloat(dot4(izero(), q, load_words(xb, e)))


@njit(cache=True, parallel=True)
def matvec_q6_k_int8(raw, xb, xd, xbs, out):
    """out[r] = W[r] · x for one token: _exact.matvec_q6_k's arithmetic."""
    rows = raw.shape[0]
    nb = xb.shape[0] // 256
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            _prefetch_rows(raw, r + PREFETCH_ROWS, 1)
            row = raw[r]
            acc = vzero()
            for b in range(nb):
                o = b * 210
                h0 = vzero()
                h1 = vzero()
                for v in range(4):
                    h0 = vfma(_q6_k_scales(row, o, v), _q6_k_lane_sums(row, o, v, xb, b * 256 + 32 * v), h0)
                for v in range(4, 8):
                    h1 = vfma(_q6_k_scales(row, o, v), _q6_k_lane_sums(row, o, v, xb, b * 256 + 32 * v), h1)
                offsets = _q6_k_offsets(xbs, b * 16, load_sbytes(row, o + 192), load_sbytes(row, o + 200))
                acc = vfma(vsplat(xd[b] * _half(row, o + 208)), _q6_k_lanes(h0, h1, offsets), acc)
            out[r] = _hsum(acc)
    return out

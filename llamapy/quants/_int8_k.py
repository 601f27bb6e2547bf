"""The batch products of K-quant weights (Q4_K, Q6_K) on int8 activations.

Same arithmetic as the one-token kernels of _int8.py and ggml's batch kernels: the integer sums
each float operation takes are formed exactly from bytes with _isa.dot4 (VNNI's vpdpbusd, or
AVX2's maddubs + madd), and what follows them (scales, mins, d·d_x, ggml's reductions) is the float
code of _exact.py in the same order, so the bits are ggml's.

A task decodes 16 rows once into byte scratch (flat int32 arrays, eight words per 32 quants, in
element order) and runs the tokens over them four at a time, as _int8.dot_q32_int8 does:

- Q4_K (ggml's repacked 8x8 gemm and gemv): per token and superblock, the eight sub-block dots
  (quants 0..15 against the activation bytes) are reduced to one vector, scaled by the sub-block
  scales, and paired: [Σ scale·dot, Σ min·bsum] per pair of sub-blocks, exact integers; then
  _exact._q4_k_add's arithmetic (one fma per pair for the gemm tokens, four tokens side by side
  in one vector; one per superblock for the gemv ones).
- Q6_K under 8 tokens (ggml_vec_dot_q6_K_q8_K): per lane, Σ scale·(lane dot of quants 0..63) over
  vectors 0-3 and 4-7, less 32·bsums·scales, then one fma per lane and superblock.
- Q6_K from 8 tokens (ggml's tiled K-quant matmul): per superblock the whole integer
  Σ scale·(q - 32)·x, rounded to float32 once, times d, then one fma with d_x (four tokens in one vector).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._bits import (
    _pairwise,
    f32x8,
    fma32,
    i32x8,
    lane,
    load_words,
    reduce_add,
    vfloat,
    vfma,
    vint,
    vload,
    vpair,
    vsplat,
    vzero,
)
from ._exact import (
    ROWS_PER_TASK,
    _half,
    _hsum,
    _parts,
    _q4_k_add,
    _q4_k_scales,
    _q6_k_lanes,
    _q6_k_offsets,
    _q6_k_scales,
)
from ._isa import dot4, iload, istore, izero

_LOW_NIBBLES = 0x0F0F0F0F
_V8I = ir.VectorType(ir.IntType(32), 8)


def _mask(values):
    return ir.Constant(_V8I, [int(v) for v in values])


# The int32 twins of _bits' float hadd, pair_sums and add_halves (integer adds: any order is exact).
ihadd = _pairwise("ihadd", [0, 2, 8, 10, 4, 6, 12, 14], [1, 3, 9, 11, 5, 7, 13, 15],
                  "_mm256_hadd_epi32: [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7].", i32x8)
ipair_sums = _pairwise("ipair_sums", [0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15],
                       "[a0+a1, a2+a3, a4+a5, a6+a7, b0+b1, b2+b3, b4+b5, b6+b7].", i32x8)
iadd_halves = _pairwise("iadd_halves", [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15],
                        "[lo(a) + hi(a), lo(b) + hi(b)]: the 128-bit halves of a, and of b, added.", i32x8)


def _shuffle_i32(name, mask, doc):
    """An intrinsic f(a, b) = shuffle(a, b, mask) on int32 lanes (b's lanes numbered 8..15)."""

    def typer(typingctx, a, b):
        if not (a == i32x8 and b == i32x8):
            return None

        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[1], _mask(mask))

        return i32x8(a, b), codegen

    typer.__name__, typer.__doc__ = name, doc
    return intrinsic(typer)


unpack_lo32 = _shuffle_i32("unpack_lo32", [0, 8, 1, 9, 4, 12, 5, 13], "_mm256_unpacklo_epi32")
unpack_hi32 = _shuffle_i32("unpack_hi32", [2, 10, 3, 11, 6, 14, 7, 15], "_mm256_unpackhi_epi32")
unpack_lo64 = _shuffle_i32("unpack_lo64", [0, 1, 8, 9, 4, 5, 12, 13], "_mm256_unpacklo_epi64")
unpack_hi64 = _shuffle_i32("unpack_hi64", [2, 3, 10, 11, 6, 7, 14, 15], "_mm256_unpackhi_epi64")


@intrinsic
def load4x2(typingctx, arr, i):
    """[arr[i:i+4], arr[i:i+4]] of a contiguous float32 vector (no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1 and arr.layout == "C"
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        four = builder.load(builder.bitcast(ptr, ir.VectorType(ir.FloatType(), 4).as_pointer()), align=4)
        return builder.shuffle_vector(four, four, _mask([0, 1, 2, 3, 0, 1, 2, 3]))

    return f32x8(arr, i), codegen


@njit(cache=True, inline="always")
def _reduce8(v0, v1, v2, v3, v4, v5, v6, v7):
    """[Σ lanes of v0, ..., Σ lanes of v7]."""
    return iadd_halves(ihadd(ihadd(v0, v1), ihadd(v2, v3)), ihadd(ihadd(v4, v5), ihadd(v6, v7)))


@njit(cache=True)
def _int_bsums(xbs):
    """Q8_K's 16-sums (float32, exact integers) as int32 [n, k/16]."""
    return xbs.astype(np.int32)


# --- Q4_K -------------------------------------------------------------------------------------------


@njit(cache=True)
def _q4_k_bsums(xbs):
    """Per token and sub-block of 32, the sum of its two 16-sums: int32 [n, k/32]."""
    n, groups = xbs.shape
    out = np.empty((n, groups // 2), np.int32)
    for t in range(n):
        for g in range(groups // 2):
            out[t, g] = np.int32(xbs[t, 2 * g]) + np.int32(xbs[t, 2 * g + 1])
    return out


@njit(cache=True, inline="always")
def _decode_q4_k(row, nb, wq, wo, wsc, wmn, so, wd, wdmin, i):
    """A row's quants (0..15, element order, eight words per sub-block) at wq[wo:], its sub-block
    scales and mins as int32 at wsc[so:] and wmn[so:] (eight per superblock), d and dmin."""
    for b in range(nb):
        o = b * 144
        wd[i, b] = _half(row, o)
        wdmin[i, b] = _half(row, o + 2)
        scales, mins = _q4_k_scales(row, o)
        istore(wsc, so + 8 * b, vint(scales))
        istore(wmn, so + 8 * b, vint(mins))
        for j in range(8):
            u = (load_words(row, o + 16 + 32 * (j >> 1)) >> (4 * (j & 1))) & _LOW_NIBBLES
            istore(wq, wo + 64 * b + 8 * j, u)


@njit(cache=True, inline="always")
def _q4_k_dots(w0, w1, w2, w3, w4, w5, w6, w7, xflat, xo, sc, mn, bs):
    """[Σ scale·dot of sub-block pairs 0-1 .. 6-7, Σ min·bsum of the same pairs], exact int32, from
    the eight decoded sub-blocks w0..w7 and the activation bytes at xflat[xo:]."""
    dots = _reduce8(dot4(izero(), w0, load_words(xflat, xo)), dot4(izero(), w1, load_words(xflat, xo + 32)),
                    dot4(izero(), w2, load_words(xflat, xo + 64)), dot4(izero(), w3, load_words(xflat, xo + 96)),
                    dot4(izero(), w4, load_words(xflat, xo + 128)), dot4(izero(), w5, load_words(xflat, xo + 160)),
                    dot4(izero(), w6, load_words(xflat, xo + 192)), dot4(izero(), w7, load_words(xflat, xo + 224)))
    return ipair_sums(dots * sc, mn * bs)


@njit(cache=True, inline="always")
def _q4_k_x4(wq, wo, wsc, wmn, so, wd, wdmin, i, xflat, xdt, bflat, t, k, out, r):
    """out[t:t+4, r] for four gemm tokens from decoded row i, its bytes loaded once for the four.

    _q4_k_add's gemm arithmetic for the four side by side: lanes 0-3 the tokens' sums, lanes 4-7
    their mins, one vector fma per pair of sub-blocks (each lane the scalar fma it stands for)."""
    nb = wd.shape[1]
    acc = vzero()
    g = k // 32
    for b in range(nb):
        e = wo + 64 * b
        w0, w1, w2, w3 = iload(wq, e), iload(wq, e + 8), iload(wq, e + 16), iload(wq, e + 24)
        w4, w5, w6, w7 = iload(wq, e + 32), iload(wq, e + 40), iload(wq, e + 48), iload(wq, e + 56)
        sc, mn = iload(wsc, so + 8 * b), iload(wmn, so + 8 * b)
        xo, bo = t * k + 256 * b, t * g + 8 * b
        p0 = _q4_k_dots(w0, w1, w2, w3, w4, w5, w6, w7, xflat, xo, sc, mn, iload(bflat, bo))
        p1 = _q4_k_dots(w0, w1, w2, w3, w4, w5, w6, w7, xflat, xo + k, sc, mn, iload(bflat, bo + g))
        p2 = _q4_k_dots(w0, w1, w2, w3, w4, w5, w6, w7, xflat, xo + 2 * k, sc, mn, iload(bflat, bo + 2 * g))
        p3 = _q4_k_dots(w0, w1, w2, w3, w4, w5, w6, w7, xflat, xo + 3 * k, sc, mn, iload(bflat, bo + 3 * g))
        # transposed within each half: pair p of the four tokens' sums, then of their mins
        a01, a23, b01, b23 = unpack_lo32(p0, p1), unpack_lo32(p2, p3), unpack_hi32(p0, p1), unpack_hi32(p2, p3)
        scale = vpair(wd[i, b], wdmin[i, b]) * load4x2(xdt[b], t)  # d·x_d and dmin·x_d per token
        acc = vfma(vfloat(unpack_lo64(a01, a23)), scale, acc)
        acc = vfma(vfloat(unpack_hi64(a01, a23)), scale, acc)
        acc = vfma(vfloat(unpack_lo64(b01, b23)), scale, acc)
        acc = vfma(vfloat(unpack_hi64(b01, b23)), scale, acc)
    for u in range(4):
        out[t + u, r] = lane(acc, u) - lane(acc, 4 + u)


@njit(cache=True, inline="always")
def _q4_k_x1(wq, wo, wsc, wmn, so, wd, wdmin, i, xflat, xd, bflat, t, k, out, r):
    """out[t, r] for a gemv token (one fma per superblock)."""
    nb = wd.shape[1]
    acc = acc_min = np.float32(0.0)
    for b in range(nb):
        e = wo + 64 * b
        sums = _q4_k_dots(iload(wq, e), iload(wq, e + 8), iload(wq, e + 16), iload(wq, e + 24),
                          iload(wq, e + 32), iload(wq, e + 40), iload(wq, e + 48), iload(wq, e + 56),
                          xflat, t * k + 256 * b, iload(wsc, so + 8 * b), iload(wmn, so + 8 * b),
                          iload(bflat, t * (k // 32) + 8 * b))
        acc, acc_min = _q4_k_add(vfloat(sums), wd[i, b] * xd[t, b], wdmin[i, b] * xd[t, b], acc, acc_min, False)
    out[t, r] = acc - acc_min


@njit(cache=True, parallel=True)
def dot_q4_k_int8(raw, xb, xd, xbs, out, gemv_from):
    """out[t, r] = W[r] · x[t] for Q4_K weights and Q8_K activations (xb: the int8 quants as bytes),
    as ggml's repacked 8x8 kernels: tokens before gemv_from (a multiple of 4) take the gemm, one fma
    per 64-quant pair of sub-blocks; the others the gemv, one fma per superblock. Mins likewise."""
    rows = raw.shape[0]
    n, k = xb.shape
    nb = k // 256
    xflat = xb.reshape(-1)
    bflat = _q4_k_bsums(xbs).reshape(-1)
    xdt = np.ascontiguousarray(xd.T)  # [nb, n]: four tokens' x_d in one load
    tasks, parts = _parts(rows)
    for part in prange(parts):
        wq = np.empty(ROWS_PER_TASK * (k // 4), np.int32)
        wsc = np.empty(ROWS_PER_TASK * nb * 8, np.int32)
        wmn = np.empty(ROWS_PER_TASK * nb * 8, np.int32)
        wd = np.empty((ROWS_PER_TASK, nb), np.float32)
        wdmin = np.empty((ROWS_PER_TASK, nb), np.float32)
        for task in range(part * tasks // parts, (part + 1) * tasks // parts):
            r0 = task * ROWS_PER_TASK
            count = min(rows, r0 + ROWS_PER_TASK) - r0
            for i in range(count):
                _decode_q4_k(raw[r0 + i], nb, wq, i * (k // 4), wsc, wmn, i * nb * 8, wd, wdmin, i)
            for t in range(0, gemv_from, 4):
                for i in range(count):
                    _q4_k_x4(wq, i * (k // 4), wsc, wmn, i * nb * 8, wd, wdmin, i, xflat, xdt, bflat, t, k,
                             out, r0 + i)
            for t in range(gemv_from, n):
                for i in range(count):
                    _q4_k_x1(wq, i * (k // 4), wsc, wmn, i * nb * 8, wd, wdmin, i, xflat, xd, bflat, t, k,
                             out, r0 + i)
    return out


# --- Q6_K -------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _decode_q6_k(row, nb, wq, wo, wsp, po, wsc, wd, i):
    """A row's quants (0..63, offset left out; element order, eight words per 32-quant vector) at
    wq[wo:], per vector its lane scales as int32 at wsp[po:] (lanes 0-3 group 2v, 4-7 group 2v+1),
    its sixteen scales per superblock (float, for _q6_k_offsets) in wsc[i], d in wd[i]."""
    for b in range(nb):
        o = b * 210
        wd[i, b] = _half(row, o + 208)
        for j in range(16):
            wsc[i, 16 * b + j] = np.float32(np.int8(row[o + 192 + j]))
        for v in range(8):
            low = load_words(row, o + 64 * (v >> 2) + 32 * (v & 1)) >> (4 * ((v >> 1) & 1))
            high = load_words(row, o + 128 + 32 * (v >> 2)) >> (2 * (v & 3))
            istore(wq, wo + 64 * b + 8 * v, (low & _LOW_NIBBLES) | ((high & 0x03030303) << 4))
            istore(wsp, po + 64 * b + 8 * v, vint(_q6_k_scales(row, o, v)))


@njit(cache=True, inline="always")
def _q6_k_scaled(wq, wsp, e, p, xflat, xo):
    """Σ over four vectors from wq[e:] of their lane scales · lane dots with xflat[xo:]: exact int32."""
    h = iload(wsp, p) * dot4(izero(), iload(wq, e), load_words(xflat, xo))
    h = h + iload(wsp, p + 8) * dot4(izero(), iload(wq, e + 8), load_words(xflat, xo + 32))
    h = h + iload(wsp, p + 16) * dot4(izero(), iload(wq, e + 16), load_words(xflat, xo + 64))
    return h + iload(wsp, p + 24) * dot4(izero(), iload(wq, e + 24), load_words(xflat, xo + 96))


@njit(cache=True, inline="always")
def _q6_k_x1(wq, wo, wsp, po, wsc, wd, i, xflat, xd, xbs, t, k, out, r):
    """out[t, r] from decoded row i: _exact's ggml_vec_dot_q6_K_q8_K arithmetic."""
    acc = vzero()
    for b in range(wd.shape[1]):
        e, p, xo = wo + 64 * b, po + 64 * b, t * k + 256 * b
        h0 = _q6_k_scaled(wq, wsp, e, p, xflat, xo)
        h1 = _q6_k_scaled(wq, wsp, e + 32, p + 32, xflat, xo + 128)
        offsets = _q6_k_offsets(xbs[t], b * 16, vload(wsc[i], 16 * b), vload(wsc[i], 16 * b + 8))
        acc = vfma(vsplat(xd[t, b] * wd[i, b]), _q6_k_lanes(vfloat(h0), vfloat(h1), offsets), acc)
    out[t, r] = _hsum(acc)


# --- Q6_K, tiled ------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _tiled_lanes(wq, wsp, e, p, xflat, xo, sc_lo, sc_hi, bflat, bo):
    """Lanes whose sum is Σ scale·(q - 32)·x over one superblock: Σ scale·q·x less
    32·Σ scale·bsum, exact int32."""
    h = _q6_k_scaled(wq, wsp, e, p, xflat, xo) + _q6_k_scaled(wq, wsp, e + 32, p + 32, xflat, xo + 128)
    off = sc_lo * iload(bflat, bo) + sc_hi * iload(bflat, bo + 8)
    return h - (off << 5)


@njit(cache=True, inline="always")
def _tiled_add(total, d, xd, acc):
    """acc + (d · total) · xd, the superblock's integer total rounded to float32 once."""
    return fma32(d * np.float32(total), xd, acc)


@njit(cache=True, inline="always")
def _q6_k_tiled_x4(wq, wo, wsp, po, wsi, so, wd, i, xflat, xdt, bflat, t, k, out, r):
    """out[t:t+4, r] from decoded row i: _tiled_add for the four tokens side by side in lanes 0-3."""
    acc = vzero()
    g = k // 16
    for b in range(wd.shape[1]):
        e, p, xo, bo = wo + 64 * b, po + 64 * b, t * k + 256 * b, t * g + 16 * b
        sc_lo, sc_hi = iload(wsi, so + 16 * b), iload(wsi, so + 16 * b + 8)
        h0 = _tiled_lanes(wq, wsp, e, p, xflat, xo, sc_lo, sc_hi, bflat, bo)
        h1 = _tiled_lanes(wq, wsp, e, p, xflat, xo + k, sc_lo, sc_hi, bflat, bo + g)
        h2 = _tiled_lanes(wq, wsp, e, p, xflat, xo + 2 * k, sc_lo, sc_hi, bflat, bo + 2 * g)
        h3 = _tiled_lanes(wq, wsp, e, p, xflat, xo + 3 * k, sc_lo, sc_hi, bflat, bo + 3 * g)
        halves = ihadd(ihadd(h0, h1), ihadd(h2, h3))  # [each token's lanes 0-3 summed, then lanes 4-7]
        totals = vfloat(iadd_halves(halves, halves))  # lane u: token t+u's total (lanes 4-7 again)
        acc = vfma(vsplat(wd[i, b]) * totals, load4x2(xdt[b], t), acc)
    for u in range(4):
        out[t + u, r] = lane(acc, u)


@njit(cache=True, inline="always")
def _q6_k_tiled_x1(wq, wo, wsp, po, wsi, so, wd, i, xflat, xd, bflat, t, k, out, r):
    acc = np.float32(0.0)
    g = k // 16
    for b in range(wd.shape[1]):
        h = _tiled_lanes(wq, wsp, wo + 64 * b, po + 64 * b, xflat, t * k + 256 * b,
                         iload(wsi, so + 16 * b), iload(wsi, so + 16 * b + 8), bflat, t * g + 16 * b)
        acc = _tiled_add(reduce_add(h), wd[i, b], xd[t, b], acc)
    out[t, r] = acc


@njit(cache=True, parallel=True)
def dot_q6_k_int8(raw, xb, xd, xbs, out, tiled):
    """out[t, r] = W[r] · x[t] for Q6_K weights and Q8_K activations (xb: the int8 quants as bytes):
    with the arithmetic of ggml's tiled K-quant matmul (tiled, llama.cpp's path for batches of 8
    tokens or more), else of ggml_vec_dot_q6_K_q8_K (AVX2) for each token."""
    rows = raw.shape[0]
    n, k = xb.shape
    nb = k // 256
    xflat = xb.reshape(-1)
    bflat = _int_bsums(xbs).reshape(-1)
    xdt = np.ascontiguousarray(xd.T)
    tasks, parts = _parts(rows)
    for part in prange(parts):
        wq = np.empty(ROWS_PER_TASK * (k // 4), np.int32)
        wsp = np.empty(ROWS_PER_TASK * nb * 64, np.int32)
        wsc = np.empty((ROWS_PER_TASK, nb * 16), np.float32)
        wsi = np.empty(ROWS_PER_TASK * nb * 16, np.int32)
        wd = np.empty((ROWS_PER_TASK, nb), np.float32)
        for task in range(part * tasks // parts, (part + 1) * tasks // parts):
            r0 = task * ROWS_PER_TASK
            count = min(rows, r0 + ROWS_PER_TASK) - r0
            for i in range(count):
                _decode_q6_k(raw[r0 + i], nb, wq, i * (k // 4), wsp, i * nb * 64, wsc, wd, i)
                for j in range(nb * 16):
                    wsi[i * nb * 16 + j] = np.int32(wsc[i, j])
            if not tiled:
                for t in range(n):
                    for i in range(count):
                        _q6_k_x1(wq, i * (k // 4), wsp, i * nb * 64, wsc, wd, i, xflat, xd, xbs, t, k, out, r0 + i)
                continue
            for t in range(0, n - n % 4, 4):
                for i in range(count):
                    _q6_k_tiled_x4(wq, i * (k // 4), wsp, i * nb * 64, wsi, i * nb * 16, wd, i, xflat, xdt, bflat,
                                   t, k, out, r0 + i)
            for t in range(n - n % 4, n):
                for i in range(count):
                    _q6_k_tiled_x1(wq, i * (k // 4), wsp, i * nb * 64, wsi, i * nb * 16, wd, i, xflat, xd, bflat,
                                   t, k, out, r0 + i)
    return out

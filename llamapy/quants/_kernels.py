"""numba kernels: block decoding, activation fake-quantization, fused mat-vec.

Everything numba compiles lives in this one file (plus the intrinsics in
_bits.py) because numba's cache only notices edits to the file that defines a
cached kernel: splitting helpers into other modules would let stale machine
code survive an edit.

Decoders write one row of float32 and are compiled without fastmath so their
output is bit-identical to ggml's dequantize_row_* (same products, same order).
The mat-vec kernel reuses them: it decodes a row into an L1-resident scratch
buffer and runs a plain float32 dot.  That measured as fast as a per-format
fused decode-and-dot (~9 vs ~9.5 GB/s on Q4_1), with one decoder per format
serving dequantize, get_rows, matmul tiles and mat-vec alike.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ._bits import f16_to_f32, f32_as_u32, load_f32, load_u16, load_u32, round_f16, shr32, u32_as_f32
from .types import BF16, F16, F32, IQ4_NL, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, Q8_1, Q8_K

# ---------------------------------------------------------------- helpers


@njit(cache=True, inline="always")
def _half(row, o):
    return f16_to_f32(load_u16(row, o))


@njit(cache=True, inline="always")
def _geometry(row, out, type_size, block_values):
    """(number of blocks, `one`) for one row; `one` is 1 for any valid row.

    Inner loops run to `16 * one` rather than a literal 16 on purpose: with a
    literal trip count LLVM fully unrolls them before the loop vectoriser runs,
    and the unrolled code stays scalar because nothing proves `out` does not
    alias `row`.  A run-time bound gets vectorised with a run-time alias check
    (2-3x faster decoding, measured).  Index offsets stay literal: a symbolic
    distance between two stores into `out` blocks vectorisation too.
    """
    n_blocks = row.shape[0] // type_size
    return n_blocks, out.shape[0] // max(n_blocks * block_values, 1)


# ---------------------------------------------------------------- 32-wide blocks


@njit(cache=True)
def _dec_q4_0(row, out):
    n_blocks, one = _geometry(row, out, 18, 32)
    for b in range(n_blocks):
        o, y = b * 18, b * 32
        d = _half(row, o)
        for j in range(16 * one):
            v = row[o + 2 + j]
            out[y + j] = np.float32((v & 15) - 8) * d
            out[y + 16 + j] = np.float32((v >> 4) - 8) * d


@njit(cache=True)
def _dec_q4_1(row, out, corr):
    """Also returns sum(min[b] * corr[b]), the Q8_1 `s` correction (see
    activations.py); done here because the mins are already loaded."""
    n_blocks, one = _geometry(row, out, 20, 32)
    extra = np.float32(0.0)
    for b in range(n_blocks):
        o, y = b * 20, b * 32
        d, m = _half(row, o), _half(row, o + 2)
        if b < corr.shape[0]:
            extra += m * corr[b]
        for j in range(16 * one):
            v = row[o + 4 + j]
            out[y + j] = d * np.float32(v & 15) + m
            out[y + 16 + j] = d * np.float32(v >> 4) + m
    return extra


@njit(cache=True, inline="always")
def _q5_values(v, qh, j):
    """Both 5-bit values held by nibble byte j; qh carries their 5th bits."""
    lo = (v & 15) | ((shr32(qh, j) & 1) << 4)
    hi = shr32(v, 4) | (shr32(qh, j + 12) & 16)
    return lo, hi


@njit(cache=True)
def _dec_q5_0(row, out):
    n_blocks, one = _geometry(row, out, 22, 32)
    for b in range(n_blocks):
        o, y = b * 22, b * 32
        d = _half(row, o)
        qh = load_u32(row, o + 2)
        for j in range(16 * one):
            lo, hi = _q5_values(row[o + 6 + j], qh, j)
            out[y + j] = np.float32(lo - 16) * d
            out[y + 16 + j] = np.float32(hi - 16) * d


@njit(cache=True)
def _dec_q5_1(row, out, corr):
    """Returns the Q8_1 `s` correction like _dec_q4_1."""
    n_blocks, one = _geometry(row, out, 24, 32)
    extra = np.float32(0.0)
    for b in range(n_blocks):
        o, y = b * 24, b * 32
        d, m = _half(row, o), _half(row, o + 2)
        if b < corr.shape[0]:
            extra += m * corr[b]
        qh = load_u32(row, o + 4)
        for j in range(16 * one):
            lo, hi = _q5_values(row[o + 8 + j], qh, j)
            out[y + j] = d * np.float32(lo) + m
            out[y + 16 + j] = d * np.float32(hi) + m
    return extra


@njit(cache=True)
def _dec_q8_0(row, out):
    n_blocks, one = _geometry(row, out, 34, 32)
    for b in range(n_blocks):
        o, y = b * 34, b * 32
        d = _half(row, o)
        for j in range(32 * one):
            out[y + j] = np.float32(np.int8(row[o + 2 + j])) * d


# IQ4_NL's 16 non-linear levels (ggml's kvalues_iq4nl), indexed by each 4-bit code.
_IQ4_NL_LEVELS = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32
)


@njit(cache=True)
def _dec_iq4_nl(row, out):
    n_blocks, one = _geometry(row, out, 18, 32)
    levels = _IQ4_NL_LEVELS
    for b in range(n_blocks):
        o, y = b * 18, b * 32
        d = _half(row, o)
        for j in range(16 * one):
            v = row[o + 2 + j]
            out[y + j] = d * levels[v & 15]
            out[y + 16 + j] = d * levels[v >> 4]


# ---------------------------------------------------------------- 256-wide super-blocks
# Q2_K, Q3_K and Q6_K are decoded in 16 groups of 16 values, each group with
# its own scale; Q4_K and Q5_K in 4 chunks of 64 (two 32-value halves).


@njit(cache=True)
def _dec_q2_k(row, out):
    n_blocks, one = _geometry(row, out, 84, 256)
    for b in range(n_blocks):
        o, y = b * 84, b * 256
        d, dmin = _half(row, o + 80), _half(row, o + 82)
        for g in range(0, 16, 2):  # two groups share 32 quant bytes and a shift
            s0, s1 = row[o + g], row[o + g + 1]
            d0, m0 = d * np.float32(s0 & 15), dmin * np.float32(s0 >> 4)
            d1, m1 = d * np.float32(s1 & 15), dmin * np.float32(s1 >> 4)
            q0, shift, yg = o + 16 + (g >> 3) * 32, g & 6, y + g * 16
            for j in range(16 * one):
                out[yg + j] = d0 * np.float32(shr32(row[q0 + j], shift) & 3) - m0
                out[yg + 16 + j] = d1 * np.float32(shr32(row[q0 + 16 + j], shift) & 3) - m1


@njit(cache=True, inline="always")
def _q3_k_scale(row, s0, g):
    # 16 six-bit scales: low nibbles in bytes 0..7, high 2-bit pairs in 8..11
    lo = (row[s0 + (g & 7)] >> (4 * (g >> 3))) & 15
    hi = (row[s0 + 8 + (g & 3)] >> (2 * (g >> 2))) & 3
    return np.float32((lo | (hi << 4)) - 32)


@njit(cache=True, inline="always")
def _q3_k_value(row, q, h, shift, bit):
    # a cleared high bit means "subtract 4" (ggml's convention)
    return np.float32((shr32(row[q], shift) & 3) - 4 + ((shr32(row[h], bit) & 1) << 2))


@njit(cache=True)
def _dec_q3_k(row, out):
    n_blocks, one = _geometry(row, out, 110, 256)
    for b in range(n_blocks):
        o, y = b * 110, b * 256
        d = _half(row, o + 108)
        for g in range(0, 16, 2):  # two groups share 32 quant bytes and a shift
            d0, d1 = d * _q3_k_scale(row, o + 96, g), d * _q3_k_scale(row, o + 96, g + 1)
            q0 = o + 32 + (g >> 3) * 32
            shift, bit, yg = g & 6, (g >> 3) * 4 + (g >> 1 & 3), y + g * 16
            for j in range(16 * one):
                out[yg + j] = d0 * _q3_k_value(row, q0 + j, o + j, shift, bit)
                out[yg + 16 + j] = d1 * _q3_k_value(row, q0 + 16 + j, o + 16 + j, shift, bit)


@njit(cache=True, inline="always")
def _k4_scale_min(row, s0, j):
    if j < 4:
        return row[s0 + j] & 63, row[s0 + j + 4] & 63
    sc = (row[s0 + j + 4] & 15) | ((row[s0 + j - 4] >> 6) << 4)
    m = (row[s0 + j + 4] >> 4) | ((row[s0 + j] >> 6) << 4)
    return sc, m


@njit(cache=True, inline="always")
def _k4_chunk_scales(row, s0, d, dmin, c):
    """Scales and mins of the two 32-value halves of chunk c (Q4_K, Q5_K)."""
    sc0, m0 = _k4_scale_min(row, s0, 2 * c)
    sc1, m1 = _k4_scale_min(row, s0, 2 * c + 1)
    return d * np.float32(sc0), dmin * np.float32(m0), d * np.float32(sc1), dmin * np.float32(m1)


@njit(cache=True)
def _dec_q4_k(row, out):
    n_blocks, one = _geometry(row, out, 144, 256)
    for b in range(n_blocks):
        o, y = b * 144, b * 256
        d, dmin = _half(row, o), _half(row, o + 2)
        for c in range(4):
            d0, n0, d1, n1 = _k4_chunk_scales(row, o + 4, d, dmin, c)
            q0, yc = o + 16 + 32 * c, y + 64 * c
            for j in range(32 * one):
                v = row[q0 + j]
                out[yc + j] = d0 * np.float32(v & 15) - n0
                out[yc + 32 + j] = d1 * np.float32(v >> 4) - n1


@njit(cache=True)
def _dec_q5_k(row, out):
    n_blocks, one = _geometry(row, out, 176, 256)
    for b in range(n_blocks):
        o, y = b * 176, b * 256
        d, dmin = _half(row, o), _half(row, o + 2)
        for c in range(4):
            d0, n0, d1, n1 = _k4_chunk_scales(row, o + 4, d, dmin, c)
            q0, yc = o + 48 + 32 * c, y + 64 * c
            for j in range(32 * one):
                v, h = row[q0 + j], row[o + 16 + j]
                lo = (v & 15) | ((shr32(h, 2 * c) & 1) << 4)
                hi = shr32(v, 4) | ((shr32(h, 2 * c + 1) & 1) << 4)
                out[yc + j] = d0 * np.float32(lo) - n0
                out[yc + 32 + j] = d1 * np.float32(hi) - n1


@njit(cache=True, inline="always")
def _q6_k_scales(row, s0, d):
    """The 4 scales used by one 16-byte run: groups s0, s0+2, s0+4, s0+6."""
    return (
        d * np.float32(np.int8(row[s0])),
        d * np.float32(np.int8(row[s0 + 2])),
        d * np.float32(np.int8(row[s0 + 4])),
        d * np.float32(np.int8(row[s0 + 6])),
    )


@njit(cache=True, inline="always")
def _q6_k(lo4, hi2):
    return np.float32(np.int32(lo4 | (hi2 << 4)) - 32)


@njit(cache=True)
def _dec_q6_k(row, out):
    # One pass over 16 low-bit bytes, 16 more and 16 high-bit bytes yields 4
    # runs of 16 values (the 4 two-bit fields of qh); 4 stores per iteration
    # vectorise far better here than 4 separate loops (measured 5x).
    n_blocks, one = _geometry(row, out, 210, 256)
    for b in range(n_blocks):
        o, y = b * 210, b * 256
        d = _half(row, o + 208)
        for half in range(2):
            ql0, qh0, yh = o + 64 * half, o + 128 + 32 * half, y + 128 * half
            for part in range(2):
                s0, s1, s2, s3 = _q6_k_scales(row, o + 192 + 8 * half + part, d)
                for j in range(16 * one):
                    i = 16 * part + j
                    a, c, h = row[ql0 + i], row[ql0 + 32 + i], row[qh0 + i]
                    out[yh + i] = s0 * _q6_k(a & 15, h & 3)
                    out[yh + 32 + i] = s1 * _q6_k(c & 15, shr32(h, 2) & 3)
                    out[yh + 64 + i] = s2 * _q6_k(shr32(a, 4), shr32(h, 4) & 3)
                    out[yh + 96 + i] = s3 * _q6_k(shr32(c, 4), shr32(h, 6))


# ---------------------------------------------------------------- float types


@njit(cache=True)
def _dec_f16(row, out):
    for j in range(out.shape[0]):
        out[j] = f16_to_f32(load_u16(row, 2 * j))


@njit(cache=True)
def _dec_bf16(row, out):
    for j in range(out.shape[0]):
        out[j] = u32_as_f32(np.uint32(load_u16(row, 2 * j)) << np.uint32(16))


@njit(cache=True)
def _dec_f32(row, out):
    for j in range(out.shape[0]):
        out[j] = load_f32(row, 4 * j)


@njit(cache=True, inline="always")
def decode_row(type_id, row, out, corr):
    """Dequantize one packed row (uint8) into `out` (float32, n_cols).

    Inlined, so that where type_id is a constant (rows_decoder's kernels) numba prunes the other
    types' branches and compiles one decoder, not fourteen.

    Returns sum over blocks of min * corr[block] for Q4_1/Q5_1 (0 otherwise,
    or when `corr` is empty): the mat-vec adds it to reproduce llama.cpp's
    rounded Q8_1 block sums.
    """
    if type_id == Q8_0:
        _dec_q8_0(row, out)
    elif type_id == Q4_0:
        _dec_q4_0(row, out)
    elif type_id == Q4_1:
        return _dec_q4_1(row, out, corr)
    elif type_id == Q5_0:
        _dec_q5_0(row, out)
    elif type_id == Q5_1:
        return _dec_q5_1(row, out, corr)
    elif type_id == Q2_K:
        _dec_q2_k(row, out)
    elif type_id == Q3_K:
        _dec_q3_k(row, out)
    elif type_id == Q4_K:
        _dec_q4_k(row, out)
    elif type_id == Q5_K:
        _dec_q5_k(row, out)
    elif type_id == Q6_K:
        _dec_q6_k(row, out)
    elif type_id == IQ4_NL:
        _dec_iq4_nl(row, out)
    elif type_id == F16:
        _dec_f16(row, out)
    elif type_id == BF16:
        _dec_bf16(row, out)
    elif type_id == F32:
        _dec_f32(row, out)
    return np.float32(0.0)


def decode_rows(raw, type_id, ids, out):
    """out[i] = dequantized raw[ids[i]]."""
    rows_decoder(int(type_id))(raw, ids, out)


@functools.cache
def rows_decoder(type_id: int):
    """decode_rows' kernel for one type (a closure over it: only that type's decoder compiles)."""

    @njit(cache=True, parallel=True)
    def decode(raw, ids, out):
        none = np.zeros(0, np.float32)
        for i in prange(ids.shape[0]):  # rows are independent
            decode_row(type_id, raw[ids[i]], out[i], none)

    return decode


# ---------------------------------------------------------------- products

# Rows decoded per task: 16 rows of float32 stay in L2 (<= 128 KiB up to
# k = 2048) while every token of the batch is swept over them, and the
# scratch allocation is amortised.
_TILE = 16


@njit(cache=True, fastmath=True)
def _dot(a, b):
    # fastmath lets LLVM split the sum over several vector accumulators
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


@njit(cache=True, fastmath=True)
def _dot4(tile, r, x):
    """Dots of tile rows r..r+3 with x: each x load feeds 4 FMAs, which is
    what lifts the batched product above the 2-loads-per-FMA limit."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    t0, t1, t2, t3 = tile[r], tile[r + 1], tile[r + 2], tile[r + 3]
    for j in range(x.shape[0]):
        v = x[j]
        s0 += t0[j] * v
        s1 += t1[j] * v
        s2 += t2[j] * v
        s3 += t3[j] * v
    return s0, s1, s2, s3


@njit(cache=True)
def _row_mins(type_id, row, mins):
    """The fp16 block mins of a Q4_1/Q5_1 row (byte 2 of each block)."""
    size = 20 if type_id == Q4_1 else 24
    for b in range(mins.shape[0]):
        mins[b] = _half(row, b * size + 2)


@njit(cache=True, fastmath=True)
def _tile_times_batch(tile, m, x, mins, corr, out, r0):
    """out[i, r0 + r] = tile[r] . x[i] (+ mins[r] . corr[i]) for r < m."""
    for i in range(x.shape[0]):
        r = 0
        while r + 4 <= m:
            s0, s1, s2, s3 = _dot4(tile, r, x[i])
            out[i, r0 + r], out[i, r0 + r + 1], out[i, r0 + r + 2], out[i, r0 + r + 3] = s0, s1, s2, s3
            r += 4
        for rr in range(r, m):
            out[i, r0 + rr] = _dot(tile[rr], x[i])
        if corr.shape[1]:
            for rr in range(m):
                out[i, r0 + rr] += _dot(mins[rr], corr[i])


@njit(cache=True, fastmath=True)
def _rows_times_vector(raw, type_id, r0, m, x, corr, buf, out):
    # one token: decode and dot row by row while the row is still in L1, the
    # Q8_1 correction folded into decoding
    for r in range(r0, r0 + m):
        extra = decode_row(type_id, raw[r], buf, corr)
        out[r] = _dot(buf, x) + extra


@njit(cache=True, fastmath=True)
def _rows_times_batch(raw, type_id, r0, m, x, corr, tile, out):
    mins = np.empty((tile.shape[0], corr.shape[1]), np.float32)
    for r in range(m):
        decode_row(type_id, raw[r0 + r], tile[r], corr[0, :0])
        _row_mins(type_id, raw[r0 + r], mins[r])
    _tile_times_batch(tile, m, x, mins, corr, out, r0)


@njit(cache=True, parallel=True, fastmath=True)
def product_kernel(raw, type_id, x, corr, out):
    """out[i, r] = sum_j W[r, j] x[i, j] for packed W, x [n, k] -> out [n, rows].

    Each task decodes a tile of rows and reuses it for every token, so the
    weights are read once and W is never materialised.  corr [n, k/32] (or
    [n, 0]) adds the Q8_1 min correction for Q4_1/Q5_1.
    """
    n_rows = raw.shape[0]
    for t in prange((n_rows + _TILE - 1) // _TILE):
        r0 = t * _TILE
        m = min(_TILE, n_rows - r0)
        tile = np.empty((_TILE, x.shape[1]), np.float32)
        if x.shape[0] == 1:
            _rows_times_vector(raw, type_id, r0, m, x[0], corr[0], tile[0], out[0])
        else:
            _rows_times_batch(raw, type_id, r0, m, x, corr, tile, out)


@njit(cache=True)
def block_mins(raw, type_id, ids, out):
    """out[i, b] = fp16 min of block b of row ids[i]; Q4_1/Q5_1 only."""
    for i in range(ids.shape[0]):
        _row_mins(type_id, raw[ids[i]], out[i])


# ---------------------------------------------------------------- activations
# llama.cpp quantizes the right-hand operand of every quantized mat-mul to its
# vec_dot_type first.  These kernels return that quantization dequantized
# again ("fake quantization"), so a float dot product reproduces the integer
# one up to float rounding.


@njit(cache=True, inline="always")
def _round_away(v):
    # C roundf: halves go away from zero (ggml's scalar reference)
    t = np.trunc(v)
    if abs(v - t) >= np.float32(0.5):
        t += np.float32(1.0) if v > 0 else np.float32(-1.0)
    return t


@njit(cache=True)
def _q8_0_block(x, out, avx2):
    """Fake-quantize one block of 32 like quantize_row_q8_0; returns (d, sum q).

    avx2=True follows ggml-cpu's AVX2 path: multiplier 127/amax, rounding to
    nearest even.  False follows the scalar reference: multiplier 1/(amax/127)
    (can differ by an ulp), rounding halves away from zero.  Either way the
    scale is stored as fp16, while the quants use the unrounded scale.
    """
    amax = np.float32(0.0)
    for j in range(x.shape[0]):
        amax = max(amax, abs(x[j]))
    d = amax / np.float32(127.0)
    if avx2:
        inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
    else:
        inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
    dh = round_f16(d)
    qsum = np.float32(0.0)
    for j in range(x.shape[0]):
        v = x[j] * inv
        q = np.rint(v) if avx2 else _round_away(v)
        out[j] = q * dh
        qsum += q
    return d, qsum


@njit(cache=True)
def _q8_k_block(x, out):
    """Fake-quantize one block of 256 like quantize_row_q8_K_ref (the only
    version ggml-cpu has on x86): scale from the signed value of largest
    magnitude (first one wins ties), -127/max, round to nearest even, clamp
    at 127, float32 scale."""
    amax, mx = np.float32(0.0), np.float32(0.0)
    for j in range(x.shape[0]):
        if abs(x[j]) > amax:
            amax, mx = abs(x[j]), x[j]
    if amax == 0:
        out[:] = 0
        return
    iscale = np.float32(-127.0) / mx
    d = np.float32(1.0) / iscale
    for j in range(x.shape[0]):
        out[j] = d * min(np.float32(127.0), np.rint(iscale * x[j]))


@njit(cache=True, inline="always")
def _to_bf16(v):
    # ggml_compute_fp32_to_bf16: NaN kept quiet, otherwise round to nearest even
    u = f32_as_u32(v)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        hi = shr32(u, 16) | np.uint32(64)
    else:
        hi = shr32(u + np.uint32(0x7FFF) + (shr32(u, 16) & np.uint32(1)), 16)
    return u32_as_f32(np.uint32(np.uint64(hi) << np.uint64(16)))


@njit(cache=True)
def _fake_quant_row(x, vdt, avx2, out, corr):
    if vdt == Q8_0 or vdt == Q8_1:
        for b in range(x.shape[0] // 32):
            d, qsum = _q8_0_block(x[32 * b : 32 * b + 32], out[32 * b : 32 * b + 32], avx2)
            if b < corr.shape[0]:
                # Q8_1 stores s = fp16(d * sum q) (unrounded d); the float
                # dot sees fp16(d) * sum q.  Exact difference, for Q4_1/Q5_1.
                corr[b] = round_f16(d * qsum) - round_f16(d) * qsum
    elif vdt == Q8_K:
        for b in range(x.shape[0] // 256):
            _q8_k_block(x[256 * b : 256 * b + 256], out[256 * b : 256 * b + 256])
    elif vdt == F16:
        for j in range(x.shape[0]):
            out[j] = round_f16(x[j])
    elif vdt == BF16:
        for j in range(x.shape[0]):
            out[j] = _to_bf16(x[j])
    else:
        out[:] = x


@njit(cache=True)
def fake_quantize_kernel(x, vdt, avx2, out, corr):
    """Row-wise fake quantization of x [n, k]; corr [n, k/32] (or [n, 0]).
    Serial: it is O(n k) next to the O(n k rows) product, and a parallel
    kernel costs seconds more to compile."""
    for i in range(x.shape[0]):
        _fake_quant_row(x[i], vdt, avx2, out[i], corr[i])

"""The float arithmetic of llama.cpp's x86 (AVX2) kernels, and its activation quantizers.

With 8-bit activations a one-ulp difference can move a value across a rounding step, and
SmolLM2's and Gemma's huge activation channels turn such a step into a visible change of the
logits (a 1e-7 relative nudge of the input moves some logits by whole units). So for the
formats of the shipped models we reproduce ggml's arithmetic bit for bit: integer sums over
the same groups of elements per SIMD lane, one fused multiply-add per lane and block, and
ggml's horizontal sum.

Here: the Q8_0/Q8_1/Q8_K quantizers, and the pieces of the K-quant products that follow the
integer sums (scales, mins, offsets, ggml's reductions), held in explicit 8-wide vectors (f32x8
from _bits.py) so they run as AVX2 code whatever numba's vectoriser makes of them. The products
themselves form their integer sums from bytes with _isa.dot4: _int8.py (one token, and every
product of the 32-quant formats) and _int8_k.py (batches of K-quant weights). Integer sums below
2**24 carried in float32 lanes are exact, so whether a lane holds them as int32 or float32 never
changes a bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import (
    add_halves,
    bytes_of,
    f16_to_f32,
    fma32,
    hadd,
    lane,
    load_u16,
    load_u32,
    pair_sums,
    round_f16,
    vfloat,
    vint,
    vload,
    vpair,
    vsplat,
)

ROWS_PER_TASK = 16


# Row kernels (quantizers, norms, activations) run their rows in parallel from this many rows on;
# fewer (a generated token, a decode step of a few sequences) stay serial: a parallel region costs ~3 us.
# The parallel loops pass np.int64(row): prange counts in uint64, and a row function called with
# both integer types would be compiled twice.
PARALLEL_MIN_ROWS = 16


@njit(cache=True)
def _quantize_q8_row(x, q, d, s, t):
    for b in range(x.shape[1] // 32):
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[t, b * 32 + j]))
        scale = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
        total = 0
        for j in range(32):
            v = int(np.rint(x[t, b * 32 + j] * inv))
            q[t, b * 32 + j] = v
            total += v
        d[t, b] = round_f16(scale)
        s[t, b] = round_f16(scale * np.float32(total))


@njit(cache=True, parallel=True)
def quantize_q8(x, q, d, s):
    """x [n, k] → Q8_0/Q8_1 blocks of 32 as ggml's AVX2 quantize_row_q8_0/q8_1 make them (q int8).

    Scales with 127/amax and rounds half to even; d is stored as float16, and s = d·Σq is taken
    with the unrounded d and then stored as float16 (Q4_1/Q5_1 use it for their min term).
    Rows in parallel from PARALLEL_MIN_ROWS on.
    """
    n = x.shape[0]
    if n < PARALLEL_MIN_ROWS:
        for t in range(n):
            _quantize_q8_row(x, q, d, s, t)
    else:
        for t in prange(n):
            _quantize_q8_row(x, q, d, s, np.int64(t))


@njit(cache=True, error_model="numpy")
def _quantize_q8_k_row(x, q, d, bsums, t):
    for b in range(x.shape[1] // 256):
        base = b * 256
        amax = np.float32(0.0)
        peak = np.float32(0.0)
        for j in range(256):
            a = abs(x[t, base + j])
            if a > amax:
                amax = a
                peak = x[t, base + j]
        if amax == 0:
            d[t, b] = 0.0
            q[t, base:base + 256] = 0.0
            bsums[t, b * 16:(b + 1) * 16] = 0.0
            continue
        iscale = np.float32(-127.0) / peak
        for g in range(16):
            total = np.float32(0.0)
            for j in range(16):
                v = min(np.float32(127.0), np.float32(np.rint(iscale * x[t, base + g * 16 + j])))
                q[t, base + g * 16 + j] = v
                total += v
            bsums[t, b * 16 + g] = total
        d[t, b] = np.float32(1.0) / iscale


# IEEE division, as in C: activations that overflowed to inf give d = 1/(-127/inf) = -inf, not an exception.
@njit(cache=True, parallel=True, error_model="numpy")
def quantize_q8_k(x, q, d, bsums):
    """x [n, k] → Q8_K blocks of 256 as ggml's reference quantizer (used on x86) makes them.

    The scale comes from the signed value of largest magnitude (-127/max), d = 1/iscale in float32,
    and bsums holds the sum of each run of 16 quants. Rows in parallel from PARALLEL_MIN_ROWS on.
    """
    n = x.shape[0]
    if n < PARALLEL_MIN_ROWS:
        for t in range(n):
            _quantize_q8_k_row(x, q, d, bsums, t)
    else:
        for t in prange(n):
            _quantize_q8_k_row(x, q, d, bsums, np.int64(t))


@njit(cache=True)
def _hsum(acc):
    """The horizontal sum of a vector as ggml's hsum_float_8: high half onto low, then pairs, then the last two)."""
    r0 = lane(acc, 4) + lane(acc, 0)
    r1 = lane(acc, 5) + lane(acc, 1)
    r2 = lane(acc, 6) + lane(acc, 2)
    r3 = lane(acc, 7) + lane(acc, 3)
    return (r0 + r2) + (r1 + r3)


@njit(cache=True)
def _half(row, o):
    return f16_to_f32(load_u16(row, o))


PARTS = 32  # batch kernels: shares of the row tasks (a few per thread), each with its own scratch


@njit(cache=True)
def _parts(rows):
    """(number of tasks of ROWS_PER_TASK rows, number of parts to share them among).

    prange hands each thread a contiguous run of parts, and a part allocates its scratch once:
    rather than one per task of 16 rows (128 KiB at k = 2048). Parts are not fitted to the thread
    count: numba.get_num_threads() in a kernel stops numba from caching it."""
    tasks = (rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    return tasks, min(tasks, PARTS)


# Formats with blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) have their products in _int8.py.


# --- Q6_K -------------------------------------------------------------------------------------------


@njit(cache=True)
def _i8(row, i):
    v = np.int32(row[i])
    return np.float32(v - ((v >> 7) << 8))


@njit(cache=True)
def _q6_k_scales(row, o, v):
    """Vector v's scales per lane: lanes 0-3 take quants 0-15 (group 2v), lanes 4-7 group 2v+1."""
    return vpair(_i8(row, o + 192 + 2 * v), _i8(row, o + 193 + 2 * v))


@njit(cache=True)
def _q6_k_lanes(h0, h1, offsets):
    """The exact integer lane sums, rounded to float32 once (ggml's cvtepi32_ps).

    h0 and h1 (vectors 0-3 and 4-7) are each below 2**24 in magnitude, so exact in float32,
    but their sum may not be: they are added as int32."""
    return vfloat(vint(h0) + vint(h1) - vint(offsets))


@njit(cache=True)
def _q6_k_offsets(bs, g, sc_lo, sc_hi):
    """32·(bsums[2l]·scale[2l] + bsums[2l+1]·scale[2l+1]) per lane l: ggml's correction for the
    offset of 32 it leaves out of the quants (exact: at most 32·2·2032·128 < 2**24)."""
    return vsplat(np.float32(32.0)) * pair_sums(vload(bs, g) * sc_lo, vload(bs, g + 8) * sc_hi)


# --- Q4_K -------------------------------------------------------------------------------------------


@njit(cache=True)
def _q4_k_scales(row, o):
    """The superblock's eight 6-bit scales and eight mins as float vectors (ggml's kmask unpacking)."""
    a, b, c = load_u32(row, o + 4), load_u32(row, o + 8), load_u32(row, o + 12)
    scales = bytes_of(a & 0x3F3F3F3F, (c & 0x0F0F0F0F) | (((a >> 6) & 0x03030303) << 4))
    mins = bytes_of(b & 0x3F3F3F3F, ((c >> 4) & 0x0F0F0F0F) | (((b >> 6) & 0x03030303) << 4))
    return scales, mins


@njit(cache=True)
def _q4_k_sums(p0, p1, p2, p3, p4, p5, p6, p7, scales, mins, bs, g):
    """From the lane sums p_j of the eight sub-blocks: [Σ scale·dot over sub-blocks 0-1, 2-3, 4-5,
    6-7, then Σ min·bsum likewise]. All exact integers (a pair stays below 2**24)."""
    dots = add_halves(hadd(hadd(p0, p1), hadd(p2, p3)), hadd(hadd(p4, p5), hadd(p6, p7)))  # per sub-block
    bsums = pair_sums(vload(bs, g), vload(bs, g + 8))  # per sub-block: its two 16-sums
    return pair_sums(scales * dots, mins * bsums)


@njit(cache=True)
def _q4_k_add(sums, scale, scale_min, acc, acc_min, per_pair):
    """ggml's gemm adds each pair of sub-blocks with one fma, its gemv the whole superblock
    (summed exactly, rounded to float32 once)."""
    if per_pair:
        for p in range(4):
            acc = fma32(lane(sums, p), scale, acc)
            acc_min = fma32(lane(sums, 4 + p), scale_min, acc_min)
        return acc, acc_min
    isum = np.float64(lane(sums, 0)) + np.float64(lane(sums, 1)) + np.float64(lane(sums, 2)) + np.float64(lane(sums, 3))
    imin = np.float64(lane(sums, 4)) + np.float64(lane(sums, 5)) + np.float64(lane(sums, 6)) + np.float64(lane(sums, 7))
    return fma32(np.float32(isum), scale, acc), fma32(np.float32(imin), scale_min, acc_min)


"""Products computed in the order llama.cpp's x86 (AVX2) kernels compute them.

With 8-bit activations a one-ulp difference can move a value across a rounding step, and
SmolLM2's and Gemma's huge activation channels turn such a step into a visible change of the
logits (a 1e-7 relative nudge of the input moves some logits by whole units). So for the
formats of the shipped models we reproduce ggml's arithmetic bit for bit: integer sums over
the same groups of elements per SIMD lane, one fused multiply-add per lane and block, and
ggml's horizontal sum. Integer sums are carried in float32, which holds them exactly.

Activations arrive pre-quantized as (q, d, extra): q the integer quants as float32 [n, k],
d the per-block scale [n, k/block], extra the Q8_1 block sums or the Q8_K 16-element sums.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import f16_to_f32, fma32, load_u16, round_f16
from .types import Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

LANES = 8
ROWS_PER_TASK = 16


@njit(cache=True)
def quantize_q8(x, q, d, s):
    """x [n, k] → Q8_0/Q8_1 blocks of 32 as ggml's AVX2 quantize_row_q8_0/q8_1 make them.

    Scales with 127/amax and rounds half to even; d is stored as float16, and s = d·Σq is taken
    with the unrounded d and then stored as float16 (Q4_1/Q5_1 use it for their min term).
    """
    n, k = x.shape
    for t in range(n):
        for b in range(k // 32):
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[t, b * 32 + j]))
            scale = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            total = 0
            for j in range(32):
                v = np.float32(np.rint(x[t, b * 32 + j] * inv))
                q[t, b * 32 + j] = v
                total += int(v)
            d[t, b] = round_f16(scale)
            s[t, b] = round_f16(scale * np.float32(total))


@njit(cache=True)
def quantize_q8_k(x, q, d, bsums):
    """x [n, k] → Q8_K blocks of 256 as ggml's reference quantizer (used on x86) makes them.

    The scale comes from the signed value of largest magnitude (-127/max), d = 1/iscale in float32,
    and bsums holds the sum of each run of 16 quants.
    """
    n, k = x.shape
    for t in range(n):
        for b in range(k // 256):
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


@njit(cache=True, inline="always")
def hsum8(acc):
    """ggml's hsum_float_8: fold the high half onto the low, then pairs, then the last two."""
    r0 = acc[4] + acc[0]
    r1 = acc[5] + acc[1]
    r2 = acc[6] + acc[2]
    r3 = acc[7] + acc[3]
    return (r0 + r2) + (r1 + r3)


# --- formats with blocks of 32: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 ---------------------------------------


@njit(cache=True, inline="always")
def _decode32(row, type_id, wq, wd, wm):
    """Integer quants of one row into wq (float32), scales into wd, mins (Q4_1/Q5_1) into wm.

    Inner loops run to a run-time 16·one: a literal trip count gets fully unrolled by LLVM
    before its vectoriser sees it, and the unrolled code stays scalar.
    """
    nb = wd.shape[0]
    one = 1 if nb > 0 else 0
    for b in range(nb):
        if type_id == Q8_0:
            o = b * 34
            wd[b] = f16_to_f32(load_u16(row, o))
            for j in range(32 * one):
                v = np.int32(row[o + 2 + j])
                wq[b * 32 + j] = np.float32(v - ((v >> 7) << 8))
            continue
        size = 18 if type_id == Q4_0 else 20 if type_id == Q4_1 else 22 if type_id == Q5_0 else 24
        o = b * size
        wd[b] = f16_to_f32(load_u16(row, o))
        quants = o + 2
        if type_id == Q4_1 or type_id == Q5_1:
            wm[b] = f16_to_f32(load_u16(row, o + 2))
            quants = o + 4
        high = np.uint32(0)
        if type_id == Q5_0 or type_id == Q5_1:
            high = (np.uint32(row[quants]) | (np.uint32(row[quants + 1]) << 8)
                    | (np.uint32(row[quants + 2]) << 16) | (np.uint32(row[quants + 3]) << 24))
            quants += 4
        offset = np.float32(8.0) if type_id == Q4_0 else np.float32(16.0) if type_id == Q5_0 else np.float32(0.0)
        if type_id == Q5_0 or type_id == Q5_1:
            for j in range(16 * one):
                byte = np.uint32(row[quants + j])
                lo = (byte & 15) | (((high >> j) & 1) << 4)
                hi = (byte >> 4) | (((high >> (j + 16)) & 1) << 4)
                wq[b * 32 + j] = np.float32(lo) - offset
                wq[b * 32 + 16 + j] = np.float32(hi) - offset
        else:
            for j in range(16 * one):
                byte = row[quants + j]
                wq[b * 32 + j] = np.float32(byte & 15) - offset
                wq[b * 32 + 16 + j] = np.float32(byte >> 4) - offset


@njit(cache=True, parallel=True)
def dot_q32(raw, type_id, xq, xd, xs, out):
    """out[t, r] = W[r] · x[t] for a 32-block format against Q8_0 (Q8_1 for Q4_1/Q5_1) activations.

    Each block adds, per lane, the exact integer sum of four products scaled by d_w·d_x (one fma);
    Q4_1/Q5_1 add m·s per block on the side. As ggml_vec_dot_*_q8_* and llamafile's tinyBLAS.
    A row is decoded once into an L1 scratch and reused for every token.
    """
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 32
    with_min = type_id == Q4_1 or type_id == Q5_1
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        wq = np.empty(k, dtype=np.float32)
        wd = np.empty(nb, dtype=np.float32)
        wm = np.zeros(nb, dtype=np.float32)
        lanes = np.empty(nb * LANES, dtype=np.float32)
        acc = np.empty(LANES, dtype=np.float32)
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            _decode32(raw[r], type_id, wq, wd, wm)
            for t in range(n):
                x = xq[t]
                for i in range(nb * LANES):
                    lanes[i] = (wq[4 * i] * x[4 * i] + wq[4 * i + 1] * x[4 * i + 1]) + (
                        wq[4 * i + 2] * x[4 * i + 2] + wq[4 * i + 3] * x[4 * i + 3])
                acc[:] = 0.0
                for b in range(nb):
                    scale = wd[b] * xd[t, b]
                    for lane in range(LANES):
                        acc[lane] = fma32(scale, lanes[b * LANES + lane], acc[lane])
                mins = np.float32(0.0)
                if with_min:
                    for b in range(nb):
                        mins = fma32(wm[b], xs[t, b], mins)
                out[t, r] = hsum8(acc) + mins
    return out


# --- Q6_K -------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _decode_q6_k(row, wq, wsc, wd):
    """Q6_K quants (0..63, offset not applied) per element, scales per 16, d per 256."""
    for b in range(wd.shape[0]):
        o = b * 210
        wd[b] = f16_to_f32(load_u16(row, o + 208))
        for g in range(16):
            v = np.int32(row[o + 192 + g])
            wsc[b * 16 + g] = np.float32(v - 256 if v > 127 else v)
        for half in range(2):
            ql = o + half * 64
            qh = o + 128 + half * 32
            y = b * 256 + half * 128
            for i in range(32):
                h = row[qh + i]
                wq[y + i] = np.float32((row[ql + i] & 15) | ((h & 3) << 4))
                wq[y + 32 + i] = np.float32((row[ql + 32 + i] & 15) | (((h >> 2) & 3) << 4))
                wq[y + 64 + i] = np.float32((row[ql + i] >> 4) | (((h >> 4) & 3) << 4))
                wq[y + 96 + i] = np.float32((row[ql + 32 + i] >> 4) | (((h >> 6) & 3) << 4))


@njit(cache=True, parallel=True)
def dot_q6_k(raw, xq, xd, xbs, out):
    """out[t, r] = W[r] · x[t] for Q6_K weights and Q8_K activations, as ggml_vec_dot_q6_K_q8_K (AVX2).

    Lane i of a superblock sums the scaled products of bytes 4i..4i+3 of each 32-quant vector,
    minus 32·(bsums·scales) of 16-groups 2i and 2i+1; all integer, then one fma per lane.
    """
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 256
    for r in prange(rows):
        wq = np.empty(k, dtype=np.float32)
        wsc = np.empty(nb * 16, dtype=np.float32)
        wd = np.empty(nb, dtype=np.float32)
        _decode_q6_k(raw[r], wq, wsc, wd)
        acc = np.empty(LANES, dtype=np.float32)
        lanes = np.empty(LANES, dtype=np.float64)
        for t in range(n):
            acc[:] = 0.0
            for b in range(nb):
                lanes[:] = 0.0
                for vec in range(8):  # eight vectors of 32 quants per superblock
                    e0 = b * 256 + vec * 32
                    for lane in range(LANES):
                        s = 0.0
                        for m in range(4):
                            e = e0 + 4 * lane + m
                            s += np.float64(wsc[e // 16] * (wq[e] * xq[t, e]))
                        lanes[lane] += s
                for lane in range(LANES):
                    g = b * 16 + 2 * lane
                    lanes[lane] -= 32.0 * (np.float64(xbs[t, g]) * wsc[g] + np.float64(xbs[t, g + 1]) * wsc[g + 1])
                d = xd[t, b] * wd[b]
                for lane in range(LANES):
                    acc[lane] = fma32(d, np.float32(lanes[lane]), acc[lane])
            out[t, r] = hsum8(acc)
    return out


# --- Q4_K (llama.cpp repacks it 8 rows at a time on AVX2) -----------------------------------------


@njit(cache=True, inline="always")
def _decode_q4_k(row, wq, wsc, wmin, wd, wdmin):
    """Q4_K quants (0..15) per element, 6-bit scales and mins per 32, d and dmin per 256."""
    for b in range(wd.shape[0]):
        o = b * 144
        wd[b] = f16_to_f32(load_u16(row, o))
        wdmin[b] = f16_to_f32(load_u16(row, o + 2))
        s = o + 4
        for j in range(8):
            if j < 4:
                sc = row[s + j] & 63
                mn = row[s + j + 4] & 63
            else:
                sc = (row[s + j + 4] & 15) | ((row[s + j - 4] >> 6) << 4)
                mn = (row[s + j + 4] >> 4) | ((row[s + j] >> 6) << 4)
            wsc[b * 8 + j] = np.float32(sc)
            wmin[b * 8 + j] = np.float32(mn)
        for c in range(4):
            for i in range(32):
                byte = row[o + 16 + 32 * c + i]
                wq[b * 256 + 64 * c + i] = np.float32(byte & 15)
                wq[b * 256 + 64 * c + 32 + i] = np.float32(byte >> 4)


@njit(cache=True, parallel=True)
def dot_q4_k(raw, xq, xd, xbs, out):
    """out[t, r] = W[r] · x[t] for Q4_K weights and Q8_K activations, as ggml's repacked 8x8 kernels.

    Their gemm (tokens in fours) adds the scaled integer sum of each 64-quant pair of sub-blocks
    with one fma; their gemv (the last n % 4 tokens, and decoding) one fma per 256. Mins likewise.
    """
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 256
    gemv_from = n - n % 4
    for r in prange(rows):
        wq = np.empty(k, dtype=np.float32)
        wsc = np.empty(nb * 8, dtype=np.float32)
        wmin = np.empty(nb * 8, dtype=np.float32)
        wd = np.empty(nb, dtype=np.float32)
        wdmin = np.empty(nb, dtype=np.float32)
        _decode_q4_k(raw[r], wq, wsc, wmin, wd, wdmin)
        for t in range(n):
            acc = np.float32(0.0)
            acc_min = np.float32(0.0)
            per_pair = t < gemv_from
            for b in range(nb):
                scale = wd[b] * xd[t, b]
                scale_min = wdmin[b] * xd[t, b]
                isum = 0.0
                imin = 0.0
                for j in range(8):
                    dot = np.float32(0.0)
                    for i in range(32):
                        e = b * 256 + j * 32 + i
                        dot += wq[e] * xq[t, e]
                    g = b * 16 + 2 * j
                    isum += np.float64(wsc[b * 8 + j] * dot)
                    imin += np.float64(wmin[b * 8 + j] * (xbs[t, g] + xbs[t, g + 1]))
                    if per_pair and j % 2 == 1:
                        acc = fma32(np.float32(isum), scale, acc)
                        acc_min = fma32(np.float32(imin), scale_min, acc_min)
                        isum = 0.0
                        imin = 0.0
                if not per_pair:
                    acc = fma32(np.float32(isum), scale, acc)
                    acc_min = fma32(np.float32(imin), scale_min, acc_min)
            out[t, r] = acc - acc_min
    return out


# --- one token at a time: the decode path, streamed once through the cache -------------------------


@njit(cache=True, parallel=True)
def matvec_q32(raw, type_id, xq, xd, xs, out):
    """out[r] = W[r] · x for one token, the arithmetic of dot_q32 arranged for SIMD.

    Each row is decoded to integer quants in an L1 scratch, the four-product lane sums of all
    blocks are formed in one strided pass, then each lane takes its fma per block in order.
    """
    rows = raw.shape[0]
    k = xq.shape[0]
    nb = k // 32
    with_min = type_id == Q4_1 or type_id == Q5_1
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        wq = np.empty(k, dtype=np.float32)
        wd = np.empty(nb, dtype=np.float32)
        wm = np.zeros(nb, dtype=np.float32)
        lanes = np.empty(nb * LANES, dtype=np.float32)
        acc = np.empty(LANES, dtype=np.float32)
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            _decode32(raw[r], type_id, wq, wd, wm)
            for i in range(nb * LANES):
                lanes[i] = (wq[4 * i] * xq[4 * i] + wq[4 * i + 1] * xq[4 * i + 1]) + (
                    wq[4 * i + 2] * xq[4 * i + 2] + wq[4 * i + 3] * xq[4 * i + 3])
            acc[:] = 0.0
            for b in range(nb):
                scale = wd[b] * xd[b]
                for lane in range(LANES):
                    acc[lane] = fma32(scale, lanes[b * LANES + lane], acc[lane])
            mins = np.float32(0.0)
            if with_min:
                for b in range(nb):
                    mins = fma32(wm[b], xs[b], mins)
            out[r] = hsum8(acc) + mins
    return out

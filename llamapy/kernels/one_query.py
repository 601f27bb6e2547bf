"""Flash attention of one query per sequence over the KV cache: a decode step's attention.

ggml's one-query path (float16 V accumulator, online softmax) walks the keys once, each key's
score, softmax step and value in turn, and each key waits on the last one's float16 round trip.
The same arithmetic runs here in three passes over the keys: every score (_scores), then each
head's running max with each key's weight and the rescale before it (_softmax_steps), then the
values (_weighted_values). The heads that read one kv head go together, so each key and value is
loaded and converted once for all of them, and the accumulators stay in registers across the keys.
"""

import numpy as np
from numba import njit

from ..quants._bits import fma32, lane, round_f16, vfma, vload, vsplat, vstore
from ..quants._pairs import (
    even_quarters,
    has_32_registers,
    high_half,
    highs,
    low_half,
    lows,
    odd_quarters,
    pair_fma,
    pair_load,
    pair_store,
    pair_zero,
    round_f16x16,
    swapped_lanes,
    swapped_pairs,
    twice,
)
from .activations import libm_expf_main
from .kv_access import kv_float_cells, kv_value, kv_vector, kv_vector16, round_f16x8

# A split one-query attention (numerics.Numerics.split_cells) cuts its cells into this many chunks:
# llama.cpp cuts one per thread, and our reference ran on two.
SPLIT_KV_THREADS = 2
TILE_HEADS = 4  # heads summed side by side with AVX-512 (AVX2's sixteen registers hold one)


@njit(cache=True, inline="always")
def attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    """Query t's heads that read kv head kh (task = t * n_head_kv + kh): they share each key and
    value as it is read."""
    n, n_head, d = q.shape
    n_kv = k_cache.shape[1]
    group = n_head // n_kv
    t, kh = task // n_kv, task % n_kv
    pos = pos0 + t
    first = max(0, pos - window + 1) if window > 0 else 0
    qs = _line_aligned_rows(group, d) if d % 16 == 0 else np.empty((group, d), dtype=np.float32)
    for g in range(group):
        for c in range(d):
            qs[g, c] = round_f16(q[t, kh * group + g, c])
    k_cells, k_scales, k_head = kv_float_cells(k_cache, ks, kh, first, pos + 1)
    v_cells, v_scales, v_head = kv_float_cells(v_cache, vs, kh, first, pos + 1)
    _attend_group(qs, k_cells, k_scales, k_head, v_cells, v_scales, v_head, first, pos + 1, scale, split_kv, out[t],
                  kh * group)


@njit(cache=True, inline="always")
def _line_aligned_rows(rows, n):
    """An empty float32 [rows, n rounded up to 16], each row starting on a cache line: numba's
    allocations start 32 bytes into one, and a sixteen-lane load or store there would touch two."""
    width = -(-n // 16) * 16
    buf = np.empty(rows * width + 16, dtype=np.float32)
    skip = (64 - buf.ctypes.data % 64) % 64 // 4
    return buf[skip:skip + rows * width].reshape(rows, width)


@njit(cache=True)
def _attend_group(qs, k_cache, ks, k_head, v_cache, vs, v_head, first, end, scale, split_kv, out, h0):
    """The online softmax of each query qs[g] (heads h0 + g, all of kv head k_head / v_head) over keys
    first..end-1, written to out[h0 + g]; with split_kv (llama.cpp's split of a long view, see
    numerics.py) over that many cells cut in one chunk per thread, each summed apart, then merged."""
    group, dv = qs.shape[0], out.shape[1]
    part = _line_aligned_rows(group, dv)
    steps = np.empty((4, group, max(end - first, 1)), dtype=np.float32)
    totals = np.empty((2, group), dtype=np.float32)  # each head's (max, sum of weights)
    if not split_kv:
        _softmax_part(qs, k_cache, ks, k_head, v_cache, vs, v_head, first, end, scale, part, dv, steps, totals)
        for g in range(group):
            inv = np.float32(1.0) / totals[1, g]
            for i in range(dv):
                out[h0 + g, i] = part[g, i] * inv
        return
    chunk = (split_kv + SPLIT_KV_THREADS - 1) // SPLIT_KV_THREADS
    merged = np.empty((2, group), dtype=np.float32)
    merged[0], merged[1] = -np.inf, 0.0
    out[h0:h0 + group] = 0.0
    for c in range(SPLIT_KV_THREADS):
        lo, hi = max(first, c * chunk), min(end, (c + 1) * chunk)
        if lo >= hi:
            continue
        _softmax_part(qs, k_cache, ks, k_head, v_cache, vs, v_head, lo, hi, scale, part, dv, steps, totals)
        for g in range(group):
            new_max = max(merged[0, g], totals[0, g])
            scale_old = np.float32(np.exp(np.float32(merged[0, g] - new_max)))
            scale_new = np.float32(np.exp(np.float32(totals[0, g] - new_max)))
            o = out[h0 + g]
            for i in range(dv):
                o[i] = fma32(o[i], scale_old, part[g, i] * scale_new)
            merged[1, g] = fma32(merged[1, g], scale_old, totals[1, g] * scale_new)
            merged[0, g] = new_max
    for g in range(group):
        inv = np.float32(1.0) / merged[1, g]
        o = out[h0 + g]
        for i in range(dv):
            o[i] = o[i] * inv


@njit(cache=True, inline="always")
def _softmax_part(qs, k_cache, ks, k_head, v_cache, vs, v_head, first, end, scale, part, dv, steps, totals):
    """The three passes over keys first..end-1: part[g, :dv] gets head g's unnormalised sum and
    totals[:, g] its (max, sum of weights); steps is scratch of [4, group, end - first] or more."""
    scores, maxes, weights, rescales = steps[0], steps[1], steps[2], steps[3]
    _scores(qs, k_cache, ks, k_head, first, end, scale, scores)
    for g in range(qs.shape[0]):
        totals[0, g], totals[1, g] = _softmax_steps(scores[g], maxes[g], weights[g], rescales[g], end - first)
    _weighted_values(part, dv, v_cache, vs, v_head, first, end, weights, rescales)


@njit(cache=True, inline="always")
def _softmax_step(s, running_max):
    """One key of ggml's online softmax: (its weight, the rescale of the sum before it)."""
    if s > running_max:
        return np.float32(1.0), np.float32(np.exp(np.float32(running_max - s)))
    return np.float32(np.exp(np.float32(s - running_max))), np.float32(1.0)


@njit(cache=True, inline="always")
def _softmax_steps(scores, maxes, weights, rescales, n):
    """ggml's online softmax over scores[:n]: each key's weight and the rescale the sum takes
    before it (where the key raised the max). (max, sum) back.

    ggml takes one key at a time, with a library expf for whichever of the two is not 1. With the
    running max after each key (maxes) both are exp(s - max) and exp(previous max - max), and the
    one that is not taken is exp(0) = 1 exactly: so every key's pair comes at once, from
    libm_expf_main in a loop that vectorises (libm's own expf where its main path does not hold)."""
    running_max = np.float32(-np.inf)
    for i in range(n):
        if scores[i] > running_max:
            running_max = scores[i]
        maxes[i] = running_max
    weights[0], rescales[0] = _softmax_step(scores[0], np.float32(-np.inf))
    special = False
    for i in range(1, n):
        weights[i], in_range = libm_expf_main(np.float32(scores[i] - maxes[i]))
        rescales[i], also = libm_expf_main(np.float32(maxes[i - 1] - maxes[i]))
        special |= not (in_range and also)
    if special:
        for i in range(1, n):
            weights[i], rescales[i] = _softmax_step(scores[i], maxes[i - 1])
    total = np.float32(0.0)
    for i in range(n):
        total = fma32(total, rescales[i], weights[i])
    return running_max, total


# --- the scores --------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _scores(qs, k_cache, ks, kh, first, end, scale, out):
    """out[g, j - first] = scale · qs[g]·K[j] for keys first..end-1, each dot as ggml's f16 dot
    sums it (_dot_f16_order). With AVX-512 the heads go four at a time, each key converted once."""
    group, d = qs.shape
    if has_32_registers() and d % 32 == 0:
        for g0 in range(0, group, TILE_HEADS):
            count = group - g0
            if count >= 4:
                _scores_of_4(qs, g0, k_cache, ks, kh, first, end, scale, out)
            elif count == 3:
                _scores_of_3(qs, g0, k_cache, ks, kh, first, end, scale, out)
            elif count == 2:
                _scores_of_2(qs, g0, k_cache, ks, kh, first, end, scale, out)
            else:
                _scores_of_1(qs, g0, k_cache, ks, kh, first, end, scale, out)
        return
    for g in range(group):
        for j in range(first, end):
            if d % 32 == 0:
                s = _dot_f16_order(qs[g], k_cache, ks, j, kh)
            else:
                s = np.float32(0.0)
                for c in range(d):
                    s += qs[g, c] * kv_value(k_cache, ks, j, kh, c)
            out[g, j - first] = s * scale


@njit(cache=True, inline="always")
def _dot_f16_order(qv, k_cache, ks, j, kh):
    """q·k summed as ggml_vec_dot_f16 does on AVX2: four 8-lane fused accumulators over steps of 32,
    then its reduce (the four added pairwise, then the halves, then the last four lanes). The four
    are held as two sixteen-lane pairs (accumulators 0|1 and 2|3), the same lanes doing the same
    fmas: half the instructions where a zmm is one."""
    a01, a23 = pair_zero(), pair_zero()
    for i in range(0, qv.shape[0], 32):
        a01 = pair_fma(pair_load(qv, i), kv_vector16(k_cache, ks, j, kh, i), a01)
        a23 = pair_fma(pair_load(qv, i + 16), kv_vector16(k_cache, ks, j, kh, i + 16), a23)
    sums = a01 + a23
    p = low_half(sums) + high_half(sums)
    return ((lane(p, 0) + lane(p, 4)) + (lane(p, 1) + lane(p, 5))) + ((lane(p, 2) + lane(p, 6))
                                                                    + (lane(p, 3) + lane(p, 7)))


@njit(cache=True, inline="always")
def _four_reduced(s0, s1, s2, s3):
    """_dot_f16_order's reduce of four heads' sums (a01 + a23 each) at once: head k's dot in lane
    4k, every lane's adds those of the reduce alone (the halves, then lanes m and m + 4, then
    neighbours, then pairs)."""
    p01 = lows(s0, s1) + highs(s0, s1)
    p23 = lows(s2, s3) + highs(s2, s3)
    q = even_quarters(p01, p23) + odd_quarters(p01, p23)
    r = q + swapped_lanes(q)
    return r + swapped_pairs(r)


@njit(cache=True, inline="always")
def _scores_tile(qs, g0, count, k_cache, ks, kh, first, end, scale, out):
    """_scores for heads g0 .. g0+count-1 (count <= 4, a constant at each call: the unused heads'
    chains compile away): per key, each K vector converted once and fused into every head's two
    accumulators, then the four reduces in one."""
    d = qs.shape[1]
    q0, q1 = qs[g0], qs[g0 + min(1, count - 1)]
    q2, q3 = qs[g0 + min(2, count - 1)], qs[g0 + min(3, count - 1)]
    splat = twice(vsplat(scale))
    for j in range(first, end):
        a0, b0, a1, b1 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        a2, b2, a3, b3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        for i in range(0, d, 32):
            k01, k23 = kv_vector16(k_cache, ks, j, kh, i), kv_vector16(k_cache, ks, j, kh, i + 16)
            a0, b0 = pair_fma(pair_load(q0, i), k01, a0), pair_fma(pair_load(q0, i + 16), k23, b0)
            if count > 1:
                a1, b1 = pair_fma(pair_load(q1, i), k01, a1), pair_fma(pair_load(q1, i + 16), k23, b1)
            if count > 2:
                a2, b2 = pair_fma(pair_load(q2, i), k01, a2), pair_fma(pair_load(q2, i + 16), k23, b2)
            if count > 3:
                a3, b3 = pair_fma(pair_load(q3, i), k01, a3), pair_fma(pair_load(q3, i + 16), k23, b3)
        dots = _four_reduced(a0 + b0, a1 + b1, a2 + b2, a3 + b3) * splat
        low, high = low_half(dots), high_half(dots)
        i = j - first
        out[g0, i] = lane(low, 0)
        if count > 1:
            out[g0 + 1, i] = lane(low, 4)
        if count > 2:
            out[g0 + 2, i] = lane(high, 0)
        if count > 3:
            out[g0 + 3, i] = lane(high, 4)


def _scores_tile_of(count):
    """_scores_tile for `count` heads as a function of its own: each tile compiles apart, and
    numba's inlining of four of them into one caller took most of a cold start's minute."""

    @njit(cache=True)
    def tile(qs, g0, k_cache, ks, kh, first, end, scale, out):
        _scores_tile(qs, g0, count, k_cache, ks, kh, first, end, scale, out)

    return tile


_scores_of_1, _scores_of_2, _scores_of_3, _scores_of_4 = (_scores_tile_of(c) for c in range(1, 5))


# --- the values --------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _weighted_values(acc, dv, v_cache, vs, kh, first, end, weights, rescales):
    """acc[g, :dv] = the float16-rounded sum over keys j of weights[g] · V[j], scaled by rescales[g]
    before key j (ggml rescales when a key raises the max; a rescale of exactly 1 changes no float16
    value, so it is skipped). An accumulator chain waits on its own last rounding, so with AVX-512
    four heads go side by side (sixteen chains, each value converted once for all); with AVX2's
    sixteen registers, one head at a time."""
    group = acc.shape[0]
    wide = dv - dv % 64
    if has_32_registers():
        for g0 in range(0, group, TILE_HEADS):
            count = group - g0
            if count >= 4:
                _values_of_4(acc, g0, wide, v_cache, vs, kh, first, end, weights, rescales)
            elif count == 3:
                _values_of_3(acc, g0, wide, v_cache, vs, kh, first, end, weights, rescales)
            elif count == 2:
                _values_of_2(acc, g0, wide, v_cache, vs, kh, first, end, weights, rescales)
            else:
                _values_of_1(acc, g0, wide, v_cache, vs, kh, first, end, weights, rescales)
    else:
        for g in range(group):
            _values_of_1(acc, g, wide, v_cache, vs, kh, first, end, weights, rescales)
    if wide < dv:
        for g in range(group):
            a = acc[g, :dv]
            a[wide:] = 0.0
            for j in range(first, end):
                if rescales[g, j - first] != np.float32(1.0):
                    _rescale_f16(a, rescales[g, j - first], wide)
                _add_value_f16(a, v_cache, vs, j, kh, weights[g, j - first], wide)


@njit(cache=True, inline="always")
def _rescaled(a0, a1, a2, a3, r):
    if r == np.float32(1.0):
        return a0, a1, a2, a3
    rv = twice(vsplat(r))
    return round_f16x16(a0 * rv), round_f16x16(a1 * rv), round_f16x16(a2 * rv), round_f16x16(a3 * rv)


@njit(cache=True, inline="always")
def _plus_value(a0, a1, a2, a3, weight, v0, v1, v2, v3):
    w = twice(vsplat(weight))
    return (round_f16x16(pair_fma(v0, w, a0)), round_f16x16(pair_fma(v1, w, a1)),
            round_f16x16(pair_fma(v2, w, a2)), round_f16x16(pair_fma(v3, w, a3)))


@njit(cache=True, inline="always")
def _store_four(acc, c, a0, a1, a2, a3):
    pair_store(acc, c, a0)
    pair_store(acc, c + 16, a1)
    pair_store(acc, c + 32, a2)
    pair_store(acc, c + 48, a3)


@njit(cache=True, inline="always")
def _values_tile(acc, g0, count, wide, v_cache, vs, kh, first, end, weights, rescales):
    """_weighted_values' first `wide` elements for heads g0 .. g0+count-1 (count <= 4, a constant
    at each call: the unused heads' chains compile away), sixty-four elements at a time."""
    g1, g2, g3 = g0 + min(1, count - 1), g0 + min(2, count - 1), g0 + min(3, count - 1)
    for c in range(0, wide, 64):
        a0, a1, a2, a3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        b0, b1, b2, b3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        c0, c1, c2, c3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        d0, d1, d2, d3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        for j in range(first, end):
            i = j - first
            v0, v1 = kv_vector16(v_cache, vs, j, kh, c), kv_vector16(v_cache, vs, j, kh, c + 16)
            v2, v3 = kv_vector16(v_cache, vs, j, kh, c + 32), kv_vector16(v_cache, vs, j, kh, c + 48)
            a0, a1, a2, a3 = _rescaled(a0, a1, a2, a3, rescales[g0, i])
            a0, a1, a2, a3 = _plus_value(a0, a1, a2, a3, weights[g0, i], v0, v1, v2, v3)
            if count > 1:
                b0, b1, b2, b3 = _rescaled(b0, b1, b2, b3, rescales[g1, i])
                b0, b1, b2, b3 = _plus_value(b0, b1, b2, b3, weights[g1, i], v0, v1, v2, v3)
            if count > 2:
                c0, c1, c2, c3 = _rescaled(c0, c1, c2, c3, rescales[g2, i])
                c0, c1, c2, c3 = _plus_value(c0, c1, c2, c3, weights[g2, i], v0, v1, v2, v3)
            if count > 3:
                d0, d1, d2, d3 = _rescaled(d0, d1, d2, d3, rescales[g3, i])
                d0, d1, d2, d3 = _plus_value(d0, d1, d2, d3, weights[g3, i], v0, v1, v2, v3)
        _store_four(acc[g0], c, a0, a1, a2, a3)
        if count > 1:
            _store_four(acc[g1], c, b0, b1, b2, b3)
        if count > 2:
            _store_four(acc[g2], c, c0, c1, c2, c3)
        if count > 3:
            _store_four(acc[g3], c, d0, d1, d2, d3)


def _values_tile_of(count):
    """_values_tile for `count` heads as a function of its own (as _scores_tile_of)."""

    @njit(cache=True)
    def tile(acc, g0, wide, v_cache, vs, kh, first, end, weights, rescales):
        _values_tile(acc, g0, count, wide, v_cache, vs, kh, first, end, weights, rescales)

    return tile


_values_of_1, _values_of_2, _values_of_3, _values_of_4 = (_values_tile_of(c) for c in range(1, 5))


@njit(cache=True, inline="always")
def _rescale_f16(acc, rescale, c0):
    """acc[c0:] *= rescale, each value rounded to float16 (ggml's float16 accumulator); element-wise,
    so sixteen lanes at a time while they last, then eight, then one."""
    dv = acc.shape[0]
    wide, eights = c0 + (dv - c0) // 16 * 16, dv - dv % 8
    for c in range(c0, wide, 16):
        pair_store(acc, c, round_f16x16(pair_load(acc, c) * twice(vsplat(rescale))))
    for c in range(wide, eights, 8):
        vstore(acc, c, round_f16x8(vload(acc, c) * vsplat(rescale)))
    for c in range(max(wide, eights), dv):
        acc[c] = round_f16(acc[c] * rescale)


@njit(cache=True, inline="always")
def _add_value_f16(acc, v_cache, vs, j, kh, weight, c0):
    """acc[c0:] += weight · V[j][c0:], each value rounded to float16; lanes as _rescale_f16."""
    dv = acc.shape[0]
    wide, eights = c0 + (dv - c0) // 16 * 16, dv - dv % 8
    for c in range(c0, wide, 16):
        v = kv_vector16(v_cache, vs, j, kh, c)
        pair_store(acc, c, round_f16x16(pair_fma(v, twice(vsplat(weight)), pair_load(acc, c))))
    for c in range(wide, eights, 8):
        vstore(acc, c, round_f16x8(vfma(kv_vector(v_cache, vs, j, kh, c), vsplat(weight), vload(acc, c))))
    for c in range(max(wide, eights), dv):
        acc[c] = round_f16(fma32(kv_value(v_cache, vs, j, kh, c), weight, acc[c]))

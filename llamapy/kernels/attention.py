"""Causal grouped-query attention over the KV cache, with an optional sliding window.

llama.cpp's CPU flash attention has two numerical regimes, and we follow both so that our logits
land on its own: batches of fewer than 64 queries round Q to float16 and accumulate the weighted
V sum in float16 with an online softmax; larger batches (tiled) keep Q and the sums in float32.
"""

import numpy as np
from numba import njit, prange

from ..numerics import EXACT
from ..quants._bits import fma32, lane, round_f16, vfma, vload, vsplat, vstore
from ..quants._pairs import (
    has_32_registers,
    high_half,
    low_half,
    pair_fma,
    pair_load,
    pair_store,
    pair_zero,
    round_f16x16,
    twice,
)
from .activations import expf_parts, ggml_expf
from .kv_access import kv_value, kv_vector, kv_vector16, round_f16x8

FA_TILE_Q = 64  # ggml's query tile: from this batch size on it takes the float32 tiled path
FA_TILE_KV = 64  # keys per tile in that path (a tile's 64 scores are eight 8-lane vectors)
FA_BLOCK_Q = 4  # queries of one head per task there: each key and value tile is read once for all of them
_CHUNK = 64  # elements of a tile handled at a time (64 keys x 64 = 16 KiB, held in L1 for the block's queries)

# A split one-query attention (numerics.Numerics.split_cells) cuts its cells into this many chunks:
# llama.cpp cuts one per thread, and our reference ran on two.
SPLIT_KV_THREADS = 2


def attention(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out, n_ctx=0, numerics=EXACT):
    """Softmax attention for queries q [n, n_head, d] at positions pos0 .. pos0+n-1.

    k_cache/v_cache are [n_ctx, n_head_kv, d] cells (any storage type of kv_access.py, with their
    per-32 scales) and hold every position up to pos0+n-1. Query t sees
    keys p with p <= pos0+t and, when window > 0, pos0+t - p < window (llama.cpp's standard SWA).
    n_ctx (the context size) decides, as in llama.cpp, when one-token attention splits its keys
    (numerics: the profile that says whether it does).
    One token runs serially: a parallel region costs more to start than nine heads take.
    """
    n = q.shape[0]
    if n >= FA_TILE_Q:
        if k_cache.dtype != np.float32 or v_cache.dtype != np.float32:
            raise TypeError("batches of 64 queries or more read the cache decoded to float32 (KVCache.view)")
        return _attention_blocked(q, keys_by_tile(k_cache), values_by_tile(v_cache), pos0, window, scale, out)
    kernel = _attention_parallel if n > 1 else _attention_serial
    return kernel(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out,
                  numerics.split_cells(pos0, n_ctx) if n == 1 else 0)


@njit(cache=True, inline="always")
def _expf_tile(kq, new_max):
    """kq[i] = ggml_expf(kq[i] - new_max) for the 64 scores of a tile: ggml_expf's main path for all
    of them in one loop the compiler vectorises, then ggml_expf itself wherever that path does not
    hold (|n| > 126: underflow, a masked key's -inf)."""
    slow = False
    for i in range(FA_TILE_KV):
        n, _, k, j = expf_parts(kq[i] - new_max)
        slow |= not (abs(n) <= np.float32(126.0))
        kq[i] = fma32(k, j, k)
    return slow


@njit(cache=True, inline="always")
def _add_scaled_rows(acc, scalars, rows, o0, m0, m1):
    """acc[0:64] += scalars[m] · rows[o0 + 64m : o0 + 64m + 64] for m = m0..m1-1 in order, one fma per
    element and m, the 64 sums held as eight vectors. A tile's scores (m: the element of the head,
    rows: the keys by element) and its weighted values (m: the key) are both this."""
    a0, a1, a2, a3 = vload(acc, 0), vload(acc, 8), vload(acc, 16), vload(acc, 24)
    a4, a5, a6, a7 = vload(acc, 32), vload(acc, 40), vload(acc, 48), vload(acc, 56)
    for m in range(m0, m1):
        s, o = vsplat(scalars[m]), o0 + 64 * m
        a0, a1 = vfma(s, vload(rows, o), a0), vfma(s, vload(rows, o + 8), a1)
        a2, a3 = vfma(s, vload(rows, o + 16), a2), vfma(s, vload(rows, o + 24), a3)
        a4, a5 = vfma(s, vload(rows, o + 32), a4), vfma(s, vload(rows, o + 40), a5)
        a6, a7 = vfma(s, vload(rows, o + 48), a6), vfma(s, vload(rows, o + 56), a7)
    vstore(acc, 0, a0)
    vstore(acc, 8, a1)
    vstore(acc, 16, a2)
    vstore(acc, 24, a3)
    vstore(acc, 32, a4)
    vstore(acc, 40, a5)
    vstore(acc, 48, a6)
    vstore(acc, 56, a7)


@njit(cache=True)
def _attend_block(q, t0, count, h, kt, vt, pos0, window, scale, out):
    """Queries t0..t0+count-1 of head h, each with _attend_tiled's arithmetic: per key tile the same
    score chains (dims in order), masking, online-softmax update and value fmas (keys in order) as
    alone; the block only shares the loads of each key and value tile."""
    d = q.shape[2]
    dv = out.shape[2]
    tiles = kt.shape[0] // (d * FA_TILE_KV)
    chunks = vt.shape[0] // (tiles * FA_TILE_KV * _CHUNK)  # dims of V / 64, rounded up
    accs = np.zeros((FA_BLOCK_Q, chunks * _CHUNK), np.float32)  # dims past dv stay unused
    acc = accs[:, :dv]
    kq = np.empty((FA_BLOCK_Q, FA_TILE_KV), np.float32)
    raw = np.empty(FA_TILE_KV, np.float32)
    firsts = np.empty(FA_BLOCK_Q, np.int64)
    running_max = np.full(FA_BLOCK_Q, -np.inf, np.float32)
    total = np.zeros(FA_BLOCK_Q, np.float32)
    for i in range(count):
        pos = pos0 + t0 + i
        first = max(0, pos - window + 1) if window > 0 else 0
        firsts[i] = first - first % FA_TILE_KV
    end_all = pos0 + t0 + count
    for start in range(firsts[0], end_all, FA_TILE_KV):
        # query i takes the tiles from its first one up to the one holding its own position
        kq[:] = 0.0  # each score chain starts from zero and runs over the head's elements in order,
        for c0 in range(0, d, _CHUNK):  # a chunk of them at a time (partial sums in kq between chunks)
            for i in range(count):
                if firsts[i] <= start < pos0 + t0 + i + 1:
                    _add_scaled_rows(kq[i], q[t0 + i, h], kt, start * d, c0, min(d, c0 + _CHUNK))
        for i in range(count):
            pos = pos0 + t0 + i
            end = pos + 1
            if not (firsts[i] <= start < end):
                continue
            first = max(0, pos - window + 1) if window > 0 else 0
            row = kq[i]
            tile_max = np.float32(-np.inf)
            for tk in range(FA_TILE_KV):
                j = start + tk
                if first <= j < end:
                    row[tk] = row[tk] * scale
                    tile_max = max(tile_max, row[tk])
                else:
                    row[tk] = -np.inf
            new_max = max(running_max[i], tile_max)
            if new_max > running_max[i]:
                rescale = np.float32(np.exp(np.float32(running_max[i] - new_max)))
                for c in range(dv):
                    acc[i, c] *= rescale
                total[i] *= rescale
            running_max[i] = new_max
            raw[:] = row
            if _expf_tile(row, new_max):
                for tk in range(FA_TILE_KV):
                    row[tk] = ggml_expf(raw[tk] - new_max)
            tile_sum = 0.0
            for g in range(0, FA_TILE_KV, 8):
                tile_sum += np.float64(((row[g + 4] + row[g]) + (row[g + 6] + row[g + 2]))
                                       + ((row[g + 5] + row[g + 1]) + (row[g + 7] + row[g + 3])))
            total[i] = np.float32(np.float64(total[i]) + tile_sum)
        for ch in range(chunks):
            o0 = (start // FA_TILE_KV * chunks + ch) * FA_TILE_KV * _CHUNK
            for i in range(count):
                pos = pos0 + t0 + i
                if firsts[i] <= start < pos + 1:
                    first = max(0, pos - window + 1) if window > 0 else 0
                    _add_scaled_rows(accs[i, ch * _CHUNK:], kq[i], vt, o0, max(first, start) - start,
                                     min(pos + 1, start + FA_TILE_KV) - start)
    for i in range(count):
        inv = np.float32(1.0) / total[i]
        for c in range(dv):
            out[t0 + i, h, c] = acc[i, c] * inv


@njit(cache=True, parallel=True)
def _attention_blocked(q, kt, vt, pos0, window, scale, out):
    """Tasks of FA_BLOCK_Q queries of one head, in zigzag order (first, last, second, ...): a causal
    batch's late queries see more keys, and prange hands each thread one run of tasks."""
    n, n_head, d = q.shape
    group = n_head // kt.shape[0]
    blocks = (n + FA_BLOCK_Q - 1) // FA_BLOCK_Q
    for task in prange(blocks * n_head):
        b, h = task // n_head, task % n_head
        b = b // 2 if b % 2 == 0 else blocks - 1 - b // 2
        t0 = b * FA_BLOCK_Q
        _attend_block(q, t0, min(FA_BLOCK_Q, n - t0), h, kt[h // group], vt[h // group], pos0, window, scale, out)
    return out


def keys_by_tile(k):
    """k [n_kv, heads, d] as [heads, tiles * d * 64] (tiles of FA_TILE_KV keys, zero-padded): in a tile,
    for each element the 64 keys side by side, and each tile contiguous (a chunk of 64 elements, 16 KiB,
    stays in L1 for a block's queries)."""
    n_kv, heads, d = k.shape
    tiles = -(-n_kv // FA_TILE_KV)
    kt = np.zeros((heads, tiles, FA_TILE_KV, d), np.float32)
    kt.reshape(heads, -1, d)[:, :n_kv] = k.transpose(1, 0, 2)
    return np.ascontiguousarray(kt.transpose(0, 1, 3, 2)).reshape(heads, -1)


def values_by_tile(v):
    """v [n_kv, heads, dv] as [heads, tiles * chunks * 64 * 64]: per tile of 64 keys, per chunk of 64
    elements (dv rounded up, zero-padded), the 64 keys' rows, each chunk a contiguous 16 KiB."""
    n_kv, heads, dv = v.shape
    tiles, chunks = -(-n_kv // FA_TILE_KV), -(-dv // _CHUNK)
    vt = np.zeros((heads, tiles * FA_TILE_KV, chunks * _CHUNK), np.float32)
    vt[:, :n_kv, :dv] = v.transpose(1, 0, 2)
    by_chunk = vt.reshape(heads, tiles, FA_TILE_KV, chunks, _CHUNK).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(by_chunk).reshape(heads, -1)


@njit(cache=True, inline="always")
def _attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    """Query t's heads that read kv head kh (task = t * n_head_kv + kh): they share each key and
    value as it is read."""
    n, n_head, d = q.shape
    n_kv = k_cache.shape[1]
    group = n_head // n_kv
    t, kh = task // n_kv, task % n_kv
    pos = pos0 + t
    first = max(0, pos - window + 1) if window > 0 else 0
    qs = np.empty((group, d), dtype=np.float32)
    for g in range(group):
        for c in range(d):
            qs[g, c] = round_f16(q[t, kh * group + g, c])
    _attend_group(qs, k_cache, ks, v_cache, vs, kh, first, pos + 1, scale, split_kv, out[t], kh * group)


@njit(cache=True, parallel=True)
def _attention_parallel(q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    for task in prange(q.shape[0] * k_cache.shape[1]):
        _attend_task(np.int64(task), q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv)
    return out


@njit(cache=True, inline="always")
def _attention_serial(q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    for task in range(q.shape[0] * k_cache.shape[1]):
        _attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv)
    return out


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


@njit(cache=True, inline="always")
def _line_aligned_rows(rows, n):
    """An empty float32 [rows, n rounded up to 16], each row starting on a cache line: numba's
    allocations start 32 bytes into one, and a sixteen-lane load or store there would touch two."""
    width = -(-n // 16) * 16
    buf = np.empty(rows * width + 16, dtype=np.float32)
    skip = (64 - buf.ctypes.data % 64) % 64 // 4
    return buf[skip:skip + rows * width].reshape(rows, width)


@njit(cache=True)
def _attend_group(qs, k_cache, ks, v_cache, vs, kh, first, end, scale, split_kv, out, h0):
    """The online softmax of each query qs[g] (heads h0 + g, all of kv head kh) over keys
    first..end-1, written to out[h0 + g]; with split_kv (llama.cpp's split of a long view, see
    numerics.py) over that many cells cut in one chunk per thread, each summed apart, then merged.
    Unsplit is the one-chunk case: merging a single chunk multiplies by exp(0) = 1 and adds to
    zero, the chunk's own values."""
    group, dv = qs.shape[0], out.shape[1]
    parts = SPLIT_KV_THREADS if split_kv else 1
    chunk = (split_kv + SPLIT_KV_THREADS - 1) // SPLIT_KV_THREADS if split_kv else end
    part = _line_aligned_rows(group, dv)
    steps = np.empty((2, group, max(end - first, 1)), dtype=np.float32)
    merged_max = np.full(group, -np.inf, dtype=np.float32)
    merged_total = np.zeros(group, dtype=np.float32)
    part_max, part_total = np.empty(group, dtype=np.float32), np.empty(group, dtype=np.float32)
    out[h0:h0 + group] = 0.0
    for c in range(parts):
        lo, hi = max(first, c * chunk), min(end, (c + 1) * chunk)
        if lo >= hi:
            continue
        for g in range(group):
            part_max[g], part_total[g] = _softmax_steps(qs[g], k_cache, ks, kh, lo, hi, scale, steps[0, g],
                                                        steps[1, g])
        _weighted_values(part, dv, v_cache, vs, kh, lo, hi, steps[0], steps[1])
        for g in range(group):
            new_max = max(merged_max[g], part_max[g])
            scale_old = np.float32(np.exp(np.float32(merged_max[g] - new_max)))
            scale_new = np.float32(np.exp(np.float32(part_max[g] - new_max)))
            o = out[h0 + g]
            for i in range(dv):
                o[i] = fma32(o[i], scale_old, part[g, i] * scale_new)
            merged_total[g] = fma32(merged_total[g], scale_old, part_total[g] * scale_new)
            merged_max[g] = new_max
    for g in range(group):
        inv = np.float32(1.0) / merged_total[g]
        o = out[h0 + g]
        for i in range(dv):
            o[i] = o[i] * inv


@njit(cache=True, inline="always")
def _softmax_steps(qv, k_cache, ks, kh, first, end, scale, weights, rescales):
    """ggml's one-query flash attention (float16 V accumulator) walks the keys once, each key's
    score, softmax step and value in turn. The same arithmetic runs here in passes over the keys:
    this one takes every score, then the running max, and leaves each key's weight and the rescale
    before it (weights, rescales: end - first of each); _weighted_values sums the values. The scores
    no longer wait on the accumulator, and each accumulator chain stays in a register across the
    keys. (max, sum of weights) back."""
    d = qv.shape[0]
    for j in range(first, end):
        if d % 32 == 0:
            s = _dot_f16_order(qv, k_cache, ks, j, kh)
        else:
            s = np.float32(0.0)
            for c in range(d):
                s += qv[c] * kv_value(k_cache, ks, j, kh, c)
        weights[j - first] = s * scale
    running_max = np.float32(-np.inf)
    total = np.float32(0.0)
    for i in range(end - first):
        s = weights[i]
        rescale = np.float32(1.0)
        weight = np.float32(1.0)
        if s > running_max:
            rescale = np.float32(np.exp(np.float32(running_max - s)))
            running_max = s
        else:
            weight = np.float32(np.exp(np.float32(s - running_max)))
        weights[i], rescales[i] = weight, rescale
        total = fma32(total, rescale, weight)
    return running_max, total


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
        for g0 in range(0, group, 4):
            _values_of_four(acc, g0, min(4, group - g0), wide, v_cache, vs, kh, first, end, weights, rescales)
    else:
        for g in range(group):
            _values_of_one(acc[g], wide, v_cache, vs, kh, first, end, weights[g], rescales[g])
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
def _values_of_one(acc, wide, v_cache, vs, kh, first, end, weights, rescales):
    """_weighted_values' first `wide` elements for one head, sixty-four at a time."""
    for c in range(0, wide, 64):
        a0, a1, a2, a3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        for j in range(first, end):
            a0, a1, a2, a3 = _rescaled(a0, a1, a2, a3, rescales[j - first])
            a0, a1, a2, a3 = _plus_value(a0, a1, a2, a3, weights[j - first],
                                         kv_vector16(v_cache, vs, j, kh, c), kv_vector16(v_cache, vs, j, kh, c + 16),
                                         kv_vector16(v_cache, vs, j, kh, c + 32),
                                         kv_vector16(v_cache, vs, j, kh, c + 48))
        _store_four(acc, c, a0, a1, a2, a3)


@njit(cache=True, inline="always")
def _values_of_four(acc, g0, count, wide, v_cache, vs, kh, first, end, weights, rescales):
    """_weighted_values' first `wide` elements for heads g0 .. g0+count-1 (count <= 4) together;
    with fewer than four the last head is summed again in the spare slots (the same values to the
    same row), which costs issue slots only where the chains' latency leaves them free."""
    g1, g2, g3 = g0 + min(1, count - 1), g0 + min(2, count - 1), g0 + min(3, count - 1)
    for c in range(0, wide, 64):
        a0, a1, a2, a3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        b0, b1, b2, b3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        c0, c1, c2, c3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        d0, d1, d2, d3 = pair_zero(), pair_zero(), pair_zero(), pair_zero()
        for j in range(first, end):
            i = j - first
            a0, a1, a2, a3 = _rescaled(a0, a1, a2, a3, rescales[g0, i])
            b0, b1, b2, b3 = _rescaled(b0, b1, b2, b3, rescales[g1, i])
            c0, c1, c2, c3 = _rescaled(c0, c1, c2, c3, rescales[g2, i])
            d0, d1, d2, d3 = _rescaled(d0, d1, d2, d3, rescales[g3, i])
            v0, v1 = kv_vector16(v_cache, vs, j, kh, c), kv_vector16(v_cache, vs, j, kh, c + 16)
            v2, v3 = kv_vector16(v_cache, vs, j, kh, c + 32), kv_vector16(v_cache, vs, j, kh, c + 48)
            a0, a1, a2, a3 = _plus_value(a0, a1, a2, a3, weights[g0, i], v0, v1, v2, v3)
            b0, b1, b2, b3 = _plus_value(b0, b1, b2, b3, weights[g1, i], v0, v1, v2, v3)
            c0, c1, c2, c3 = _plus_value(c0, c1, c2, c3, weights[g2, i], v0, v1, v2, v3)
            d0, d1, d2, d3 = _plus_value(d0, d1, d2, d3, weights[g3, i], v0, v1, v2, v3)
        _store_four(acc[g0], c, a0, a1, a2, a3)
        _store_four(acc[g1], c, b0, b1, b2, b3)
        _store_four(acc[g2], c, c0, c1, c2, c3)
        _store_four(acc[g3], c, d0, d1, d2, d3)


def attention_plain(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out):
    """Attention without flash attention (-fa off), as llama.cpp's graph without it: the scores
    q·k of every visible key (Q rounded to float16, as ggml's f16 mat-mul takes it), one softmax
    in float32, then the weights (rounded to float16) times V. Same interface as attention()."""
    kernel = _plain_parallel if q.shape[0] > 1 else _plain_serial
    return kernel(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out)


@njit(cache=True)
def _plain_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out):
    n, n_head, d = q.shape
    dv = out.shape[2]
    kh = (task % n_head) // (n_head // k_cache.shape[1])
    t, h = task // n_head, task % n_head
    pos = pos0 + t
    first = max(0, pos - window + 1) if window > 0 else 0
    scores = np.empty(pos + 1 - first, np.float32)
    peak = np.float32(-np.inf)
    for j in range(first, pos + 1):
        s = np.float32(0.0)
        for c in range(d):
            s += round_f16(q[t, h, c]) * kv_value(k_cache, ks, j, kh, c)
        scores[j - first] = s * scale
        peak = max(peak, scores[j - first])
    total = np.float32(0.0)
    for i in range(scores.shape[0]):
        scores[i] = np.float32(np.exp(scores[i] - peak))
        total += scores[i]
    inv = np.float32(1.0) / total
    for c in range(dv):
        out[t, h, c] = 0.0
    for j in range(first, pos + 1):
        w = round_f16(scores[j - first] * inv)
        for c in range(dv):
            out[t, h, c] += w * kv_value(v_cache, vs, j, kh, c)


@njit(cache=True, parallel=True)
def _plain_parallel(q, k_cache, ks, v_cache, vs, pos0, window, scale, out):
    for task in prange(q.shape[0] * q.shape[1]):
        _plain_task(np.int64(task), q, k_cache, ks, v_cache, vs, pos0, window, scale, out)
    return out


@njit(cache=True)
def _plain_serial(q, k_cache, ks, v_cache, vs, pos0, window, scale, out):
    for task in range(q.shape[0] * q.shape[1]):
        _plain_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out)
    return out

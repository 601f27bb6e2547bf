"""Causal grouped-query attention over the KV cache, with an optional sliding window.

llama.cpp's CPU flash attention has two numerical regimes, and we follow both so that our logits
land on its own: batches of fewer than 64 queries round Q to float16 and accumulate the weighted
V sum in float16 with an online softmax; larger batches (tiled) keep Q and the sums in float32.
"""

import numpy as np
from numba import njit, prange

from ..quants._bits import fma32, lane, round_f16, vadd, vfma, vload, vmul, vsplat, vstore, vzero
from .activations import ggml_expf
from .kv_access import kv_value, kv_vector, round_f16x8

FA_TILE_Q = 64  # ggml's query tile: from this batch size on it takes the float32 tiled path
FA_TILE_KV = 64  # keys per tile in that path (_attend_tiled_by_dim holds them as eight 8-lane vectors)

KV_PAD = 256  # llama.cpp views its KV cache in multiples of 256 cells
SPLIT_KV_MIN = 512  # from this many cells one-token attention is split across threads
SPLIT_KV_THREADS = 2  # the split follows the thread count; our reference used 2


def attention(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out, n_ctx=0):
    """Softmax attention for queries q [n, n_head, d] at positions pos0 .. pos0+n-1.

    k_cache/v_cache are [n_ctx, n_head_kv, d] cells (any storage type of kv_access.py, with their
    per-32 scales) and hold every position up to pos0+n-1. Query t sees
    keys p with p <= pos0+t and, when window > 0, pos0+t - p < window (llama.cpp's standard SWA).
    n_ctx (the context size) decides, as in llama.cpp, when one-token attention splits its keys.
    One token runs serially: a parallel region costs more to start than nine heads take.
    """
    n = q.shape[0]
    if n >= FA_TILE_Q:
        if k_cache.dtype != np.float32 or v_cache.dtype != np.float32:
            raise TypeError("batches of 64 queries or more read the cache decoded to float32 (KVCache.view as_float)")
        return _attention_tiled(q, _keys_by_dim(k_cache), v_cache, pos0, window, scale, out)
    kernel = _attention_parallel if n > 1 else _attention_serial
    return kernel(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out,
                  split_cells(pos0, n_ctx) if n == 1 else 0)


def split_cells(pos0: int, n_ctx: int) -> int:
    """For one query at pos0: the cells its keys are split over as llama.cpp splits them (the KV
    view it would take), or 0 when that view is too short to split."""
    n_kv = min(_pad(max(n_ctx, 1)), max(KV_PAD, _pad(pos0 + 1)))
    return n_kv if n_kv >= SPLIT_KV_MIN else 0


def _keys_by_dim(k):
    """k [n_kv, heads, d] as [heads, d, n_kv rounded up to FA_TILE_KV], zero-padded: for a fixed
    element, consecutive keys are contiguous, so a tile's scores are computed side by side."""
    n_kv, heads, d = k.shape
    padded = -(-n_kv // FA_TILE_KV) * FA_TILE_KV
    kt = np.zeros((heads, d, padded), np.float32)
    kt[:, :, :n_kv] = k.transpose(1, 2, 0)
    return kt


@njit(cache=True, parallel=True)
def _attention_tiled(q, kt, v_cache, pos0, window, scale, out):
    """ggml's tiled flash attention (batches of FA_TILE_Q queries or more) with the keys by element:
    each score is still one sequential fma chain over the head (ggml's order), but 64 chains run
    side by side, one per key of the tile, instead of one after the other."""
    n, n_head, d = q.shape
    group = n_head // kt.shape[0]
    for task in prange(n * n_head):
        t, h = task // n_head, task % n_head
        pos = pos0 + t
        first = max(0, pos - window + 1) if window > 0 else 0
        _attend_tiled_by_dim(q[t, h], kt[h // group].reshape(-1), kt.shape[2], v_cache, h // group, first, pos + 1,
                             scale, out[t, h])
    return out


@njit(cache=True)
def _attend_tiled_by_dim(qv, kt, n_pad, v_cache, kh, first, end, scale, out):
    """_attend_tiled's arithmetic, the scores of a tile computed key-parallel from kt (flat [d, n_pad]):
    eight vectors of eight keys, one fused multiply-add per element and key, as the scalar chain."""
    d = qv.shape[0]
    dv = out.shape[0]
    acc = np.zeros(dv, dtype=np.float32)
    kq = np.empty(FA_TILE_KV, dtype=np.float32)
    running_max = np.float32(-np.inf)
    total = np.float32(0.0)
    for start in range(first - first % FA_TILE_KV, end, FA_TILE_KV):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzero()
        for c in range(d):
            qc, o = vsplat(qv[c]), c * n_pad + start
            a0, a1 = vfma(qc, vload(kt, o), a0), vfma(qc, vload(kt, o + 8), a1)
            a2, a3 = vfma(qc, vload(kt, o + 16), a2), vfma(qc, vload(kt, o + 24), a3)
            a4, a5 = vfma(qc, vload(kt, o + 32), a4), vfma(qc, vload(kt, o + 40), a5)
            a6, a7 = vfma(qc, vload(kt, o + 48), a6), vfma(qc, vload(kt, o + 56), a7)
        vstore(kq, 0, a0)
        vstore(kq, 8, a1)
        vstore(kq, 16, a2)
        vstore(kq, 24, a3)
        vstore(kq, 32, a4)
        vstore(kq, 40, a5)
        vstore(kq, 48, a6)
        vstore(kq, 56, a7)
        tile_max = np.float32(-np.inf)
        for tk in range(FA_TILE_KV):
            j = start + tk
            if first <= j < end:
                kq[tk] = kq[tk] * scale
                tile_max = max(tile_max, kq[tk])
            else:
                kq[tk] = -np.inf
        new_max = max(running_max, tile_max)
        if new_max > running_max:
            rescale = np.float32(np.exp(np.float32(running_max - new_max)))
            for c in range(dv):
                acc[c] *= rescale
            total *= rescale
        running_max = new_max
        tile_sum = 0.0
        for g in range(0, FA_TILE_KV, 8):
            for m in range(8):
                kq[g + m] = ggml_expf(kq[g + m] - new_max)
            tile_sum += np.float64(((kq[g + 4] + kq[g]) + (kq[g + 6] + kq[g + 2]))
                                   + ((kq[g + 5] + kq[g + 1]) + (kq[g + 7] + kq[g + 3])))
        total = np.float32(np.float64(total) + tile_sum)
        for tk in range(FA_TILE_KV):
            j = start + tk
            if first <= j < end:
                w = kq[tk]
                for c in range(dv):
                    acc[c] = fma32(w, v_cache[j, kh, c], acc[c])
    inv = np.float32(1.0) / total
    for c in range(dv):
        out[c] = acc[c] * inv


def _pad(n: int) -> int:
    return (n + KV_PAD - 1) // KV_PAD * KV_PAD


@njit(cache=True, inline="always")
def _attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    n, n_head, d = q.shape
    group = n_head // k_cache.shape[1]
    t = task // n_head
    h = task % n_head
    pos = pos0 + t
    first = max(0, pos - window + 1) if window > 0 else 0
    qv = q[t, h].copy()
    for c in range(d):
        qv[c] = round_f16(qv[c])
    if split_kv:
        _attend_split(qv, k_cache, ks, v_cache, vs, h // group, first, pos + 1, scale, split_kv, out[t, h])
    else:
        _attend_one(qv, k_cache, ks, v_cache, vs, h // group, first, pos + 1, scale, True, out[t, h])


@njit(cache=True, parallel=True)
def _attention_parallel(q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    for task in prange(q.shape[0] * q.shape[1]):
        _attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv)
    return out


@njit(cache=True)
def _attention_serial(q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    for task in range(q.shape[0] * q.shape[1]):
        _attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv)
    return out


@njit(cache=True, inline="always")
def _dot_f16_order(qv, k_cache, ks, j, kh):
    """q·k summed as ggml_vec_dot_f16 does on AVX2: four 8-lane fused accumulators over steps of 32,
    then its reduce (the four added pairwise, then the halves, then the last four lanes)."""
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    for i in range(0, qv.shape[0], 32):
        a0 = vfma(vload(qv, i), kv_vector(k_cache, ks, j, kh, i), a0)
        a1 = vfma(vload(qv, i + 8), kv_vector(k_cache, ks, j, kh, i + 8), a1)
        a2 = vfma(vload(qv, i + 16), kv_vector(k_cache, ks, j, kh, i + 16), a2)
        a3 = vfma(vload(qv, i + 24), kv_vector(k_cache, ks, j, kh, i + 24), a3)
    p = vadd(vadd(a0, a2), vadd(a1, a3))
    return ((lane(p, 0) + lane(p, 4)) + (lane(p, 1) + lane(p, 5))) + ((lane(p, 2) + lane(p, 6))
                                                                    + (lane(p, 3) + lane(p, 7)))


@njit(cache=True, inline="always")
def _rescale_f16(acc, rescale):
    """acc *= rescale, each value rounded to float16 (ggml's float16 accumulator)."""
    r = vsplat(rescale)
    for c in range(0, acc.shape[0], 8):
        vstore(acc, c, round_f16x8(vmul(vload(acc, c), r)))


@njit(cache=True, inline="always")
def _add_value_f16(acc, v_cache, vs, j, kh, weight):
    """acc += weight · V[j], each value rounded to float16."""
    w = vsplat(weight)
    for c in range(0, acc.shape[0], 8):
        vstore(acc, c, round_f16x8(vfma(kv_vector(v_cache, vs, j, kh, c), w, vload(acc, c))))


@njit(cache=True)
def _attend_one(qv, k_cache, ks, v_cache, vs, kh, first, end, scale, half_precision, out):
    """Online softmax over keys first..end-1 of kv head kh, written to out [dv]."""
    running_max, total = _online_softmax(qv, k_cache, ks, v_cache, vs, kh, first, end, scale, half_precision, out)
    inv = np.float32(1.0) / total
    for c in range(out.shape[0]):
        out[c] = out[c] * inv


@njit(cache=True)
def _attend_split(qv, k_cache, ks, v_cache, vs, kh, first, end, scale, n_kv, out):
    """One token over n_kv cells cut in one chunk per thread, each summed apart, then merged."""
    dv = out.shape[0]
    chunk = (n_kv + SPLIT_KV_THREADS - 1) // SPLIT_KV_THREADS
    part = np.empty(dv, dtype=np.float32)
    merged_max = np.float32(-np.inf)
    merged_total = np.float32(0.0)
    out[:] = 0.0
    for c in range(SPLIT_KV_THREADS):
        lo, hi = max(first, c * chunk), min(end, (c + 1) * chunk)
        if lo >= hi:
            continue
        part_max, part_total = _online_softmax(qv, k_cache, ks, v_cache, vs, kh, lo, hi, scale, True, part)
        new_max = max(merged_max, part_max)
        scale_old = np.float32(np.exp(np.float32(merged_max - new_max)))
        scale_new = np.float32(np.exp(np.float32(part_max - new_max)))
        for i in range(dv):
            out[i] = fma32(out[i], scale_old, part[i] * scale_new)
        merged_total = fma32(merged_total, scale_old, part_total * scale_new)
        merged_max = new_max
    inv = np.float32(1.0) / merged_total
    for i in range(dv):
        out[i] = out[i] * inv


@njit(cache=True, inline="always")
def _online_softmax(qv, k_cache, ks, v_cache, vs, kh, first, end, scale, half_precision, acc):
    """ggml's one-query flash attention: acc gets the unnormalised weighted V sum; (max, sum) back."""
    d = qv.shape[0]
    dv = acc.shape[0]
    acc[:] = 0.0
    running_max = np.float32(-np.inf)
    total = np.float32(0.0)
    vector_v = half_precision and dv % 8 == 0
    for j in range(first, end):
        if half_precision and d % 32 == 0:
            s = _dot_f16_order(qv, k_cache, ks, j, kh)
        else:
            s = np.float32(0.0)
            for c in range(d):
                s += qv[c] * kv_value(k_cache, ks, j, kh, c)
        s *= scale
        rescale = np.float32(1.0)
        weight = np.float32(1.0)
        if s > running_max:
            rescale = np.float32(np.exp(np.float32(running_max - s)))
            running_max = s
            if vector_v:
                _rescale_f16(acc, rescale)
            else:
                for c in range(dv):
                    acc[c] *= rescale
                    if half_precision:
                        acc[c] = round_f16(acc[c])
        else:
            weight = np.float32(np.exp(np.float32(s - running_max)))
        if vector_v:
            _add_value_f16(acc, v_cache, vs, j, kh, weight)
        else:
            for c in range(dv):
                acc[c] = fma32(kv_value(v_cache, vs, j, kh, c), weight, acc[c])
                if half_precision:
                    acc[c] = round_f16(acc[c])
        total = fma32(total, rescale, weight)
    return running_max, total


def attention_plain(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out):
    """Attention without flash attention (-fa off), as llama.cpp's graph without it: the scores
    q·k of every visible key (Q rounded to float16, as ggml's f16 mat-mul takes it), one softmax
    in float32, then the weights (rounded to float16) times V. Same interface as attention()."""
    kernel = _plain_parallel if q.shape[0] > 1 else _plain_serial
    return kernel(q, k_cache, k_scales, v_cache, v_scales, pos0, window, scale, out)


@njit(cache=True, inline="always")
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
        _plain_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out)
    return out


@njit(cache=True)
def _plain_serial(q, k_cache, ks, v_cache, vs, pos0, window, scale, out):
    for task in range(q.shape[0] * q.shape[1]):
        _plain_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out)
    return out

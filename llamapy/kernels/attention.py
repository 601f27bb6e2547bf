"""Causal grouped-query attention over the KV cache, with an optional sliding window.

llama.cpp's CPU flash attention has two numerical regimes, and we follow both so that our logits
land on its own: batches of fewer than 64 queries round Q to float16 and accumulate the weighted
V sum in float16 with an online softmax; larger batches (tiled) keep Q and the sums in float32.
"""

import numpy as np
from numba import njit, prange

from ..quants._bits import fma32
from .activations import ggml_expf

FA_TILE_Q = 64  # ggml's query tile: from this batch size on it takes the float32 tiled path
FA_TILE_KV = 64  # keys per tile in that path

F16_MIN_NORMAL = np.float32(6.103515625e-05)
F16_SUBNORMAL_STEP = np.float32(2.0 ** -24)
VELTKAMP_F16 = np.float32(8193.0)  # 2**13 + 1 splits a float32 into its top 11 significant bits


@njit(cache=True, inline="always")
def round_f16(x):
    """x rounded to the nearest float16 value, returned as float32 (numba has no float16)."""
    if abs(x) < F16_MIN_NORMAL:
        return np.float32(np.rint(x / F16_SUBNORMAL_STEP)) * F16_SUBNORMAL_STEP
    c = x * VELTKAMP_F16
    return c - (c - x)


def attention(q, k_cache, v_cache, pos0, window, scale, out):
    """Softmax attention for queries q [n, n_head, d] at positions pos0 .. pos0+n-1.

    k_cache/v_cache are [n_ctx, n_head_kv, d] and hold every position up to pos0+n-1. Query t sees
    keys p with p <= pos0+t and, when window > 0, pos0+t - p < window (llama.cpp's standard SWA).
    One token runs serially: a parallel region costs more to start than nine heads take.
    """
    kernel = _attention_parallel if q.shape[0] > 1 else _attention_serial
    return kernel(q, k_cache, v_cache, pos0, window, scale, out)


@njit(cache=True, inline="always")
def _attend_task(task, q, k_cache, v_cache, pos0, window, scale, out):
    n, n_head, d = q.shape
    group = n_head // k_cache.shape[1]
    t = task // n_head
    h = task % n_head
    pos = pos0 + t
    first = max(0, pos - window + 1) if window > 0 else 0
    qv = q[t, h].copy()
    if n < FA_TILE_Q:
        for c in range(d):
            qv[c] = round_f16(qv[c])
        _attend_one(qv, k_cache, v_cache, h // group, first, pos + 1, scale, True, out[t, h])
    else:
        _attend_tiled(qv, k_cache, v_cache, h // group, first, pos + 1, scale, out[t, h])


@njit(cache=True, parallel=True)
def _attention_parallel(q, k_cache, v_cache, pos0, window, scale, out):
    for task in prange(q.shape[0] * q.shape[1]):
        _attend_task(task, q, k_cache, v_cache, pos0, window, scale, out)
    return out


@njit(cache=True)
def _attention_serial(q, k_cache, v_cache, pos0, window, scale, out):
    for task in range(q.shape[0] * q.shape[1]):
        _attend_task(task, q, k_cache, v_cache, pos0, window, scale, out)
    return out


@njit(cache=True)
def _attend_tiled(qv, k_cache, v_cache, kh, first, end, scale, out):
    """ggml's tiled flash attention for one query: keys in tiles of 64 from position 0, scores as
    sequential fma chains, an online softmax per tile with ggml's expf, V summed in float32."""
    d = qv.shape[0]
    dv = out.shape[0]
    acc = np.zeros(dv, dtype=np.float32)
    kq = np.empty(FA_TILE_KV, dtype=np.float32)
    running_max = np.float32(-np.inf)
    total = np.float32(0.0)
    for start in range(first - first % FA_TILE_KV, end, FA_TILE_KV):
        tile_max = np.float32(-np.inf)
        for tk in range(FA_TILE_KV):
            j = start + tk
            if first <= j < end:
                s = np.float32(0.0)
                for c in range(d):
                    s = fma32(qv[c], k_cache[j, kh, c], s)
                kq[tk] = s * scale
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
                for c in range(dv):
                    acc[c] = fma32(kq[tk], v_cache[j, kh, c], acc[c])
    inv = np.float32(1.0) / total
    for c in range(dv):
        out[c] = acc[c] * inv


@njit(cache=True, inline="always")
def _dot_f16_order(qv, k_cache, j, kh, acc):
    """q·k summed as ggml_vec_dot_f16 does on AVX2: 4×8 fused lanes over steps of 32, then its reduce."""
    d = qv.shape[0]
    acc[:] = 0.0
    for i in range(0, d, 32):
        for m in range(32):
            acc[m] = fma32(qv[i + m], k_cache[j, kh, i + m], acc[m])
    t0 = ((acc[0] + acc[16]) + (acc[8] + acc[24])) + ((acc[4] + acc[20]) + (acc[12] + acc[28]))
    t1 = ((acc[1] + acc[17]) + (acc[9] + acc[25])) + ((acc[5] + acc[21]) + (acc[13] + acc[29]))
    t2 = ((acc[2] + acc[18]) + (acc[10] + acc[26])) + ((acc[6] + acc[22]) + (acc[14] + acc[30]))
    t3 = ((acc[3] + acc[19]) + (acc[11] + acc[27])) + ((acc[7] + acc[23]) + (acc[15] + acc[31]))
    return (t0 + t1) + (t2 + t3)


@njit(cache=True)
def _attend_one(qv, k_cache, v_cache, kh, first, end, scale, half_precision, out):
    """Online softmax over keys first..end-1 of kv head kh, written to out [dv]."""
    d = qv.shape[0]
    dv = out.shape[0]
    acc = np.zeros(dv, dtype=np.float32)
    lanes = np.empty(32, dtype=np.float32)
    running_max = -np.inf
    total = np.float32(0.0)
    for j in range(first, end):
        if half_precision and d % 32 == 0:
            s = _dot_f16_order(qv, k_cache, j, kh, lanes)
        else:
            s = np.float32(0.0)
            for c in range(d):
                s += qv[c] * k_cache[j, kh, c]
        s *= scale
        rescale = np.float32(1.0)
        weight = np.float32(1.0)
        if s > running_max:
            rescale = np.float32(np.exp(np.float32(running_max - s)))
            running_max = s
            for c in range(dv):
                acc[c] *= rescale
                if half_precision:
                    acc[c] = round_f16(acc[c])
        else:
            weight = np.float32(np.exp(np.float32(s - running_max)))
        for c in range(dv):
            acc[c] = fma32(v_cache[j, kh, c], weight, acc[c])
            if half_precision:
                acc[c] = round_f16(acc[c])
        total = fma32(total, rescale, weight)
    inv = np.float32(1.0) / total
    for c in range(dv):
        out[c] = acc[c] * inv

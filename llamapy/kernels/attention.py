"""Causal grouped-query attention over the KV cache, with an optional sliding window.

llama.cpp's CPU flash attention has two numerical regimes, and we follow both so that our logits
land on its own: batches of fewer than 64 queries round Q to float16 and accumulate the weighted
V sum in float16 with an online softmax (one_query.py, per query); larger batches (tiled, here)
keep Q and the sums in float32.
"""

import numpy as np
from numba import njit, prange

from ..numerics import EXACT
from ..quants._bits import fma32, round_f16, vfma, vload, vsplat, vstore
from .activations import expf_parts, ggml_expf
from .kv_access import kv_value
from .one_query import attend_task

FA_TILE_Q = 64  # ggml's query tile: from this batch size on it takes the float32 tiled path
FA_TILE_KV = 64  # keys per tile in that path (a tile's 64 scores are eight 8-lane vectors)
FA_BLOCK_Q = 4  # queries of one head per task there: each key and value tile is read once for all of them
_CHUNK = 64  # elements of a tile handled at a time (64 keys x 64 = 16 KiB, held in L1 for the block's queries)


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


@njit(cache=True, parallel=True)
def _attention_parallel(q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    for task in prange(q.shape[0] * k_cache.shape[1]):
        attend_task(np.int64(task), q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv)
    return out


@njit(cache=True, inline="always")
def _attention_serial(q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv):
    for task in range(q.shape[0] * k_cache.shape[1]):
        attend_task(task, q, k_cache, ks, v_cache, vs, pos0, window, scale, out, split_kv)
    return out


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

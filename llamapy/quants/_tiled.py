"""ggml's tiled K-quant matmul, which llama.cpp's CPU backend takes for batches of 8 tokens or more
when the weights are not repacked (Q6_K on x86). Its arithmetic per output differs from the
one-token dot product: each 256-quant superblock's exact integer sum is scaled by the weight's d,
then added with one fma per superblock times the activation's d.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import fma32
from ._exact import ROWS_PER_TASK, _decode_q6_k

TILED_MIN_BATCH = 8


@njit(cache=True, parallel=True)
def tiled_q6_k(raw, xq, xd, out):
    """out[t, r] = W[r] · x[t] for Q6_K weights and Q8_K activations, as ggml's tiled kernel.

    A row is decoded once to scale·(q - 32) per quant; sums over 16 quants stay below 2^24 and so
    are exact in float32, and a superblock's 16 of them are added in float64, as exact as ggml's int32.
    """
    rows = raw.shape[0]
    n, k = xq.shape
    nb = k // 256
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        wq = np.empty(k, dtype=np.float32)
        wsc = np.empty(nb * 16, dtype=np.float32)
        wd = np.empty(nb, dtype=np.float32)
        groups = np.empty(k // 16, dtype=np.float32)
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            _decode_q6_k(raw[r], wq, wsc, wd)
            for i in range(k):
                wq[i] = (wq[i] - np.float32(32.0)) * wsc[i // 16]
            for t in range(n):
                x = xq[t]
                for g in range(k // 16):
                    part = np.float32(0.0)
                    for i in range(g * 16, g * 16 + 16):
                        part += wq[i] * x[i]
                    groups[g] = part
                acc = np.float32(0.0)
                for b in range(nb):
                    total = 0.0
                    for g in range(b * 16, b * 16 + 16):
                        total += np.float64(groups[g])
                    acc = fma32(wd[b] * np.float32(total), xd[t, b], acc)
                out[t, r] = acc
    return out

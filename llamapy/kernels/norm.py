"""RMS normalisation over the last axis."""

import numpy as np
from numba import njit, prange

from ..quants._exact import PARALLEL_MIN_ROWS  # fewer rows (one token's heads) stay serial


@njit(cache=True)
def _rms_norm_row(x, weight, eps, out, i):
    d = x.shape[1]
    acc = 0.0
    for j in range(d):
        acc += np.float64(x[i, j] * x[i, j])
    scale = np.float32(1.0) / np.sqrt(np.float32(acc / d) + np.float32(eps))
    for j in range(d):
        out[i, j] = (x[i, j] * scale) * weight[j]


@njit(cache=True, parallel=True)
def rms_norm(x, weight, eps, out):
    """out[i] = x[i] / rms(x[i]) * weight, for each row of a 2-D x (rows in parallel from
    PARALLEL_MIN_ROWS on; each row's arithmetic the same either way).

    As ggml: each square is taken in float32 and summed in float64, in order.
    """
    n = x.shape[0]
    if n < PARALLEL_MIN_ROWS:
        for i in range(n):
            _rms_norm_row(x, weight, eps, out, i)
    else:
        for i in prange(n):
            _rms_norm_row(x, weight, eps, out, np.int64(i))
    return out

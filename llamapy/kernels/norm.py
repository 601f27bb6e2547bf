"""RMS normalisation over the last axis."""

import numpy as np
from numba import njit


@njit(cache=True)
def rms_norm(x, weight, eps, out):
    """out[i] = x[i] / rms(x[i]) * weight, for each row of a 2-D x.

    As ggml: each square is taken in float32 and summed in float64, in order.
    """
    n, d = x.shape
    for i in range(n):
        acc = 0.0
        for j in range(d):
            acc += np.float64(x[i, j] * x[i, j])
        scale = np.float32(1.0) / np.sqrt(np.float32(acc / d) + np.float32(eps))
        for j in range(d):
            out[i, j] = (x[i, j] * scale) * weight[j]
    return out

"""Gated activations of the feed-forward block, computed as ggml computes them on x86."""

import numpy as np
from numba import njit, prange

from ..quants._bits import f16_bits, f16_to_f32, f32_as_u32, fma32, round_f16, u32_as_f32
from ..quants._exact import PARALLEL_MIN_ROWS  # fewer rows (a decode step) stay serial

SQRT_2_OVER_PI = np.float32(0.7978845608028654)
GELU_COEF_A = np.float32(0.044715)

# ggml's vectorised expf (from Arm's optimized routines): 2^n · p(b) with a degree-5 polynomial.
_SHIFT = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_P0 = np.float32(float.fromhex("0x1.0e4020p-7"))
_P1 = np.float32(float.fromhex("0x1.573e2ep-5"))
_P2 = np.float32(float.fromhex("0x1.555e66p-3"))
_P3 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_P4 = np.float32(float.fromhex("0x1.ffffecp-1"))
_ONE_BITS = np.uint32(0x3F800000)


@njit(cache=True, inline="always")
def expf_parts(x):
    """ggml_v_expf's main path: (n, e, k, j), exp(x) = k + k·j wherever |n| <= 126."""
    z = fma32(x, _LOG2E, _SHIFT)
    n = z - _SHIFT
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    e = np.uint32(f32_as_u32(z) << np.uint32(23))
    k = u32_as_f32(np.uint32(e + _ONE_BITS))
    u = b * b
    j = fma32(fma32(fma32(_P0, b, _P1), u, fma32(_P2, b, _P3)), u, _P4 * b)
    return n, e, k, j


@njit(cache=True, inline="always")
def ggml_expf(x):
    """exp(x) to within 1.5 ulp, bit for bit as ggml_v_expf (AVX2 + FMA) computes it."""
    n, e, k, j = expf_parts(x)
    if abs(n) <= np.float32(126.0):
        return fma32(k, j, k)
    g = np.uint32(0x82000000) if n <= 0 else np.uint32(0)
    s1 = u32_as_f32(np.uint32(g + np.uint32(0x7F000000)))
    if abs(n) > np.float32(192.0):
        return s1 * s1
    s2 = u32_as_f32(np.uint32(e - g))
    return fma32(s2, j, s2) * s1


# error_model="numpy": without it numba guards each division against zero, and the guard keeps
# the loop scalar (1 + e >= 1 here).
@njit(cache=True, error_model="numpy")
def _swiglu_row(gate, up, out, t, vector_end):
    """One row: ggml_expf's main path over the vector part in a loop the compiler vectorises, then
    ggml_expf itself where that path does not hold (|n| > 126), libm's expf on the tail as ggml's."""
    slow = False
    for i in range(vector_end):
        x = gate[t, i]
        n, _, k, j = expf_parts(-x)
        slow |= not (abs(n) <= np.float32(126.0))
        out[t, i] = x / (np.float32(1.0) + fma32(k, j, k)) * up[t, i]
    if slow:
        for i in range(vector_end):
            x = gate[t, i]
            out[t, i] = x / (np.float32(1.0) + ggml_expf(-x)) * up[t, i]
    for i in range(vector_end, gate.shape[1]):
        x = gate[t, i]
        out[t, i] = x / (np.float32(1.0) + np.float32(np.exp(-x))) * up[t, i]


@njit(cache=True)
def swiglu(gate, up):
    """silu(gate) * up over [n, d]; ggml's vector path (groups of 8) with its own expf."""
    n, d = gate.shape
    out = np.empty_like(gate)
    for t in range(n):
        _swiglu_row(gate, up, out, t, d - d % 8)
    return out


@njit(cache=True)
def _gelu_f16_table():
    """ggml_table_gelu_f16: for every float16 h (by its bits), GELU(h) rounded to float16, here held
    as float32. Built with libm's tanhf and GCC's fused multiply-add, as ggml builds it."""
    table = np.empty(65536, np.float32)
    for i in range(65536):
        h = f16_to_f32(np.uint16(i))
        inner = SQRT_2_OVER_PI * h * fma32(GELU_COEF_A * h, h, np.float32(1.0))
        table[i] = round_f16(np.float32(0.5) * h * (np.float32(1.0) + np.tanh(inner)))
    return table


GELU_F16 = _gelu_f16_table()  # a constant of the kernels below (256 KiB, built in ~1 ms)


@njit(cache=True)
def _geglu_row(gate, up, out, t):
    for i in range(gate.shape[1]):
        x = gate[t, i]
        if x <= np.float32(-10.0):
            out[t, i] = 0.0
        elif x >= np.float32(10.0):
            out[t, i] = x * up[t, i]
        else:
            out[t, i] = GELU_F16[f16_bits(x)] * up[t, i]


@njit(cache=True, parallel=True)
def geglu(gate, up):
    """tanh-approximated GELU of gate, times up, over [n, d].

    ggml reads GELU from a table indexed by the float16 input and holding float16 results (built
    with libm's tanhf and GCC's fused multiply-add): the same table here (GELU_F16); beyond
    |x| >= 10 it saturates to 0 / x. Rows run in parallel from PARALLEL_MIN_ROWS rows on.
    """
    n = gate.shape[0]
    out = np.empty_like(gate)
    if n < PARALLEL_MIN_ROWS:
        for t in range(n):
            _geglu_row(gate, up, out, t)
    else:
        for t in prange(n):
            _geglu_row(gate, up, out, np.int64(t))
    return out

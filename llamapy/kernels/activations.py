"""Gated activations of the feed-forward block, computed as ggml computes them on x86."""

import numpy as np
from numba import njit, prange

from ..quants._bits import f16_bits, f16_to_f32, f32_as_u32, f64_as_u64, fma32, fma64, round_f16, u32_as_f32, u64_as_f64
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


# glibc's expf (2.27 on; the FMA build, which CPUs with AVX2 run): what the expf calls of ggml's
# scalar code, and numba's np.exp of a float32, reach on Linux. exp(x) = 2^(k/32) · 2^(r/32) with
# r in [-1/2, 1/2], in double precision; |x| up to about 88.7 (top bits of x <= 0x42a) take this
# path, the rest special cases. The table holds the bits of 2^(i/32) less i << 47.
_EXP2_TABLE = np.array([
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
], dtype=np.uint64)
_N_OVER_LN2 = float.fromhex("0x1.71547652b82fep+5")
_ROUND_SHIFT = float.fromhex("0x1.8p+52")
_C0 = float.fromhex("0x1.c6af84b912394p-20")
_C1 = float.fromhex("0x1.ebfce50fac4f3p-13")
_C2 = float.fromhex("0x1.62e42ff0c52d6p-6")


@njit(cache=True, inline="always")
def libm_expf_main(x):
    """(glibc's expf(x) where its main path holds, whether it holds): branch-free, so a loop of
    them vectorises where the library call cannot."""
    xd = np.float64(x)
    z = fma64(_N_OVER_LN2, xd, _ROUND_SHIFT)
    k = f64_as_u64(z)
    kd = z - _ROUND_SHIFT
    r = fma64(_N_OVER_LN2, xd, -kd)
    s = u64_as_f64(_EXP2_TABLE[k & np.uint64(31)] + (k << np.uint64(47)))
    y = fma64(fma64(r, _C0, _C1), r * r, fma64(r, _C2, 1.0)) * s
    return np.float32(y), (f32_as_u32(x) >> np.uint32(20)) & np.uint32(0x7FF) <= np.uint32(0x42A)


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

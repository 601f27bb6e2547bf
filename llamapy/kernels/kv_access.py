"""Reading one cached key or value element, whatever the cache's storage type (-ctk / -ctv).

A kernel calls kv_value(cells, scales, pos, head, i) and numba picks the decoding by the cells'
dtype when it compiles: float32 (f32), uint16 (f16 bits), int8 (q8_0: quants, one scale per 32) or
uint8 (q4_0: two 4-bit quants per byte, one scale per 32). Attention code stays one kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from ..quants._bits import f16_bits, f16_to_f32, round_f16


def kv_value(cells, scales, pos, head, i):
    """cells[pos, head, i] as float32 (pure-Python stand-in; numba uses the overload below)."""
    raise NotImplementedError("kv_value runs inside numba kernels only")


@overload(kv_value, inline="always")
def _kv_value(cells, scales, pos, head, i):
    dtype = cells.dtype
    if dtype == types.float32:
        return lambda cells, scales, pos, head, i: cells[pos, head, i]
    if dtype == types.uint16:
        return lambda cells, scales, pos, head, i: f16_to_f32(cells[pos, head, i])
    if dtype == types.int8:
        return lambda cells, scales, pos, head, i: (np.float32(cells[pos, head, i])
                                                     * f16_to_f32(scales[pos, head, i >> 5]))
    if dtype == types.uint8:
        def q4(cells, scales, pos, head, i):
            byte = np.int32(cells[pos, head, (i >> 5) * 16 + (i & 15)])
            return np.float32(((byte >> ((i >> 4) & 1) * 4) & 15) - 8) * f16_to_f32(scales[pos, head, i >> 5])
        return q4
    return None


@njit(cache=True)
def quantize_cells_q8_0(x, cells, scales):
    """x [n, heads, d] float32 → q8_0 cells (int8) and one scale per 32 (amax / 127) as float16 bits."""
    n, heads, d = x.shape
    for t in range(n):
        for h in range(heads):
            for b in range(d // 32):
                amax = np.float32(0.0)
                for c in range(32 * b, 32 * b + 32):
                    amax = max(amax, abs(x[t, h, c]))
                inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
                for c in range(32 * b, 32 * b + 32):
                    cells[t, h, c] = np.int8(np.rint(x[t, h, c] * inv))
                scales[t, h, b] = f16_bits(amax / np.float32(127.0))


@njit(cache=True)
def quantize_cells_q4_0(x, cells, scales):
    """x [n, heads, d] → q4_0 cells as ggml's reference quantizer: d = max / -8 (max by magnitude,
    with its sign), q = min(15, int(x / d + 8.5)); two quants per byte (element j and j + 16)."""
    n, heads, d = x.shape
    for t in range(n):
        for h in range(heads):
            for b in range(d // 32):
                amax = np.float32(0.0)
                peak = np.float32(0.0)
                for c in range(32 * b, 32 * b + 32):
                    if abs(x[t, h, c]) > amax:
                        amax = abs(x[t, h, c])
                        peak = x[t, h, c]
                scale = round_f16(peak / np.float32(-8.0))
                inv = np.float32(1.0) / (peak / np.float32(-8.0)) if peak != 0 else np.float32(0.0)
                for j in range(16):
                    lo = min(15, int(x[t, h, 32 * b + j] * inv + np.float32(8.5)))
                    hi = min(15, int(x[t, h, 32 * b + 16 + j] * inv + np.float32(8.5)))
                    cells[t, h, 16 * b + j] = np.uint8(lo | (hi << 4))
                scales[t, h, b] = f16_bits(scale)


def kv_store(cells, scales, pos, x):
    """cells[pos] = x [1, heads, d] in the cells' storage type (numba uses the overload below)."""
    raise NotImplementedError("kv_store runs inside numba kernels only")


@overload(kv_store, inline="always")
def _kv_store(cells, scales, pos, x):
    dtype = cells.dtype
    if dtype == types.float32:
        def f32(cells, scales, pos, x):
            cells[pos] = x[0]
        return f32
    if dtype == types.uint16:
        def f16(cells, scales, pos, x):
            heads, d = x.shape[1], x.shape[2]
            for h in range(heads):
                for i in range(d):
                    cells[pos, h, i] = f16_bits(x[0, h, i])
        return f16
    if dtype == types.int8:
        return lambda cells, scales, pos, x: quantize_cells_q8_0(x, cells[pos:pos + 1], scales[pos:pos + 1])
    if dtype == types.uint8:
        return lambda cells, scales, pos, x: quantize_cells_q4_0(x, cells[pos:pos + 1], scales[pos:pos + 1])
    return None

"""Reading one cached key or value element, whatever the cache's storage type (-ctk / -ctv).

A kernel calls kv_value(cells, scales, pos, head, i) and numba picks the decoding by the cells'
dtype when it compiles: float32 (f32), uint16 (f16 bits), int8 (q8_0: quants, one scale per 32) or
uint8 (q4_0: two 4-bit quants per byte, one scale per 32). Attention code stays one kernel.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..quants._bits import f16_bits, f16_to_f32, f32x8, round_f16
from ..quants._pairs import f32x16, joined


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
            # element by element: a slice assignment would compile numba's shape-mismatch message
            # formatter (seconds of a cold start)
            heads, d = x.shape[1], x.shape[2]
            for h in range(heads):
                for i in range(d):
                    cells[pos, h, i] = x[0, h, i]
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


# --- eight or sixteen consecutive elements at once, for the one-query attention's vector loops -----

_F32x8 = ir.VectorType(ir.FloatType(), 8)


def _lanes_loader(result, lanes):
    """cells[pos, head, i:i+lanes] as float32 lanes, for float32 or float16-bit cells whose last
    axis is contiguous (every cache's is)."""
    vecty = ir.VectorType(ir.FloatType(), lanes)

    def typer(typingctx, cells, pos, head, i):
        if not (isinstance(cells, types.Array) and cells.ndim == 3 and cells.dtype in (types.float32, types.uint16)):
            return None
        half = cells.dtype == types.uint16

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            index = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], sig.args[1:], strict=True)]
            ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, index)
            if half:
                raw = builder.load(builder.bitcast(ptr, ir.VectorType(ir.IntType(16), lanes).as_pointer()), align=2)
                return builder.fpext(builder.bitcast(raw, ir.VectorType(ir.HalfType(), lanes)), vecty)
            return builder.load(builder.bitcast(ptr, vecty.as_pointer()), align=4)

        return result(cells, pos, head, i), codegen

    return intrinsic(typer)


_load8 = _lanes_loader(f32x8, 8)
_load16 = _lanes_loader(f32x16, 16)


@intrinsic
def _pack8(typingctx, a, b, c, d, e, f, g, h):
    if not all(x == types.float32 for x in (a, b, c, d, e, f, g, h)):
        return None

    def codegen(context, builder, sig, args):
        v = ir.Constant(_F32x8, ir.Undefined)
        for lane_index, x in enumerate(args):
            v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), lane_index))
        return v

    return f32x8(a, b, c, d, e, f, g, h), codegen


@intrinsic
def round_f16x8(typingctx, v):
    """Each lane rounded to the nearest float16 (ties to even), back as float32."""
    if v != f32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], ir.VectorType(ir.HalfType(), 8)), _F32x8)

    return f32x8(v), codegen


def kv_vector(cells, scales, pos, head, i):
    """cells[pos, head, i:i+8] as float32 lanes, any storage type (numba uses the overload below)."""
    raise NotImplementedError("kv_vector runs inside numba kernels only")


@overload(kv_vector, inline="always")
def _kv_vector(cells, scales, pos, head, i):
    if cells.dtype in (types.float32, types.uint16):
        return lambda cells, scales, pos, head, i: _load8(cells, pos, head, i)

    def by_element(cells, scales, pos, head, i):
        return _pack8(kv_value(cells, scales, pos, head, i), kv_value(cells, scales, pos, head, i + 1),
                      kv_value(cells, scales, pos, head, i + 2), kv_value(cells, scales, pos, head, i + 3),
                      kv_value(cells, scales, pos, head, i + 4), kv_value(cells, scales, pos, head, i + 5),
                      kv_value(cells, scales, pos, head, i + 6), kv_value(cells, scales, pos, head, i + 7))
    return by_element


def kv_vector16(cells, scales, pos, head, i):
    """cells[pos, head, i:i+16] as float32 lanes (numba uses the overload below): one zmm load and
    conversion with AVX-512, two ymm ones elsewhere."""
    raise NotImplementedError("kv_vector16 runs inside numba kernels only")


@overload(kv_vector16, inline="always")
def _kv_vector16(cells, scales, pos, head, i):
    if cells.dtype in (types.float32, types.uint16):
        return lambda cells, scales, pos, head, i: _load16(cells, pos, head, i)
    return lambda cells, scales, pos, head, i: joined(kv_vector(cells, scales, pos, head, i),
                                                      kv_vector(cells, scales, pos, head, i + 8))


# --- a quantized cache's rows as float32, for kernels that want one loader -------------------------

def kv_float_cells(cells, scales, head, first, end):
    """(cells, scales, head) that read as float32 or float16 bits with no scales: a float32 or
    float16 cache as it is; a quantized one's head `head`, cells first..end-1, decoded into a
    float32 [end, 1, d] (rows before first left unset) read as head 0 (numba: the overload below).

    The one-query attention compiles its vector loops for these two loaders only: inlined for the
    per-element decoding of q8_0 and q4_0 they cost minutes of a cold start, and decoding each row
    once gives the same float32 values."""
    raise NotImplementedError("kv_float_cells runs inside numba kernels only")


@njit(cache=True)
def _decoded_rows(cells, scales, head, first, end):
    d = scales.shape[2] * 32
    out = np.empty((end, 1, d), dtype=np.float32)
    for j in range(first, end):
        for i in range(d):
            out[j, 0, i] = kv_value(cells, scales, j, head, i)
    return out


@overload(kv_float_cells, inline="always")
def _kv_float_cells(cells, scales, head, first, end):
    if cells.dtype in (types.float32, types.uint16):
        return lambda cells, scales, head, first, end: (cells, scales, np.int64(head))
    return lambda cells, scales, head, first, end: (_decoded_rows(cells, scales, head, first, end),
                                                    np.zeros((1, 1, 1), dtype=np.float32), np.int64(0))

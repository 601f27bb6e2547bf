"""Two tokens side by side: sixteen-lane vectors whose low eight lanes are one token's f32x8 / i32x8
and whose high eight are the next token's.

A decode step of several sequences dots each weight block with several tokens. Each token keeps
ggml's eight lanes and its own chain of fused multiply-adds, so two tokens can share one 512-bit
instruction without changing a bit: every op here is lane-wise, and a lane does exactly what the
same lane of the eight-lane kernel does. With AVX-512 each op is one zmm instruction (vpdpbusd's
512-bit form where VNNI is there); elsewhere LLVM splits it into the two ymm instructions the
eight-lane code would have issued.

Kept apart from the kernels for the reason _bits.py is: numba's on-disk cache only watches the file
that defines a kernel.
"""

from __future__ import annotations

import operator

from llvmlite import ir
from numba import types
from numba.core.datamodel import models
from numba.extending import intrinsic, overload, register_model

from ._bits import _binary, _is_vector_of, _mask, _pointer, f32x8, fma_ir, i32x8
from ._isa import _call, _dot4_ir, _flips_sign, byte_dot_isa, q8_base_ir, q8_sum_ir, target_features

_I32, _F32 = ir.IntType(32), ir.FloatType()
_V16F, _V16I = ir.VectorType(_F32, 16), ir.VectorType(_I32, 16)
_LOW, _HIGH = list(range(8)), list(range(8, 16))


class F32x16(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


class I32x16(types.Type):
    def __init__(self):
        super().__init__(name="i32x16")


f32x16, i32x16 = F32x16(), I32x16()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16F)


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16I)


def _loader(dtype, result, llvm_type, align):
    def typer(typingctx, arr, i):
        if not (_is_vector_of(arr, dtype) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_pointer(context, builder, sig, args, llvm_type), align=align)

        return result(arr, i), codegen

    return typer


# arr[i:i+16] of contiguous float32 / int32 vectors, and 64 bytes at arr[i] as sixteen words
# (no bounds check).
pair_load = intrinsic(_loader(types.float32, f32x16, _V16F, 4))
pair_iload = intrinsic(_loader(types.int32, i32x16, _V16I, 4))
pair_words = intrinsic(_loader(types.uint8, i32x16, _V16I, 1))


@intrinsic
def twice(typingctx, v):
    """An eight-lane vector in both halves: one weight block for two tokens."""
    if v not in (f32x8, i32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[0], _mask(_LOW + _LOW))

    return (f32x16 if v == f32x8 else i32x16)(v), codegen


def _half(name, picks, doc):
    def typer(typingctx, v):
        if v != f32x16:
            return None

        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[0], _mask(picks))

        return f32x8(v), codegen

    typer.__name__, typer.__doc__ = name, doc
    return intrinsic(typer)


low_half = _half("low_half", _LOW, "The first token's eight lanes.")
high_half = _half("high_half", _HIGH, "The second token's eight lanes.")


def _rearranged(name, picks, doc):
    """An intrinsic whose f32x16 takes lanes of a, or of a and b when picks goes past 15 (b's lanes
    numbered 16..31)."""

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[-1], _mask(picks))

    if max(picks) < 16:
        def typer(typingctx, a):
            return (f32x16(a), codegen) if a == f32x16 else None
    else:
        def typer(typingctx, a, b):
            return (f32x16(a, b), codegen) if a == f32x16 and b == f32x16 else None

    typer.__name__, typer.__doc__ = name, doc
    return intrinsic(typer)


# A reduction of four sums at once takes these, each lane's add as in the reduction of one alone.
lows = _rearranged("lows", _LOW + [16 + i for i in _LOW], "a's low eight lanes, then b's.")
highs = _rearranged("highs", _HIGH + [16 + i for i in _HIGH], "a's high eight lanes, then b's.")
even_quarters = _rearranged("even_quarters", [q * 4 + i for q in (0, 2, 4, 6) for i in range(4)],
                            "The first and third four lanes of a, then of b.")
odd_quarters = _rearranged("odd_quarters", [q * 4 + i for q in (1, 3, 5, 7) for i in range(4)],
                           "The second and fourth four lanes of a, then of b.")
swapped_lanes = _rearranged("swapped_lanes", [i ^ 1 for i in range(16)], "a's lanes 1, 0, 3, 2, ...")
swapped_pairs = _rearranged("swapped_pairs", [i ^ 2 for i in range(16)], "a's lanes 2, 3, 0, 1, 6, 7, ...")


@intrinsic
def pair_store(typingctx, arr, i, v):
    """arr[i:i+16] = v (no bounds check)."""
    if not (_is_vector_of(arr, types.float32) and isinstance(i, types.Integer) and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _pointer(context, builder, sig, args, _V16F), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def joined(typingctx, lo, hi):
    """Two eight-lane vectors as one sixteen-lane vector (lo in the low lanes)."""
    if not (lo == f32x8 and hi == f32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[1], _mask(_LOW + _HIGH))

    return f32x16(lo, hi), codegen


@intrinsic
def round_f16x16(typingctx, v):
    """Each lane rounded to the nearest float16 (ties to even), back as float32."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], ir.VectorType(ir.HalfType(), 16)), _V16F)

    return f32x16(v), codegen


@intrinsic
def pair_zero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16F, [0.0] * 16)

    return f32x16(), codegen


@intrinsic
def pair_izero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16I, [0] * 16)

    return i32x16(), codegen


@intrinsic
def pair_float(typingctx, v):
    """int32 lanes to float32 (as vfloat)."""
    if v != i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _V16F)

    return f32x16(v), codegen


@intrinsic
def pair_fma(typingctx, a, b, c):
    """a*b + c per lane with one rounding (as vfma)."""
    if not (a == f32x16 and b == f32x16 and c == f32x16):
        return None

    def codegen(context, builder, sig, args):
        return fma_ir(builder, *args)

    return f32x16(a, b, c), codegen


def _wide_vnni(context) -> bool:
    features = target_features(context)
    return byte_dot_isa(features) == "vnni" and {"avx512vnni", "avx512f"} <= features


def _by_halves(builder, fn, *vectors):
    """fn on the low eight lanes of each vector, then on the high eight, joined again."""
    lo = fn(*(builder.shuffle_vector(v, v, _mask(_LOW)) for v in vectors))
    hi = fn(*(builder.shuffle_vector(v, v, _mask(_HIGH)) for v in vectors))
    return builder.shuffle_vector(lo, hi, _mask(_LOW + _HIGH))


def _pair_dot4_ir(context, builder, acc, u, s):
    if _wide_vnni(context):
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", _V16I, [acc, u, s])
    isa = byte_dot_isa(target_features(context))
    return _by_halves(builder, lambda a, x, y: _dot4_ir(builder, isa, a, x, y), acc, u, s)


@intrinsic
def pair_dot4(typingctx, acc, u, s):
    """_isa.dot4 on both tokens' lanes."""
    if not (acc == i32x16 and u == i32x16 and s == i32x16):
        return None

    def codegen(context, builder, sig, args):
        return _pair_dot4_ir(context, builder, *args)

    return i32x16(acc, u, s), codegen


@intrinsic
def pair_q8_base(typingctx, x_lane_sums):
    """_isa.q8_base on both tokens' lanes."""
    if x_lane_sums != i32x16:
        return None

    def codegen(context, builder, sig, args):
        return q8_base_ir(context, builder, args[0])

    return i32x16(x_lane_sums), codegen


@intrinsic
def pair_q8_sum(typingctx, base, w_unsigned, w, x):
    """_isa.q8_sum on both tokens' lanes (w and its unsigned form given twice)."""
    if not (base == i32x16 and w_unsigned == i32x16 and w == i32x16 and x == i32x16):
        return None

    def codegen(context, builder, sig, args):
        if _flips_sign(context):  # base + dot4(w + 128, x): w itself is not needed
            return _pair_dot4_ir(context, builder, args[0], args[1], args[3])
        return _by_halves(builder, lambda *halves: q8_sum_ir(context, builder, *halves), *args)

    return i32x16(base, w_unsigned, w, x), codegen


@intrinsic
def has_32_registers(typingctx):
    """Whether the target has AVX-512's 32 vector registers, which hold more independent chains than
    AVX2's 16 (the product kernels then take more rows per pass). A constant: LLVM drops the other path."""

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(1), int("avx512f" in target_features(context)))

    return types.boolean(), codegen


# f32x16 + and * f32x16, i32x16 - i32x16, and i32x16 << an integer (splatted).
_OPS = {
    (operator.add, F32x16, F32x16): _binary("fadd", f32x16, False),
    (operator.mul, F32x16, F32x16): _binary("fmul", f32x16, False),
    (operator.sub, I32x16, I32x16): _binary("sub", i32x16, False),
    (operator.lshift, I32x16, types.Integer): _binary("shl", i32x16, True),
}


def _register(op):
    @overload(op, inline="always")
    def ov(a, b):
        for (o, ta, tb), fn in _OPS.items():
            if o is op and isinstance(a, ta) and isinstance(b, tb):
                return lambda a, b: fn(a, b)
        return None


for _op in {key[0] for key in _OPS}:
    _register(_op)

__all__ = ["even_quarters", "f32x16", "has_32_registers", "high_half", "highs", "i32x16", "joined", "low_half",
           "lows", "odd_quarters", "pair_dot4", "pair_float", "pair_fma", "pair_iload", "pair_izero", "pair_load",
           "pair_q8_base", "pair_q8_sum", "pair_store", "pair_words", "pair_zero", "round_f16x16", "swapped_lanes",
           "swapped_pairs", "twice"]

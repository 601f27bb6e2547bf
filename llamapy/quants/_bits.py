"""LLVM-level helpers for reinterpreting bytes inside numba kernels.

numba has no float16 scalars and no bit casts, and building a uint16 out of two
bytes goes through its 64-bit shift typing, which defeats vectorisation.  These
intrinsics emit the single LLVM instruction instead (fpext/fptrunc on `half`
becomes vcvtph2ps/vcvtps2ph with F16C), so loops over them stay packed.

Kept apart from the kernels on purpose: numba's on-disk cache only watches the
file that defines a kernel, and this file should rarely change.
"""

from __future__ import annotations

import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import models
from numba.extending import intrinsic, overload, register_model

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()


@intrinsic
def f16_to_f32(typingctx, bits):
    """IEEE half stored as uint16 bits -> float32 (exact, incl. subnormals)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.uint16)
        return builder.fpext(builder.bitcast(v, ir.HalfType()), _F32)

    return types.float32(bits), codegen


@intrinsic
def round_f16(typingctx, x):
    """float32 rounded to the nearest float16 (ties to even), back as float32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), _F32)

    return types.float32(x), codegen


@intrinsic
def f16_bits(typingctx, x):
    """float32 → the uint16 bits of the nearest float16 (ties to even, vcvtps2ph)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), _I16)

    return types.uint16(x), codegen


def _fused(name, ty, doc):
    def typer(typingctx, a, b, c):
        if not (a == ty and b == ty and c == ty):
            return None

        def codegen(context, builder, sig, args):
            return builder.fma(args[0], args[1], args[2])

        return ty(a, b, c), codegen

    typer.__name__, typer.__doc__ = name, doc
    return intrinsic(typer)


fma32 = _fused("fma32", types.float32, "a*b + c with one rounding, as the fused multiply-adds in ggml's x86 kernels.")
fma64 = _fused("fma64", types.float64, "fma32 in double precision.")


@intrinsic
def f64_as_u64(typingctx, x):
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(x), codegen


@intrinsic
def u64_as_f64(typingctx, bits):
    if bits != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def u32_as_f32(typingctx, bits):
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.uint32)
        return builder.bitcast(v, _F32)

    return types.float32(bits), codegen


@intrinsic
def f32_as_u32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.uint32(x), codegen


@intrinsic
def shr32(typingctx, x, n):
    """Logical x >> n on 32 bits.  numba types every shift as 64-bit, which
    AVX2 can only do 4 lanes at a time; this keeps 8-lane vpsrlvd/vpsrld."""
    if not (isinstance(x, types.Integer) and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.uint32)
        b = context.cast(builder, args[1], sig.args[1], types.uint32)
        return builder.lshr(a, b)

    return types.uint32(x, n), codegen


def _byte_pointer(context, builder, arrty, arr, offty, off):
    ary = context.make_array(arrty)(context, builder, arr)
    off = context.cast(builder, off, offty, types.intp)
    return builder.gep(ary.data, [off])


def _loader(result_type, llvm_type):
    def typer(typingctx, arr, off):
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.layout == "C"):
            return None
        if not isinstance(off, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            ptr = _byte_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            return builder.load(builder.bitcast(ptr, llvm_type.as_pointer()), align=1)

        return result_type(arr, off), codegen

    return typer


# Little-endian loads at any byte offset of a contiguous uint8 array (x86 is LE,
# as is GGUF).  Unaligned on purpose: block fields sit at odd multiples of 2.
load_u16 = intrinsic(_loader(types.uint16, _I16))
load_u32 = intrinsic(_loader(types.uint32, _I32))
load_f32 = intrinsic(_loader(types.float32, _F32))

# --- eight-lane vectors ----------------------------------------------------------------------------
# ggml's x86 kernels keep eight float lanes per __m256, and the order of their additions follows
# that layout. numba's loop vectoriser finds such a layout only sometimes (and differently per
# CPU), so the exact kernels spell it out: f32x8 / i32x8 are LLVM <8 x float> / <8 x i32> values,
# kept in registers like scalars. Only portable vector IR is emitted, no x86 intrinsics: with
# AVX2 each op is one ymm instruction; other targets split or scalarise it, with the same results.

_V8F = ir.VectorType(_F32, 8)
_V8I = ir.VectorType(_I32, 8)


class F32x8(types.Type):
    def __init__(self):
        super().__init__(name="f32x8")


class I32x8(types.Type):
    def __init__(self):
        super().__init__(name="i32x8")


f32x8 = F32x8()
i32x8 = I32x8()


@register_model(F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8F)


@register_model(I32x8)
class _I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8I)


def _mask(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), [int(v) for v in values])


def _shuffle(builder, a, b, mask):
    return builder.shuffle_vector(a, b, _mask(mask))


def _splat(builder, value, vecty):
    v = builder.insert_element(ir.Constant(vecty, ir.Undefined), value, ir.Constant(_I32, 0))
    return _shuffle(builder, v, v, [0] * vecty.count)


def _is_vector_of(arr, dtype):
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"


def _pointer(context, builder, sig, args, pointee):
    """&arr[i] as a pointer to `pointee`, for an intrinsic called as f(arr, i, ...)."""
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
    return builder.bitcast(ptr, pointee.as_pointer())


@intrinsic
def vload(typingctx, arr, i):
    """arr[i:i+8] of a contiguous float32 vector (no bounds check)."""
    if not (_is_vector_of(arr, types.float32) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig, args, _V8F), align=4)

    return f32x8(arr, i), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """arr[i:i+8] = v (no bounds check)."""
    if not (_is_vector_of(arr, types.float32) and isinstance(i, types.Integer) and v == f32x8):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _pointer(context, builder, sig, args, _V8F), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def load_words(typingctx, arr, off):
    """32 bytes at arr[off] as eight little-endian int32 words: lane l holds bytes 4l..4l+3."""
    if not (_is_vector_of(arr, types.uint8) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig, args, _V8I), align=1)

    return i32x8(arr, off), codegen


@intrinsic
def load_nibble_words(typingctx, arr, off):
    """16 bytes at arr[off] as [w0, w1, w2, w3, w0>>4, w1>>4, w2>>4, w3>>4] (w as in load_words).

    For a 32-quant block whose byte j packs quants j (low nibble) and j+16 (high nibble), as in
    Q4_0/Q4_1/Q5_0/Q5_1, the low nibble of byte m of lane l is then quant 4l+m."""
    if not (_is_vector_of(arr, types.uint8) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        w = builder.load(_pointer(context, builder, sig, args, ir.VectorType(_I32, 4)), align=1)
        return builder.lshr(_shuffle(builder, w, w, [0, 1, 2, 3, 0, 1, 2, 3]), _mask([0, 0, 0, 0, 4, 4, 4, 4]))

    return i32x8(arr, off), codegen


@intrinsic
def load_sbytes(typingctx, arr, off):
    """arr[off:off+8] read as int8, as float lanes."""
    if not (_is_vector_of(arr, types.uint8) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = builder.load(_pointer(context, builder, sig, args, ir.VectorType(ir.IntType(8), 8)), align=1)
        return builder.sitofp(v, _V8F)

    return f32x8(arr, off), codegen


@intrinsic
def spread_bits(typingctx, bits):
    """Lane l = bits >> 4l (logical): lane l's bit m is bit 4l+m, e.g. Q5's fifth bit of quant 4l+m."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.uint32)
        return builder.lshr(_splat(builder, v, _V8I), _mask([0, 4, 8, 12, 16, 20, 24, 28]))

    return i32x8(bits), codegen


@intrinsic
def bytes_of(typingctx, lo, hi):
    """The eight bytes of two 32-bit words (lo's first, little-endian) as unsigned float lanes."""
    if not (isinstance(lo, types.Integer) and isinstance(hi, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = ir.Constant(ir.VectorType(_I32, 2), ir.Undefined)
        for i in range(2):
            word = context.cast(builder, args[i], sig.args[i], types.uint32)
            v = builder.insert_element(v, word, ir.Constant(_I32, i))
        return builder.uitofp(builder.bitcast(v, ir.VectorType(ir.IntType(8), 8)), _V8F)

    return f32x8(lo, hi), codegen


@intrinsic
def vsplat(typingctx, x):
    """x in all eight lanes."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], _V8F)

    return f32x8(x), codegen


@intrinsic
def vpair(typingctx, a, b):
    """[a, a, a, a, b, b, b, b]."""
    if not (a == types.float32 and b == types.float32):
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_V8F, ir.Undefined), args[0], ir.Constant(_I32, 0))
        v = builder.insert_element(v, args[1], ir.Constant(_I32, 1))
        return _shuffle(builder, v, v, [0, 0, 0, 0, 1, 1, 1, 1])

    return f32x8(a, b), codegen


@intrinsic
def half_pairs(typingctx, w0, w1, w2, w3):
    """Four 32-bit words of two IEEE halves each (low, high) -> f32x8 [lo0, hi0, lo1, hi1, ...],
    exact, by one vcvtph2ps: the first word of a 32-quant block is its scale d and (Q4_1, Q5_1) its
    min m, so this converts both for four rows at once instead of one insert and one conversion per
    half. For types without a min the high half is quant bytes; callers leave those lanes unused."""
    words = (w0, w1, w2, w3)
    if not all(isinstance(w, types.Integer) for w in words):
        return None

    def codegen(context, builder, sig, args):
        v = ir.Constant(ir.VectorType(_I32, 4), ir.Undefined)
        for i, (a, t) in enumerate(zip(args, sig.args, strict=True)):
            v = builder.insert_element(v, context.cast(builder, a, t, types.uint32), ir.Constant(_I32, i))
        return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), _V8F)

    return f32x8(*words), codegen


@intrinsic
def vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8F, [0.0] * 8)

    return f32x8(), codegen


@intrinsic
def lane(typingctx, v, i):
    """Lane i of v as a scalar."""
    if not (v in (f32x8, i32x8) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.int32))

    return (types.float32 if v == f32x8 else types.int32)(v, i), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a*b + c per lane with one rounding (_mm256_fmadd_ps)."""
    if not (a == f32x8 and b == f32x8 and c == f32x8):
        return None

    def codegen(context, builder, sig, args):
        return fma_ir(builder, *args)

    return f32x8(a, b, c), codegen


def fma_ir(builder, a, b, c):
    """llvm.fma on float vectors of any width (vfma's, and _pairs.pair_fma's)."""
    vecty = a.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vecty, [vecty] * 3),
                                        f"llvm.fma.v{vecty.count}f32")
    return builder.call(fn, [a, b, c])


@intrinsic
def vfloat(typingctx, v):
    """int32 lanes to float32, rounded to nearest even beyond 2**24 (as _mm256_cvtepi32_ps)."""
    if v != i32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _V8F)

    return f32x8(v), codegen


@intrinsic
def vint(typingctx, v):
    """float32 lanes holding integers to int32 (exact for them)."""
    if v != f32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.fptosi(args[0], _V8I)

    return i32x8(v), codegen


@intrinsic
def reduce_add(typingctx, v):
    """The sum of the int32 lanes of v (wrapping, as int32 adds)."""
    if v != i32x8:
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_I32, [_V8I])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.vector.reduce.add.v8i32"), args)

    return types.int32(v), codegen


def _pairwise(name, lo_mask, hi_mask, doc, vecty=f32x8):
    """An intrinsic f(a, b) = shuffle(a, b, lo_mask) + shuffle(a, b, hi_mask), on f32x8 or i32x8."""

    def typer(typingctx, a, b):
        if not (a == vecty and b == vecty):
            return None

        def codegen(context, builder, sig, args):
            lo = _shuffle(builder, args[0], args[1], lo_mask)
            add = builder.fadd if vecty == f32x8 else builder.add
            return add(lo, _shuffle(builder, args[0], args[1], hi_mask))

        return vecty(a, b), codegen

    typer.__name__, typer.__doc__ = name, doc
    return intrinsic(typer)


hadd = _pairwise("hadd", [0, 2, 8, 10, 4, 6, 12, 14], [1, 3, 9, 11, 5, 7, 13, 15],
                 "_mm256_hadd_ps: [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7].")
pair_sums = _pairwise("pair_sums", [0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15],
                      "[a0+a1, a2+a3, a4+a5, a6+a7, b0+b1, b2+b3, b4+b5, b6+b7].")
add_halves = _pairwise("add_halves", [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15],
                       "[lo(a) + hi(a), lo(b) + hi(b)]: the 128-bit halves of a, and of b, added.")


@intrinsic
def even_dup(typingctx, v):
    """Each even lane of v copied into the odd lane after it (vmovsldup)."""
    if v != f32x8:
        return None

    def codegen(context, builder, sig, args):
        return _shuffle(builder, args[0], args[0], [0, 0, 2, 2, 4, 4, 6, 6])

    return f32x8(v), codegen


# Operators on vectors: + - * of two f32x8; + - * | of two i32x8; & >> << - with an integer
# (splatted). >> is arithmetic, as Python's on a signed int32.


def _binary(op, vecty, scalar_rhs):
    @intrinsic
    def impl(typingctx, a, b):
        if a != vecty or (not isinstance(b, types.Integer) if scalar_rhs else b != vecty):
            return None

        def codegen(context, builder, sig, args):
            rhs = args[1]
            if scalar_rhs:  # an integer in every lane, as wide as a (also _pairs' sixteen-lane ops)
                rhs = _splat(builder, context.cast(builder, rhs, sig.args[1], types.int32), args[0].type)
            return getattr(builder, op)(args[0], rhs)

        return vecty(a, b), codegen

    return impl


_VECTOR_OPS = {
    (operator.add, F32x8): _binary("fadd", f32x8, False),
    (operator.sub, F32x8): _binary("fsub", f32x8, False),
    (operator.mul, F32x8): _binary("fmul", f32x8, False),
    (operator.add, I32x8): _binary("add", i32x8, False),
    (operator.mul, I32x8): _binary("mul", i32x8, False),  # vpmulld; exact while products stay below 2**31
    (operator.sub, I32x8): _binary("sub", i32x8, False),
    (operator.or_, I32x8): _binary("or_", i32x8, False),
}
_SCALAR_OPS = {
    operator.and_: _binary("and_", i32x8, True),
    operator.rshift: _binary("ashr", i32x8, True),
    operator.lshift: _binary("shl", i32x8, True),
    operator.sub: _binary("sub", i32x8, True),
}


def _register(op):
    @overload(op, inline="always")
    def ov(a, b):
        if isinstance(a, (F32x8, I32x8)) and type(a) is type(b) and (op, type(a)) in _VECTOR_OPS:
            fn = _VECTOR_OPS[(op, type(a))]
            return lambda a, b: fn(a, b)
        if isinstance(a, I32x8) and isinstance(b, types.Integer) and op in _SCALAR_OPS:
            fn = _SCALAR_OPS[op]
            return lambda a, b: fn(a, b)
        return None


for _op in (operator.add, operator.sub, operator.mul, operator.or_, operator.and_, operator.rshift, operator.lshift):
    _register(_op)

__all__ = [
    "f16_bits", "f16_to_f32", "f32_as_u32", "fma32", "load_f32", "load_u16", "load_u32", "round_f16", "shr32",
    "u32_as_f32",
    "add_halves", "bytes_of", "even_dup", "f32x8", "hadd", "half_pairs", "i32x8", "lane", "load_nibble_words",
    "load_sbytes",
    "load_words",
    "pair_sums", "reduce_add", "spread_bits", "vfloat", "vfma", "vint", "vload", "vpair", "vsplat", "vstore", "vzero",
]

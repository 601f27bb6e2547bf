"""LLVM-level helpers for reinterpreting bytes inside numba kernels.

numba has no float16 scalars and no bit casts, and building a uint16 out of two
bytes goes through its 64-bit shift typing, which defeats vectorisation.  These
intrinsics emit the single LLVM instruction instead (fpext/fptrunc on `half`
becomes vcvtph2ps/vcvtps2ph with F16C), so loops over them stay packed.

Kept apart from the kernels on purpose: numba's on-disk cache only watches the
file that defines a kernel, and this file should rarely change.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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
def fma32(typingctx, a, b, c):
    """a*b + c with a single rounding, as the fused multiply-adds in ggml's x86 kernels."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(args[0], args[1], args[2])

    return types.float32(a, b, c), codegen


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

__all__ = ["f16_to_f32", "f32_as_u32", "fma32", "load_f32", "load_u16", "load_u32", "round_f16", "shr32", "u32_as_f32"]

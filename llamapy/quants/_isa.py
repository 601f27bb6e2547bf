"""Byte dot products at the width of the CPU: the one place an instruction set is chosen.

`dot4(acc, u, s)` adds to each int32 lane of acc the four products of the unsigned bytes of u with
the signed bytes of s in that lane: the integer ggml's x86 kernels form with maddubs + madd (AVX2)
or vpdpbusd (VNNI). The sums are exact integers either way, so the choice of instruction never
changes a result, only its speed; the exact kernels' float arithmetic after it is unchanged.

The instruction is chosen when numba compiles, from the features of the CPU numba targets
(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, else the host): VNNI where it exists, AVX2's pair, or plain
vector IR elsewhere. numba keys its on-disk cache by that CPU name and feature string, so a cache
compiled for another CPU is never loaded.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._bits import i32x8

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V8I, _V16S, _V32B = ir.VectorType(_I32, 8), ir.VectorType(_I16, 16), ir.VectorType(_I8, 32)


# Named CPUs numba may be told to target (NUMBA_CPU_NAME with no feature list), by their byte-dot
# instructions: LLVM then uses the CPU's own features, which llvmlite does not list.
_VNNI_CPUS = ("cascadelake", "cooperlake", "icelake", "tigerlake", "rocketlake", "sapphirerapids",
              "emeraldrapids", "graniterapids", "alderlake", "raptorlake", "meteorlake", "arrowlake", "lunarlake",
              "sierraforest", "grandridge", "clearwaterforest", "znver4", "znver5")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "skylake-avx512", "cannonlake", "znver1", "znver2", "znver3",
              "x86-64-v3", "x86-64-v4")


def target_features(context) -> set[str]:
    """The +features of the CPU numba compiles for; for a named CPU without a list, its ISA's."""
    codegen = context.codegen()
    features = getattr(codegen, "_tm_features", "") or ""
    found = {f[1:] for f in features.split(",") if f.startswith("+")}
    if not features:
        name = str(getattr(codegen, "_get_host_cpu_name", lambda: "")()).lower()
        if name.startswith(_VNNI_CPUS):
            found |= {"avx2", "avxvnni"}
        elif name.startswith(_AVX2_CPUS):
            found |= {"avx2"}
    return found


def byte_dot_isa(features: set[str]) -> str:
    if {"avx512vnni", "avx512vl"} <= features or "avxvnni" in features:
        return "vnni"
    if "avx2" in features:
        return "avx2"
    return "generic"


def _call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _generic_dot4(builder, acc, u, s):
    wide = ir.VectorType(_I32, 32)
    prod = builder.mul(builder.zext(builder.bitcast(u, _V32B), wide), builder.sext(builder.bitcast(s, _V32B), wide))
    total = acc
    for m in range(4):
        part = builder.shuffle_vector(prod, prod, ir.Constant(_V8I, [4 * lane + m for lane in range(8)]))
        total = builder.add(total, part)
    return total


def _dot4_ir(builder, isa, a, x, y):
    if isa == "vnni":
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", _V8I, [a, x, y])
    if isa == "avx2":
        pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16S,
                      [builder.bitcast(x, _V32B), builder.bitcast(y, _V32B)])
        ones = ir.Constant(_V16S, [1] * 16)
        return builder.add(a, _call(builder, "llvm.x86.avx2.pmadd.wd", _V8I, [pairs, ones]))
    return _generic_dot4(builder, a, x, y)


@intrinsic
def dot4(typingctx, acc, u, s):
    """acc + per-lane sums of u8 × s8 byte products (no overflow for |u| ≤ 128, |s| ≤ 127 · 2)."""
    if not (acc == i32x8 and u == i32x8 and s == i32x8):
        return None

    def codegen(context, builder, sig, args):
        return _dot4_ir(builder, byte_dot_isa(target_features(context)), *args)

    return i32x8(acc, u, s), codegen


@intrinsic
def izero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8I, [0] * 8)

    return i32x8(), codegen


# Signed × signed byte products (Q8_0 weights against Q8 activations). AVX2's maddubs adds pairs
# of u8 × s8 products into saturating int16, so the unsigned side must stay within 128: ggml's
# |w| × sign(x, w). vpdpbusd sums four products into int32 without saturating, so there w + 128
# (w with its sign bit flipped, read unsigned) serves, and the 128·Σx it adds is subtracted up
# front: Σ(w + 128)·x − 128·Σx = Σw·x, the same integers with no per-token sign step.


def _flips_sign(context) -> bool:
    return byte_dot_isa(target_features(context)) == "vnni"


def _sign_bytes_ir(builder, v, like):
    """Each byte of v negated where the same byte of `like` is negative, zeroed where it is zero
    (_mm256_sign_epi8)."""
    zero = ir.Constant(_V32B, [0] * 32)
    b, s = builder.bitcast(v, _V32B), builder.bitcast(like, _V32B)
    neg = builder.select(builder.icmp_signed("<", s, zero), builder.sub(zero, b), b)
    return builder.bitcast(builder.select(builder.icmp_signed("==", s, zero), zero, neg), _V8I)


@intrinsic
def unsigned_form(typingctx, w):
    """A block of signed weights as q8_sum's unsigned operand: w + 128 where vpdpbusd serves, else |w|."""
    if w != i32x8:
        return None

    def codegen(context, builder, sig, args):
        b = builder.bitcast(args[0], _V32B)
        if _flips_sign(context):
            return builder.bitcast(builder.xor(b, ir.Constant(_V32B, [0x80] * 32)), _V8I)
        neg = builder.sub(ir.Constant(_V32B, [0] * 32), b)
        return builder.bitcast(builder.select(builder.icmp_signed("<", b, ir.Constant(_V32B, [0] * 32)), neg, b), _V8I)

    return i32x8(w), codegen


@intrinsic
def q8_base(typingctx, x_lane_sums):
    """Where q8_sum starts for activations with these lane sums: −128·Σx where w + 128 is used, else 0."""
    if x_lane_sums != i32x8:
        return None

    def codegen(context, builder, sig, args):
        return q8_base_ir(context, builder, args[0])

    return i32x8(x_lane_sums), codegen


def q8_base_ir(context, builder, x_lane_sums):
    """q8_base's IR on int32 vectors of any width (also _pairs.pair_q8_base's)."""
    vecty = x_lane_sums.type
    zero = ir.Constant(vecty, [0] * vecty.count)
    if _flips_sign(context):
        return builder.sub(zero, builder.shl(x_lane_sums, ir.Constant(vecty, [7] * vecty.count)))
    return zero


@intrinsic
def q8_sum(typingctx, base, w_unsigned, w, x):
    """base + the eight lane sums of signed weights w (unsigned_form(w) given) with signed activations x."""
    if not (base == i32x8 and w_unsigned == i32x8 and w == i32x8 and x == i32x8):
        return None

    def codegen(context, builder, sig, args):
        return q8_sum_ir(context, builder, *args)

    return i32x8(base, w_unsigned, w, x), codegen


def q8_sum_ir(context, builder, base, w_u, w, x):
    """q8_sum's IR on eight-lane values (also _pairs.pair_q8_sum's, half by half)."""
    isa = byte_dot_isa(target_features(context))
    if _flips_sign(context):
        return _dot4_ir(builder, isa, base, w_u, x)
    if isa == "avx2":  # vpsignb: LLVM makes five instructions of _sign_bytes_ir's selects
        signed = _call(builder, "llvm.x86.avx2.psign.b", _V32B, [builder.bitcast(x, _V32B), builder.bitcast(w, _V32B)])
        return _dot4_ir(builder, isa, base, w_u, builder.bitcast(signed, _V8I))
    return _dot4_ir(builder, isa, base, w_u, _sign_bytes_ir(builder, x, w))


@intrinsic
def splat_i32(typingctx, x):
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        vec = builder.insert_element(ir.Constant(_V8I, ir.Undefined), v, ir.Constant(_I32, 0))
        return builder.shuffle_vector(vec, vec, ir.Constant(_V8I, [0] * 8))

    return i32x8(x), codegen


@intrinsic
def iload(typingctx, arr, i):
    """arr[i:i+8] of a contiguous int32 vector (no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int32 and arr.ndim == 1 and arr.layout == "C"
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        return builder.load(builder.bitcast(ptr, _V8I.as_pointer()), align=4)

    return i32x8(arr, i), codegen


@intrinsic
def istore(typingctx, arr, i, v):
    """arr[i:i+8] = v for a contiguous int32 vector (no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int32 and arr.ndim == 1 and arr.layout == "C"
            and isinstance(i, types.Integer) and v == i32x8):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        builder.store(args[2], builder.bitcast(ptr, _V8I.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def bit_bytes(typingctx, bits, value):
    """Byte j = value where bit j of the 32-bit `bits` is set, else 0 (ggml's bytes_from_bits_32)."""
    if not (isinstance(bits, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        word = context.cast(builder, args[0], sig.args[0], types.uint32)
        vec = builder.insert_element(ir.Constant(_V8I, ir.Undefined), word, ir.Constant(_I32, 0))
        four = builder.bitcast(vec, _V32B)  # bytes 0..3 hold the word
        spread = builder.shuffle_vector(four, four, ir.Constant(ir.VectorType(_I32, 32),
                                                                [j // 8 for j in range(32)]))
        test = builder.and_(spread, ir.Constant(_V32B, [1 << (j % 8) for j in range(32)]))
        byte = builder.trunc(context.cast(builder, args[1], sig.args[1], types.int32), _I8)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(_V32B, ir.Undefined), byte,
                                                              ir.Constant(_I32, 0)),
                                       ir.Constant(_V32B, ir.Undefined), ir.Constant(ir.VectorType(_I32, 32), [0] * 32))
        chosen = builder.select(builder.icmp_unsigned("!=", test, ir.Constant(_V32B, [0] * 32)), splat,
                                ir.Constant(_V32B, [0] * 32))
        return builder.bitcast(chosen, _V8I)

    return i32x8(bits, value), codegen


@intrinsic
def prefetch(typingctx, arr, off):
    """Ask for the cache line holding byte `off` of a contiguous array (a hint: never faults)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        byte_ptr = ir.IntType(8).as_pointer()
        offset = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.gep(builder.bitcast(ary.data, byte_ptr), [offset])
        # read, high locality (keep it in every level), data cache
        _call(builder, "llvm.prefetch.p0i8", ir.VoidType(),
              [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(arr, off), codegen


__all__ = ["bit_bytes", "byte_dot_isa", "dot4", "iload", "istore", "izero", "prefetch", "q8_base",
           "q8_sum", "splat_i32", "target_features", "unsigned_form"]

"""numba quantizers: float32 rows -> ggml blocks, with llama.cpp's rounding and search.

The bytes must equal llama-quantize's, so every expression keeps ggml-quants.c's float32
arithmetic and order (ggml-base is built without FMA or fast-math: no contraction, no
reassociation): integers are turned into float32 before they meet a float, because numba
would otherwise promote the product to float64.  `nearest_int` is ggml's magic-number
rounding, i.e. round half to even; `_roundf` is C's roundf (half away from zero).

All kernels live in this one file on purpose: numba's on-disk cache only notices edits to the
file that defines a cached function.

`qw` is the importance row (an imatrix column slice) or an empty array for none; the types
that have a weighted search (llama.cpp's *_impl functions) take it, the others ignore it.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ..quants._bits import f32_as_u32, round_f16
from ..quants._kernels import decode_row
from ..quants.types import F16, F32, IQ4_NL, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0

F0 = np.float32(0.0)
F1 = np.float32(1.0)
GROUP_MAX_EPS = np.float32(1e-15)
FLT_MAX = np.float32(3.4028234663852886e38)
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


@intrinsic
def _f16_bits(typingctx, x):
    """float32 -> IEEE half bits (round to nearest even), as ggml's GGML_FP32_TO_FP16."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        h = builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
        return builder.zext(h, ir.IntType(32))

    return types.uint32(x), codegen


# ---------------------------------------------------------------- helpers


@njit(cache=True, inline="always")
def _f(v):
    return np.float32(v)


@njit(cache=True, inline="always")
def nearest_int(v):
    """ggml's nearest_int: add 1.5 * 2^23 so the float add rounds to an integer (half to even),
    then read it from the mantissa bits; plain arithmetic, no libm call."""
    bits = f32_as_u32(v + np.float32(12582912.0))
    return np.int32((bits & np.uint32(0x007FFFFF)) - np.uint32(0x00400000))  # int32, so loops stay 16 wide


@njit(cache=True, inline="always")
def _roundf(v):
    a = np.floor(np.float64(abs(v)) + 0.5)
    return -a if v < 0 else a


@njit(cache=True, inline="always")
def _put_f16(out, o, v):
    """Store fp16(v) at out[o:o+2]; returns the stored value as float32 (GGML_FP16_TO_FP32)."""
    bits = _f16_bits(v)
    out[o] = bits & 255
    out[o + 1] = bits >> 8
    return round_f16(v)


@njit(cache=True, inline="always")
def _clamp(v, lo, hi):
    return max(lo, min(hi, v))


@njit(cache=True)
def _abs_max(x):
    """(max |x|, the signed element that has it: the first one on ties)."""
    amax = F0
    mx = F0
    for v in x:
        up = abs(v) > amax  # as selects: no branch to mispredict
        amax = abs(v) if up else amax
        mx = v if up else mx
    return amax, mx


@njit(cache=True)
def _sum_squares(x):
    s = F0
    for v in x:
        s += v * v
    return s


# ---------------------------------------------------------------- llama.cpp's searches


@njit(cache=True)
def make_qx_quants(n, nmax, x, L, w):
    """Symmetric scale search (rmse_type 1) with weights w; L gets values in [0, 2*nmax)."""
    amax, mx = _abs_max(x[:n])
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return F0
    fnmax = _f(nmax)
    iscale = -fnmax / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        lv = _clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = lv + nmax
        fl = _f(lv)
        sumlx += w[i] * x[i] * fl
        suml2 += w[i] * fl * fl
    scale = sumlx / suml2 if suml2 != 0 else F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fnmax + np.float32(0.1) * _f(step)) / mx
        sumlx = F0
        suml2 = F0
        for i in range(n):
            fl = _f(_clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1))
            sumlx += w[i] * x[i] * fl
            suml2 += w[i] * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + _clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True)
def make_q3_quants(n, nmax, x, L):
    """Q3_K's reference search: rounding, then up to 5 passes of coordinate descent."""
    amax, mx = _abs_max(x[:n])
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return F0
    iscale = -_f(nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        lv = _clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = lv
        w = x[i] * x[i]
        sumlx += w * x[i] * _f(lv)
        suml2 += w * _f(lv) * _f(lv)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * _f(L[i])
            if slx > 0:
                sl2 = suml2 - w * _f(L[i]) * _f(L[i])
                new_l = _clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                if new_l != L[i]:
                    slx += w * x[i] * _f(new_l)
                    sl2 += w * _f(new_l) * _f(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else F0


@njit(cache=True)
def make_qkx_quants(n, nmax, x, w, L, Laux, rmin, rdelta, nstep, use_mad):
    """Asymmetric (scale, -min) search, llama.cpp's make_qkx2_quants / make_qkx3_quants
    (identical once the weights are given).  Returns (scale, the_min)."""
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if mn > 0:
        mn = F0
    if mx <= mn:
        L[:n] = 0
        return F0, -mn
    fnmax = _f(nmax)
    iscale = fnmax / (mx - mn)
    scale = F1 / iscale
    best_error = F0
    for i in range(n):
        L[i] = _clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax)
        diff = scale * _f(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += w[i] * diff
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * _f(step) + fnmax) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            lv = _clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax)
            Laux[i] = lv
            fl = _f(lv)
            sum_l += w[i] * fl
            sum_l2 += w[i] * fl * fl
            sum_xl += w[i] * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur_error = F0
            for i in range(n):
                diff = this_scale * _f(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += w[i] * diff
            if cur_error < best_error:
                L[:n] = Laux[:n]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(cache=True)
def make_qp_quants(n, nmax, x, L, qw):
    """Positive-only scale search for the super-block scales (imatrix path)."""
    mx = F0
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        L[:n] = 0
        return F0
    fnmax = _f(nmax)
    iscale = fnmax / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i])
    scale = F1 / iscale
    best_mse = F0
    for i in range(n):
        diff = x[i] - scale * _f(L[i])
        best_mse += qw[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (np.float32(0.1) * _f(step) + fnmax) / mx
        scale_is = F1 / iscale_is
        mse = F0
        for i in range(n):
            lv = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * _f(lv)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F0
    suml2 = F0
    for i in range(n):
        lv = min(nmax, nearest_int(iscale * x[i]))
        L[i] = lv
        sumlx += qw[i] * x[i] * _f(lv)
        suml2 += qw[i] * _f(lv) * _f(lv)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = qw[i]
            slx = sumlx - w * x[i] * _f(L[i])
            sl2 = suml2 - w * _f(L[i]) * _f(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w * x[i] * _f(new_l)
                    sl2 += w * _f(new_l) * _f(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F0


@njit(cache=True)
def _importance(x, qw, sigma2, w):
    """w = qw * sqrt(sigma2 + x^2): llama.cpp's weighting of an imatrix row."""
    for j in range(x.shape[0]):
        w[j] = qw[j] * np.sqrt(sigma2 + x[j] * x[j])


# ---------------------------------------------------------------- 32-wide blocks


@njit(cache=True)
def _pack_nibbles(L, out, o):
    for j in range(16):
        out[o + j] = L[j] | (L[j + 16] << 4)


@njit(cache=True)
def _pack_q5(L, out, o_qh, o_qs):
    qh = np.uint32(0)
    for j in range(16):
        lo, hi = L[j], L[j + 16]
        out[o_qs + j] = (lo & 15) | ((hi & 15) << 4)
        qh |= np.uint32((lo >> 4) & 1) << np.uint32(j)
        qh |= np.uint32((hi >> 4) & 1) << np.uint32(j + 16)
    for k in range(4):
        out[o_qh + k] = (qh >> np.uint32(8 * k)) & np.uint32(255)


@njit(cache=True, inline="always")
def _put_q(out, o_qs, o_qh, j, l0, l1, qh, five):
    """Values j and j+16 of a 32-block into its nibbles (o_qs) and, for the 5-bit types, their
    fifth bits into qh (written at o_qh by the caller); returns qh."""
    out[o_qs + j] = (l0 & 15) | ((l1 & 15) << 4)
    if five:
        qh |= (np.uint32((l0 >> 4) & 1) << np.uint32(j)) | (np.uint32((l1 >> 4) & 1) << np.uint32(j + 16))
    return qh


@njit(cache=True, inline="always")
def _put_qh(out, o, qh):
    for k in range(4):
        out[o + k] = (qh >> np.uint32(8 * k)) & np.uint32(255)


@njit(cache=True)
def _q_sym32(x, out, qw, size, nmax):
    """Q4_0 (nmax 8) / Q5_0 (nmax 16) reference rounding, or the weighted search with qw.  The
    reference path rounds and packs in one pass, with nothing allocated per row."""
    if qw.shape[0]:
        _q_sym32_weighted(x, out, qw, size, nmax)
        return
    five = nmax == 16
    o_qs = 6 if five else 2
    top = np.int32(2 * nmax - 1)
    bias = _f(nmax) + np.float32(0.5)
    for b in range(x.shape[0] // 32):
        xb = x[b * 32 : b * 32 + 32]
        o = b * size
        _, mx = _abs_max(xb)
        d = mx / _f(-nmax)
        inv = F1 / d if d != 0 else F0
        _put_f16(out, o, d)
        qh = np.uint32(0)
        for j in range(16):
            l0 = min(top, np.int32(xb[j] * inv + bias))
            l1 = min(top, np.int32(xb[j + 16] * inv + bias))
            qh = _put_q(out, o + o_qs, 0, j, l0, l1, qh, five)
        if five:
            _put_qh(out, o + 2, qh)


@njit(cache=True)
def _q_sym32_weighted(x, out, qw, size, nmax):
    L = np.empty(32, np.int32)
    w = np.empty(32, np.float32)
    sigma2 = _sum_squares(x) / _f(x.shape[0])
    for b in range(x.shape[0] // 32):
        xb = x[b * 32 : b * 32 + 32]
        o = b * size
        _importance(xb, qw[b * 32 : b * 32 + 32], sigma2, w)
        _put_f16(out, o, make_qx_quants(32, nmax, xb, L, w))
        if nmax == 8:
            _pack_nibbles(L, out, o + 2)
        else:
            _pack_q5(L, out, o + 2, o + 6)


@njit(cache=True)
def _q_affine32(x, out, qw, size, nmax):
    """Q4_1 (nmax 15) / Q5_1 (nmax 31): min/max rounding, or the weighted search with qw; the
    reference path in one pass, as _q_sym32's."""
    if qw.shape[0]:
        _q_affine32_weighted(x, out, qw, size, nmax)
        return
    five = nmax == 31
    o_qs = 8 if five else 4
    top = np.int32(nmax)
    half = np.float32(0.5)
    for b in range(x.shape[0] // 32):
        xb = x[b * 32 : b * 32 + 32]
        o = b * size
        mn = FLT_MAX
        mx = -FLT_MAX
        for v in xb:
            mn = min(mn, v)
            mx = max(mx, v)
        d = (mx - mn) / _f(nmax)
        inv = F1 / d if d != 0 else F0
        _put_f16(out, o, d)
        _put_f16(out, o + 2, mn)
        qh = np.uint32(0)
        for j in range(16):
            l0 = min(top, np.int32((xb[j] - mn) * inv + half))
            l1 = min(top, np.int32((xb[j + 16] - mn) * inv + half))
            qh = _put_q(out, o + o_qs, 0, j, l0, l1, qh, five)
        if five:
            _put_qh(out, o + 4, qh)


@njit(cache=True)
def _q_affine32_weighted(x, out, qw, size, nmax):
    L = np.empty(32, np.int32)
    Laux = np.empty(32, np.int32)
    w = np.empty(32, np.float32)
    sigma2 = _sum_squares(x) / _f(x.shape[0])
    for b in range(x.shape[0] // 32):
        xb = x[b * 32 : b * 32 + 32]
        o = b * size
        _importance(xb, qw[b * 32 : b * 32 + 32], sigma2, w)
        d, the_min = make_qkx_quants(32, nmax, xb, w, L, Laux, np.float32(-0.9), np.float32(0.05), 36, False)
        _put_f16(out, o, d)
        _put_f16(out, o + 2, -the_min)
        if nmax == 15:
            _pack_nibbles(L, out, o + 4)
        else:
            _pack_q5(L, out, o + 4, o + 8)


@njit(cache=True)
def _q8_0(x, out):
    for b in range(x.shape[0] // 32):
        xb = x[b * 32 : b * 32 + 32]
        amax = F0
        for v in xb:
            amax = max(amax, abs(v))
        d = amax / np.float32(127.0)
        inv = F1 / d if d != 0 else F0
        o = b * 34
        _put_f16(out, o, d)
        for j in range(32):
            out[o + 2 + j] = np.uint8(np.int8(_roundf(xb[j] * inv)))


@njit(cache=True, inline="always")
def _best_index(x):
    """Index of the IQ4_NL value nearest to x (ggml's best_index_int8)."""
    v = IQ4_NL_VALUES
    if x <= _f(v[0]):
        return 0
    if x >= _f(v[15]):
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < _f(v[mid]):
            hi = mid
        else:
            lo = mid
    return hi - 1 if x - _f(v[hi - 1]) < _f(v[hi]) - x else hi


@njit(cache=True)
def _iq4_nl(x, out, qw):
    """IQ4_NL with ntry 7, as quantize_iq4_nl (one 32-value super-block per block)."""
    L = np.empty(32, np.int32)
    w = np.empty(32, np.float32)
    v0 = _f(IQ4_NL_VALUES[0])
    for b in range(x.shape[0] // 32):
        xb = x[b * 32 : b * 32 + 32]
        sigma2 = _sum_squares(xb) * (np.float32(2.0) / np.float32(32.0))
        if qw.shape[0]:
            _importance(xb, qw[b * 32 : b * 32 + 32], sigma2, w)
        else:
            for j in range(32):
                w[j] = xb[j] * xb[j]
        amax, mx = _abs_max(xb)
        d = F0
        if amax >= GROUP_MAX_EPS:
            d = -mx / v0
            inv = F1 / d
            sumqx = F0
            sumq2 = F0
            for j in range(32):
                q = _f(IQ4_NL_VALUES[_best_index(inv * xb[j])])
                sumqx += w[j] * q * xb[j]
                sumq2 += w[j] * q * q
            d = sumqx / sumq2 if sumq2 > 0 else F0
            best = d * sumqx
            for step in range(-7, 8):
                inv = _f(step + IQ4_NL_VALUES[0]) / mx
                sumqx = F0
                sumq2 = F0
                for j in range(32):
                    q = _f(IQ4_NL_VALUES[_best_index(inv * xb[j])])
                    sumqx += w[j] * q * xb[j]
                    sumq2 += w[j] * q * q
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    d = sumqx / sumq2
                    best = d * sumqx
        o = b * 18
        _put_f16(out, o, d)
        inv = F1 / d if d != 0 else F0
        for j in range(32):
            L[j] = _best_index(inv * xb[j])
        _pack_nibbles(L, out, o + 2)


# ---------------------------------------------------------------- K-quants (256-value super-blocks)


@njit(cache=True)
def _pack_2bit(L, out, o):
    for j in range(0, 256, 128):
        for k in range(32):
            out[o + j // 4 + k] = L[j + k] | (L[j + k + 32] << 2) | (L[j + k + 64] << 4) | (L[j + k + 96] << 6)


@njit(cache=True)
def _q2_k(x, out, qw):
    L = np.empty(256, np.int32)
    Laux = np.empty(16, np.int32)
    w = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.int32)
    Lm = np.empty(16, np.int32)
    q4scale = np.float32(15.0)
    for i in range(x.shape[0] // 256):
        xs = x[i * 256 : i * 256 + 256]
        o = i * 84  # scales[16], qs[64], d, dmin
        if qw.shape[0]:
            sigma2 = _sum_squares(xs) / np.float32(256.0)
            for j in range(16):
                _importance(xs[16 * j : 16 * j + 16], qw[i * 256 + 16 * j : i * 256 + 16 * j + 16], sigma2, w)
                s = F0
                for k in range(16):
                    s += w[k]
                sw[j] = s
                scales[j], mins[j] = make_qkx_quants(
                    16, 3, xs[16 * j :], w, L[16 * j :], Laux, np.float32(-0.9), np.float32(0.05), 36, False
                )
            dm = make_qp_quants(16, 15, scales, Ls, sw)
            mm = make_qp_quants(16, 15, mins, Lm, sw)
            dm = _put_f16(out, o + 80, dm)
            mm = _put_f16(out, o + 82, mm)
            for j in range(16):
                out[o + j] = Ls[j] | (Lm[j] << 4)
        else:
            max_scale = F0
            max_min = F0
            for j in range(16):
                for k in range(16):
                    w[k] = abs(xs[16 * j + k])
                scales[j], mins[j] = make_qkx_quants(
                    16, 3, xs[16 * j :], w, L[16 * j :], Laux, np.float32(-0.5), np.float32(0.1), 15, True
                )
                max_scale = max(max_scale, scales[j])
                max_min = max(max_min, mins[j])
            if max_scale > 0:
                iscale = q4scale / max_scale
                for j in range(16):
                    out[o + j] = nearest_int(iscale * scales[j])
                dm = _put_f16(out, o + 80, max_scale / q4scale)
            else:
                out[o : o + 16] = 0
                dm = _put_f16(out, o + 80, F0)
            if max_min > 0:
                iscale = q4scale / max_min
                for j in range(16):
                    out[o + j] |= nearest_int(iscale * mins[j]) << 4
                mm = _put_f16(out, o + 82, max_min / q4scale)
            else:
                mm = _put_f16(out, o + 82, F0)
        for j in range(16):
            d = dm * _f(out[o + j] & 15)
            if d == 0:
                continue
            m = mm * _f(out[o + j] >> 4)
            for k in range(16):
                L[16 * j + k] = _clamp(nearest_int((xs[16 * j + k] + m) / d), 0, 3)
        _pack_2bit(L, out, o + 16)


@njit(cache=True)
def _q3_k(x, out, qw):
    L = np.empty(256, np.int32)
    w = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.int32)
    for i in range(x.shape[0] // 256):
        xs = x[i * 256 : i * 256 + 256]
        o = i * 110  # hmask[32], qs[64], scales[12], d
        sc = out[o + 96 : o + 108]
        sc[:] = 0
        if qw.shape[0]:
            sigma2 = np.float32(2.0) * _sum_squares(xs) / np.float32(256.0)
            for j in range(16):
                _importance(xs[16 * j : 16 * j + 16], qw[i * 256 + 16 * j : i * 256 + 16 * j + 16], sigma2, w)
                s = F0
                for k in range(16):
                    s += w[k]
                sw[j] = s
                scales[j] = make_qx_quants(16, 4, xs[16 * j :], L[16 * j :], w)
            d_block = make_qx_quants(16, 32, scales, Ls, sw)
            d_all = _put_f16(out, o + 108, d_block)
        else:
            max_scale = F0
            amax = F0
            for j in range(16):
                scales[j] = make_q3_quants(16, 4, xs[16 * j :], L[16 * j :])
                if abs(scales[j]) > amax:
                    amax = abs(scales[j])
                    max_scale = scales[j]
            if max_scale != 0:
                iscale = np.float32(-32.0) / max_scale
                for j in range(16):
                    Ls[j] = _clamp(np.int32(np.int8(nearest_int(iscale * scales[j]))), -32, 31) + 32
                d_all = _put_f16(out, o + 108, F1 / iscale)
            else:
                Ls[:] = -1  # no scales written
                d_all = _put_f16(out, o + 108, F0)
        if Ls[0] >= 0:
            for j in range(16):
                lv = Ls[j]
                if j < 8:
                    sc[j] = lv & 15
                else:
                    sc[j - 8] |= (lv & 15) << 4
                sc[j % 4 + 8] |= (lv >> 4) << (2 * (j // 4))
        for j in range(16):
            lo = (np.int64(sc[j]) & 15) if j < 8 else (np.int64(sc[j - 8]) >> 4)
            scale = (lo | (((np.int64(sc[8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
            d = d_all * _f(scale)
            if d == 0:
                continue
            for k in range(16):
                L[16 * j + k] = _clamp(nearest_int(xs[16 * j + k] / d), -4, 3) + 4
        out[o : o + 32] = 0
        for j in range(256):
            if L[j] > 3:
                out[o + j % 32] |= 1 << (j // 32)
                L[j] -= 4
        _pack_2bit(L, out, o + 32)


@njit(cache=True, inline="always")
def _scale_min_k4(sc, j):
    if j < 4:
        return sc[j] & 63, sc[j + 4] & 63
    return (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)


@njit(cache=True, error_model="numpy")
def _qkx_lanes(nb, n, nmax, xt, wt, rmin, rdelta, nstep, use_mad, scale, the_min, l_iscale, l_min, st, laux):
    """make_qkx_quants on nb blocks of n values at once, one block per lane: xt[i, b], wt[i, b] are
    value i of block b and its weight.  Each lane does exactly the scalar search's float operations
    in its order (the sums run over i, the steps in turn, a lane's min moving when a step wins), so
    the results are the same bits; looping over the lanes innermost lets LLVM put 16 blocks in one
    AVX-512 register.  error_model numpy: a lane whose D is 0 divides by it harmlessly (unused).

    Out: scale[b], the_min[b], and the (iscale, min) whose rounding
    clamp(nearest_int(iscale * (x - min)), 0, nmax) is the search's L (iscale 0: L = 0)."""
    mn = st[0]
    mx = st[1]
    sw = st[2]
    sx = st[3]
    isc = st[4]
    best = st[5]
    sl = st[6]
    sl2 = st[7]
    sxl = st[8]
    ts = st[9]
    tm = st[10]
    ce = st[11]
    ok = st[12]
    flat = st[13]
    fnmax = _f(nmax)
    lo = np.int32(0)
    hi = np.int32(nmax)
    for b in range(nb):
        v = xt[0, b]
        mn[b] = v
        mx[b] = v
        sw[b] = wt[0, b]
        sx[b] = wt[0, b] * v
    for i in range(1, n):
        for b in range(nb):
            v = xt[i, b]
            wv = wt[i, b]
            mn[b] = v if v < mn[b] else mn[b]
            mx[b] = v if v > mx[b] else mx[b]
            sw[b] += wv
            sx[b] += wv * v
    for b in range(nb):
        if mn[b] > 0:
            mn[b] = F0
        flat[b] = F1 if mx[b] <= mn[b] else F0
        isc[b] = fnmax / (mx[b] - mn[b])
        scale[b] = F1 / isc[b]
        best[b] = F0
        l_iscale[b] = isc[b]
        l_min[b] = mn[b]
    for i in range(n):
        for b in range(nb):
            v = xt[i, b]
            lv = _clamp(nearest_int(isc[b] * (v - mn[b])), lo, hi)
            diff = scale[b] * _f(lv) + mn[b] - v
            diff = abs(diff) if use_mad else diff * diff
            best[b] += wt[i, b] * diff
    if nstep >= 1:
        for step in range(nstep + 1):
            top = rmin + rdelta * _f(step) + fnmax
            for b in range(nb):
                isc[b] = top / (mx[b] - mn[b])
                sl[b] = F0
                sl2[b] = F0
                sxl[b] = F0
            for i in range(n):
                for b in range(nb):
                    v = xt[i, b]
                    wv = wt[i, b]
                    lv = _clamp(nearest_int(isc[b] * (v - mn[b])), lo, hi)
                    laux[i, b] = lv
                    fl = _f(lv)
                    sl[b] += wv * fl
                    sl2[b] += wv * fl * fl
                    sxl[b] += wv * fl * v
            for b in range(nb):
                D = sw[b] * sl2[b] - sl[b] * sl[b]
                this_scale = (sw[b] * sxl[b] - sx[b] * sl[b]) / D
                this_min = (sl2[b] * sx[b] - sl[b] * sxl[b]) / D
                if this_min > 0:
                    this_min = F0
                    this_scale = sxl[b] / sl2[b]
                ts[b] = this_scale
                tm[b] = this_min
                ce[b] = F0
                ok[b] = F1 if D > 0 and flat[b] == F0 else F0
            for i in range(n):
                for b in range(nb):
                    diff = ts[b] * _f(laux[i, b]) + tm[b] - xt[i, b]
                    diff = abs(diff) if use_mad else diff * diff
                    ce[b] += wt[i, b] * diff
            for b in range(nb):
                if ok[b] != F0 and ce[b] < best[b]:
                    best[b] = ce[b]
                    scale[b] = ts[b]
                    l_iscale[b] = isc[b]
                    l_min[b] = mn[b]
                    mn[b] = tm[b]
    for b in range(nb):
        the_min[b] = -mn[b]
        if flat[b] != F0:  # max == min: L = 0, scale 0
            scale[b] = F0
            l_iscale[b] = F0


@njit(cache=True)
def _q45_k(x, out, qw, nmax):
    """Q4_K (nmax 15) and Q5_K (nmax 31): 8 blocks of 32 with 6-bit scales and mins.  The block
    searches of the whole row run together as lanes (_qkx_lanes), then each super-block as before."""
    size = 144 if nmax == 15 else 176
    n_cols = x.shape[0]
    nb = n_cols // 32
    nbp = (nb + 15) // 16 * 16  # lanes padded to whole vectors with all-zero blocks
    xt = np.zeros((32, nbp), np.float32)
    wt = np.zeros((32, nbp), np.float32)
    laux = np.empty((32, nbp), np.int32)
    st = np.empty((14, nbp), np.float32)
    scales = np.empty(nbp, np.float32)
    mins = np.empty(nbp, np.float32)
    l_isc = np.empty(nbp, np.float32)
    l_mn = np.empty(nbp, np.float32)
    L = np.empty(256, np.int32)
    sw = np.empty(8, np.float32)
    Ls = np.empty(8, np.int32)
    Lm = np.empty(8, np.int32)
    lo = np.int32(0)
    hi = np.int32(nmax)
    for b in range(nb):
        xb = x[b * 32 : b * 32 + 32]
        for k in range(32):
            xt[k, b] = xb[k]
    if qw.shape[0]:
        for i in range(n_cols // 256):
            sigma2 = np.float32(2.0) * _sum_squares(x[i * 256 : i * 256 + 256]) / np.float32(256.0)
            for e in range(i * 256, i * 256 + 256):
                wt[e % 32, e // 32] = qw[e] * np.sqrt(sigma2 + x[e] * x[e])
        _qkx_lanes(nbp, 32, nmax, xt, wt, np.float32(-0.9), np.float32(0.05), 36, False,
                   scales, mins, l_isc, l_mn, st, laux)
    else:
        for b in range(nb):
            xb = x[b * 32 : b * 32 + 32]
            av_x = np.sqrt(_sum_squares(xb) / np.float32(32.0))
            for k in range(32):
                wt[k, b] = av_x + abs(xb[k])
        rmin, nstep = (np.float32(-1.0), 20) if nmax == 15 else (np.float32(-0.5), 15)
        _qkx_lanes(nbp, 32, nmax, xt, wt, rmin, np.float32(0.1), nstep, False, scales, mins, l_isc, l_mn, st, laux)
    for i in range(n_cols // 256):
        xs = x[i * 256 : i * 256 + 256]
        o = i * size  # d, dmin, scales[12], (qh[32]), qs[128]
        if qw.shape[0]:
            for j in range(8):
                s = F0
                for k in range(32):
                    s += wt[k, 8 * i + j]
                sw[j] = s
            d_block = make_qp_quants(8, 63, scales[8 * i : 8 * i + 8], Ls, sw)
            m_block = make_qp_quants(8, 63, mins[8 * i : 8 * i + 8], Lm, sw)
        else:
            max_scale = F0
            max_min = F0
            for j in range(8):
                max_scale = max(max_scale, scales[8 * i + j])
                max_min = max(max_min, mins[8 * i + j])
            inv_scale = np.float32(63.0) / max_scale if max_scale > 0 else F0
            inv_min = np.float32(63.0) / max_min if max_min > 0 else F0
            for j in range(8):
                Ls[j] = nearest_int(inv_scale * scales[8 * i + j]) & 255
                Lm[j] = nearest_int(inv_min * mins[8 * i + j]) & 255
            d_block = max_scale / np.float32(63.0)
            m_block = max_min / np.float32(63.0)
        sc = out[o + 4 : o + 16]
        for j in range(8):
            ls, lm = min(63, Ls[j]), min(63, Lm[j])
            if j < 4:
                sc[j] = ls
                sc[j + 4] = lm
            else:
                sc[j + 4] = (ls & 15) | ((lm & 15) << 4)
                sc[j - 4] |= (ls >> 4) << 6
                sc[j] |= (lm >> 4) << 6
        d_all = _put_f16(out, o, d_block)
        m_all = _put_f16(out, o + 2, m_block)
        for j in range(8):
            ls, lm = _scale_min_k4(sc, j)
            d = d_all * _f(ls)
            if d == 0:  # the search's own L
                b = 8 * i + j
                for k in range(32):
                    L[32 * j + k] = _clamp(nearest_int(l_isc[b] * (xs[32 * j + k] - l_mn[b])), lo, hi)
                continue
            dm = m_all * _f(lm)
            for k in range(32):
                L[32 * j + k] = _clamp(nearest_int((xs[32 * j + k] + dm) / d), lo, hi)
        if nmax == 15:
            for j in range(0, 256, 64):
                for k in range(32):
                    out[o + 16 + j // 2 + k] = L[j + k] | (L[j + k + 32] << 4)
        else:
            qh = out[o + 16 : o + 48]
            qh[:] = 0
            for n in range(0, 256, 64):
                m1 = 1 << (n // 32)
                for k in range(32):
                    l1, l2 = L[n + k], L[n + k + 32]
                    if l1 > 15:
                        l1 -= 16
                        qh[k] |= m1
                    if l2 > 15:
                        l2 -= 16
                        qh[k] |= m1 << 1
                    out[o + 48 + n // 2 + k] = l1 | (l2 << 4)


@njit(cache=True, error_model="numpy")
def _qx_lanes(nb, n, nmax, xt, wt, scale, l_iscale, st):
    """make_qx_quants on nb blocks of n values at once, one block per lane (as _qkx_lanes).

    Out: scale[b], and the iscale whose rounding nmax + clamp(nearest_int(iscale * x), -nmax, nmax-1)
    is the search's L (iscale 0: an all-zero block, L = 0)."""
    amax = st[0]
    mx = st[1]
    slx = st[2]
    sl2 = st[3]
    best = st[4]
    isc = st[5]
    fnmax = _f(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    for b in range(nb):
        amax[b] = F0
        mx[b] = F0
    for i in range(n):
        for b in range(nb):
            v = xt[i, b]
            av = abs(v)
            up = av > amax[b]  # the first of equal maxima, as _abs_max
            amax[b] = av if up else amax[b]
            mx[b] = v if up else mx[b]
    for b in range(nb):
        isc[b] = -fnmax / mx[b]
        slx[b] = F0
        sl2[b] = F0
    for i in range(n):
        for b in range(nb):
            v = xt[i, b]
            wv = wt[i, b]
            fl = _f(_clamp(nearest_int(isc[b] * v), lo, hi))
            slx[b] += wv * v * fl
            sl2[b] += wv * fl * fl
    for b in range(nb):
        s = slx[b] / sl2[b] if sl2[b] != 0 else F0
        scale[b] = s
        best[b] = s * slx[b]
        l_iscale[b] = isc[b]
    for step in range(-9, 10):
        if step == 0:
            continue
        top = -(fnmax + np.float32(0.1) * _f(step))
        for b in range(nb):
            isc[b] = top / mx[b]
            slx[b] = F0
            sl2[b] = F0
        for i in range(n):
            for b in range(nb):
                v = xt[i, b]
                wv = wt[i, b]
                fl = _f(_clamp(nearest_int(isc[b] * v), lo, hi))
                slx[b] += wv * v * fl
                sl2[b] += wv * fl * fl
        for b in range(nb):
            if sl2[b] > 0 and slx[b] * slx[b] > best[b] * sl2[b]:
                s = slx[b] / sl2[b]
                scale[b] = s
                best[b] = s * slx[b]
                l_iscale[b] = isc[b]
    for b in range(nb):
        if amax[b] < GROUP_MAX_EPS:
            scale[b] = F0
            l_iscale[b] = F0


@njit(cache=True)
def _q6_k(x, out, qw):
    """Q6_K: 16 blocks of 16 with int8 scales; the block searches of the row run as lanes (_qx_lanes)."""
    n_cols = x.shape[0]
    nb = n_cols // 16
    nbp = (nb + 15) // 16 * 16
    xt = np.zeros((16, nbp), np.float32)
    wt = np.zeros((16, nbp), np.float32)
    st = np.empty((6, nbp), np.float32)
    scales = np.empty(nbp, np.float32)
    l_isc = np.empty(nbp, np.float32)
    L = np.empty(256, np.int32)
    lo = np.int32(-32)
    hi = np.int32(31)
    for b in range(nb):
        for k in range(16):
            v = x[b * 16 + k]
            xt[k, b] = v
            wt[k, b] = qw[b * 16 + k] if qw.shape[0] else v * v
    _qx_lanes(nbp, 16, 32, xt, wt, scales, l_isc, st)
    for i in range(n_cols // 256):
        xs = x[i * 256 : i * 256 + 256]
        o = i * 210  # ql[128], qh[64], scales[16], d
        max_scale = F0
        max_abs = F0
        for j in range(16):
            s = scales[16 * i + j]
            if abs(s) > max_abs:
                max_abs = abs(s)
                max_scale = s
        if max_abs < GROUP_MAX_EPS:
            out[o : o + 210] = 0
            continue
        iscale = np.float32(-128.0) / max_scale
        d_all = _put_f16(out, o + 208, F1 / iscale)
        for j in range(16):
            s = min(127, nearest_int(iscale * scales[16 * i + j]))
            out[o + 192 + j] = np.uint8(np.int8(s))
            d = d_all * _f(np.int8(s))
            if d == 0:  # the search's own L
                li = l_isc[16 * i + j]
                for k in range(16):
                    L[16 * j + k] = 0 if li == 0 else 32 + _clamp(nearest_int(li * xs[16 * j + k]), lo, hi)
                continue
            for k in range(16):
                L[16 * j + k] = _clamp(nearest_int(xs[16 * j + k] / d), lo, hi) + 32
        for j in range(0, 256, 128):
            ql = o + j // 2
            qh = o + 128 + j // 4
            for k in range(32):
                q1, q2, q3, q4 = L[j + k], L[j + k + 32], L[j + k + 64], L[j + k + 96]
                out[ql + k] = (q1 & 15) | ((q3 & 15) << 4)
                out[ql + 32 + k] = (q2 & 15) | ((q4 & 15) << 4)
                out[qh + k] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)


# ---------------------------------------------------------------- float types


@njit(cache=True)
def _floats(x, out, type_id):
    if type_id == F32:
        for j in range(x.shape[0]):
            u = f32_as_u32(x[j])
            for k in range(4):
                out[4 * j + k] = (u >> np.uint32(8 * k)) & np.uint32(255)
    elif type_id == F16:
        for j in range(x.shape[0]):
            _put_f16(out, 2 * j, x[j])
    else:  # BF16: round to nearest even, NaNs kept quiet (ggml_compute_fp32_to_bf16)
        for j in range(x.shape[0]):
            u = f32_as_u32(x[j])
            if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                h = (u >> np.uint32(16)) | np.uint32(64)
            else:
                h = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
            out[2 * j] = h & np.uint32(255)
            out[2 * j + 1] = (h >> np.uint32(8)) & np.uint32(255)


# ---------------------------------------------------------------- dispatch


@njit(cache=True, inline="always")
def quantize_row(type_id, x, qw, out):
    """One float32 row -> one packed row of `type_id` (qw: importance, or empty).

    Inlined, so that where type_id is a constant (the kernels below) numba prunes the other types'
    branches and compiles one quantizer, not twelve."""
    if type_id == Q8_0:
        _q8_0(x, out)
    elif type_id == Q4_0:
        _q_sym32(x, out, qw, 18, 8)
    elif type_id == Q5_0:
        _q_sym32(x, out, qw, 22, 16)
    elif type_id == Q4_1:
        _q_affine32(x, out, qw, 20, 15)
    elif type_id == Q5_1:
        _q_affine32(x, out, qw, 24, 31)
    elif type_id == IQ4_NL:
        _iq4_nl(x, out, qw)
    elif type_id == Q2_K:
        _q2_k(x, out, qw)
    elif type_id == Q3_K:
        _q3_k(x, out, qw)
    elif type_id == Q4_K:
        _q45_k(x, out, qw, 15)
    elif type_id == Q5_K:
        _q45_k(x, out, qw, 31)
    elif type_id == Q6_K:
        _q6_k(x, out, qw)
    else:
        _floats(x, out, type_id)


@functools.cache
def rows_quantizer(type_id: int):
    """The kernel quantize(x, qw, out): out[r] = quantize(x[r]) for every row (rows are independent,
    so prange), for one type: a closure over it, so that only its quantizer compiles."""

    @njit(cache=True, parallel=True)
    def quantize(x, qw, out):
        for r in prange(x.shape[0]):
            quantize_row(type_id, x[r], qw, out[r])

    return quantize


# Rows converted per task: one float32 scratch row serves them all.
_CHUNK = 16


@functools.cache
def rows_converter(src_type: int, dst_type: int):
    """The kernel convert(raw, qw, out, n_cols): out[r] = quantize(decode(raw[r])), packed rows of
    src_type re-encoded as dst_type in one pass, each row decoded into an L1-resident scratch row
    (llama-quantize's dequantize-then-quantize, without a float32 copy of the tensor). One per
    pair of types, so that a model compiles the decoders and quantizers it uses, not 14 x 12 of
    them (a cold first quantize took 70 s when they were one kernel).

    decode_row is compiled into this kernel: numba's cache keys on this file only, so an edit
    to the decoders in quants/_kernels.py needs this file touched too (any edit) to recompile.
    """

    @njit(cache=True, parallel=True)
    def convert(raw, qw, out, n_cols):
        n_rows = raw.shape[0]
        none = np.zeros(0, np.float32)
        for t in prange((n_rows + _CHUNK - 1) // _CHUNK):
            row = np.empty(n_cols, np.float32)
            for r in range(t * _CHUNK, min(n_rows, (t + 1) * _CHUNK)):
                decode_row(src_type, raw[r], row, none)
                quantize_row(dst_type, row, qw, out[r])

    return convert

"""One token through a layer's attention or feed-forward block in a single numba call.

Generating a token runs every block once on one row. The kernels themselves are quick there; what
costs is getting to them: twenty-odd Python-to-numba calls per layer (quantize, three products,
norms, RoPE, cache store, attention, ...), each a few microseconds of dispatch. These functions
make the same kernel calls, in the same order, from inside numba, so the results are the bits of
the block-by-block path (blocks.py) and a layer costs two calls.

They take the exact products only (32-quant types, Q4_K, Q6_K) and flash attention; blocks.py
sends anything else down the general path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..quants._exact import quantize_q8, quantize_q8_k
from ..quants._int8 import lane_sums, matvec_q4_k_int8, matvec_q6_k_int8, matvec_q32_int8
from ..quants.types import Q4_K, Q6_K
from .activations import geglu, swiglu
from .attention import _attention_serial
from .kv_access import kv_store
from .norm import rms_norm
from .rope import apply_rope

ACT_SILU, ACT_GELU = 0, 1


@njit(cache=True, inline="always")
def _is_k(type_id):
    return type_id == Q4_K or type_id == Q6_K


@njit(cache=True)
def _quantize(x, super_blocks):
    """One row x [1, k] as Q8_K (super_blocks) or Q8_0/Q8_1 blocks: (bytes, d, extra, lane sums)."""
    k = x.shape[1]
    q = np.empty((1, k), np.int8)
    if super_blocks:
        d, extra = np.empty((1, k // 256), np.float32), np.empty((1, k // 16), np.float32)
        quantize_q8_k(x, q, d, extra)
        return q.view(np.uint8)[0], d[0], extra[0], np.empty(0, np.int32)
    d, extra = np.empty((1, k // 32), np.float32), np.empty((1, k // 32), np.float32)
    quantize_q8(x, q, d, extra)
    q8 = q.view(np.uint8)
    return q8[0], d[0], extra[0], lane_sums(q8)[0]


@njit(cache=True)
def _activations(x, t0, t1, t2):
    """x quantized for each family among the weight types t0..t2 (the other family left empty)."""
    empty = (np.empty(0, np.uint8), np.empty(0, np.float32), np.empty(0, np.float32), np.empty(0, np.int32))
    blocks = _quantize(x, False) if not (_is_k(t0) and _is_k(t1) and _is_k(t2)) else empty
    super_blocks = _quantize(x, True) if _is_k(t0) or _is_k(t1) or _is_k(t2) else empty
    return blocks, super_blocks


@njit(cache=True)
def _product(rows, type_id, acts, n_out):
    """W · x for one row: float32 [1, n_out], the kernel exact_product takes for one token."""
    blocks, super_blocks = acts
    out = np.empty((1, n_out), np.float32)
    if type_id == Q4_K:
        matvec_q4_k_int8(rows, super_blocks[0], super_blocks[1], super_blocks[2], out[0])
    elif type_id == Q6_K:
        matvec_q6_k_int8(rows, super_blocks[0], super_blocks[1], super_blocks[2], out[0])
    else:
        matvec_q32_int8(rows, type_id, blocks[0], blocks[1], blocks[2], blocks[3], out[0])
    return out


@njit(cache=True)
def attention_token(x, wq, tq, wk, tk, wv, tv, wo, to, biases, head_norms, norm_eps, shape, cos, sin,
                    rope_mode, q_prescale, cache, pos, window, scale, split_kv):
    """AttentionLayer for one token x [1, d] at position `pos`, writing its key and value to the cache.

    biases = (q, k, v) or three empty arrays; head_norms = (q_norm, k_norm) or two empty arrays;
    shape = (n_head, n_head_kv, head_dim, head_dim_v); cache = (key cells, key scales, value cells,
    value scales) of this layer, whole."""
    n_head, n_head_kv, head_dim, head_dim_v = shape
    acts = _activations(x, tq, tk, tv)
    q = _product(wq, tq, acts, n_head * head_dim)
    k = _product(wk, tk, acts, n_head_kv * head_dim)
    v = _product(wv, tv, acts, n_head_kv * head_dim_v)
    if biases[0].shape[0]:
        q, k, v = q + biases[0], k + biases[1], v + biases[2]
    q = q.reshape(1, n_head, head_dim)
    k = k.reshape(1, n_head_kv, head_dim)
    v = v.reshape(1, n_head_kv, head_dim_v)
    if head_norms[0].shape[0]:
        q = rms_norm(q.reshape(n_head, head_dim), head_norms[0], norm_eps,
                     np.empty((n_head, head_dim), np.float32)).reshape(1, n_head, head_dim)
        k = rms_norm(k.reshape(n_head_kv, head_dim), head_norms[1], norm_eps,
                     np.empty((n_head_kv, head_dim), np.float32)).reshape(1, n_head_kv, head_dim)
    apply_rope(q, cos, sin, rope_mode)
    apply_rope(k, cos, sin, rope_mode)
    if q_prescale != 1.0:
        q *= np.float32(q_prescale)
    k_cells, k_scales, v_cells, v_scales = cache
    kv_store(k_cells, k_scales, pos, k)
    kv_store(v_cells, v_scales, pos, v)
    out = np.empty((1, n_head, head_dim_v), np.float32)
    _attention_serial(q, k_cells[:pos + 1], k_scales[:pos + 1], v_cells[:pos + 1], v_scales[:pos + 1], pos,
                      window, np.float32(scale), out, split_kv)
    flat = out.reshape(1, n_head * head_dim_v)
    return _product(wo, to, _activations(flat, to, to, to), wo.shape[0])


@njit(cache=True)
def feed_forward_token(x, gate, t_gate, up, t_up, down, t_down, activation):
    """FeedForward for one token x [1, d]: down(act(gate(x)) * up(x))."""
    acts = _activations(x, t_gate, t_up, t_up)
    g = _product(gate, t_gate, acts, gate.shape[0])
    u = _product(up, t_up, acts, up.shape[0])
    h = swiglu(g, u) if activation == ACT_SILU else geglu(g, u)
    return _product(down, t_down, _activations(h, t_down, t_down, t_down), down.shape[0])

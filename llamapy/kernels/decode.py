"""A decode step through a layer's attention or feed-forward block in a single numba call.

A decode step runs every block on one new token of each sequence (one row alone, or one row per
sequence of a server's step). The kernels are quick there; what costs is getting to them:
twenty-odd Python-to-numba calls per layer (quantize, three products, norms, RoPE, cache store,
attention, ...) and per sequence, each a few microseconds of dispatch. These functions make the
same kernel calls, in the same order, from inside numba, so the results are the bits of the
block-by-block path (blocks.py) and a layer costs two calls whatever the number of sequences.

Each row is a sequence's only token in the step, so each takes the kernels a one-token chunk
takes (the gemv arithmetic of K-quants, never the tiled or gemm one). Exact products only
(32-quant types, Q4_K, Q6_K) and flash attention; blocks.py sends anything else down the general
path. Caches come as [sequences, n_ctx, ...] arrays (a KVCache pool, or one cache with a leading
axis of 1) with each row's index in them.

The steps are compiled per combination of the block's weight types and per row count, one or
several (attention_kernels, feed_forward_kernels: closures over these, which fold as constants
through the inlined functions below), so a model compiles the products of the types it holds, not
of all seven, and a single sequence never compiles the few-token kernels.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..quants._exact import quantize_q8, quantize_q8_k
from ..quants._int8 import lane_sums, matvec_q4_k_int8, matvec_q6_k_int8, matvec_q32_int8
from ..quants._int8_k import dot_q4_k_int8, dot_q6_k_int8
from ..quants._int8_multi import dot_q32_few
from ..quants.types import Q4_K, Q6_K
from .activations import geglu, swiglu
from .attention import _attention_serial
from .kv_access import kv_store
from .norm import rms_norm
from .one_query import attend_task
from .rope import apply_rope

ACT_SILU, ACT_GELU = 0, 1


def _is_k(type_id: int) -> bool:
    return type_id == Q4_K or type_id == Q6_K


@njit(cache=True)
def _quantize_blocks(x):
    """Rows x [m, k] as Q8_0/Q8_1 blocks: (bytes, d, Q8_1 sums, lane sums)."""
    m, k = x.shape
    q = np.empty((m, k), np.int8)
    d, extra = np.empty((m, k // 32), np.float32), np.empty((m, k // 32), np.float32)
    quantize_q8(x, q, d, extra)
    q8 = q.view(np.uint8)
    return q8, d, extra, lane_sums(q8)


@njit(cache=True)
def _quantize_super_blocks(x):
    """Rows x [m, k] as Q8_K super-blocks: (bytes, d, sums per 16, no lane sums)."""
    m, k = x.shape
    q = np.empty((m, k), np.int8)
    d, extra = np.empty((m, k // 256), np.float32), np.empty((m, k // 16), np.float32)
    quantize_q8_k(x, q, d, extra)
    return q.view(np.uint8), d, extra, np.empty((m, 0), np.int32)


@njit(cache=True, inline="always")
def _activations(x, blocks, super_blocks):
    """x quantized for the weight families a block needs (constants: the other one left empty)."""
    m = x.shape[0]
    empty = (np.empty((m, 0), np.uint8), np.empty((m, 0), np.float32), np.empty((m, 0), np.float32),
             np.empty((m, 0), np.int32))
    return (_quantize_blocks(x) if blocks else empty), (_quantize_super_blocks(x) if super_blocks else empty)


@njit(cache=True, inline="always")
def _product(rows, type_id, acts, n_out, one_row):
    """W · x for one-token rows: float32 [m, n_out], by the kernel exact_product takes for one token
    (one_row a constant: several rows take the few-token kernel, the same bits; K-quants keep their
    gemv arithmetic)."""
    blocks, super_blocks = acts
    m = blocks[0].shape[0]
    out = np.empty((m, n_out), np.float32)
    if type_id == Q4_K:
        q8, d, extra, _ = super_blocks
        if one_row:
            matvec_q4_k_int8(rows, q8[0], d[0], extra[0], out[0])
        else:
            dot_q4_k_int8(rows, q8, d, extra, out, 0)
    elif type_id == Q6_K:
        q8, d, extra, _ = super_blocks
        if one_row:
            matvec_q6_k_int8(rows, q8[0], d[0], extra[0], out[0])
        else:
            dot_q6_k_int8(rows, q8, d, extra, out, False)
    else:
        q8, d, extra, sums = blocks
        if one_row:
            matvec_q32_int8(rows, type_id, q8[0], d[0], extra[0], sums[0], out[0])
        else:
            dot_q32_few(rows, type_id, q8, d, extra, sums, out)
    return out


@njit(cache=True)
def _residual(x, norms, eps, block_out):
    """x + post_norm(block_out) (post_norm skipped when empty): what a layer adds to its stream."""
    post = norms[1]
    if post.shape[0]:
        block_out = rms_norm(block_out, post, eps, np.empty_like(block_out))
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] + block_out[i, j]
    return out


# Element loops rather than numpy array expressions here: the same float32 operations, and a
# tenth of the code for numba and LLVM to compile (broadcasting makes each expression large).
@njit(cache=True)
def _add_rows(y, bias):
    """y[i] += bias for each row of y [m, n]."""
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] += bias[j]


@njit(cache=True)
def _scale(y, factor):
    """y *= factor, y [m, heads, d]."""
    for i in range(y.shape[0]):
        for h in range(y.shape[1]):
            for c in range(y.shape[2]):
                y[i, h, c] *= factor


@njit(cache=True, inline="always")
def _attention(x, wq, tq, wk, tk, wv, tv, wo, to, qkv_blocks, qkv_super, o_blocks, o_super, biases, head_norms,
               norm_eps, shape, cos, sin, rope_mode, q_prescale, cache, slots, positions, window, scale, splits,
               one_row):
    """AttentionLayer for m one-token rows x [m, d]: row i is at positions[i] of sequence slots[i],
    whose key and value it writes to the cache.

    t*: the weights' types and *_blocks / *_super: the activation families they take (constants);
    biases = (q, k, v) or three empty arrays; head_norms = (q_norm, k_norm) or two empty arrays;
    shape = (n_head, n_head_kv, head_dim, head_dim_v); cache = (key cells, key scales, value cells,
    value scales) of this layer, [sequences, n_ctx, ...]; cos/sin: each row's RoPE table row;
    splits: each row's split_cells."""
    n_head, n_head_kv, head_dim, head_dim_v = shape
    m = x.shape[0]
    acts = _activations(x, qkv_blocks, qkv_super)
    q = _product(wq, tq, acts, n_head * head_dim, one_row)
    k = _product(wk, tk, acts, n_head_kv * head_dim, one_row)
    v = _product(wv, tv, acts, n_head_kv * head_dim_v, one_row)
    if biases[0].shape[0]:
        _add_rows(q, biases[0])
        _add_rows(k, biases[1])
        _add_rows(v, biases[2])
    q = q.reshape(m, n_head, head_dim)
    k = k.reshape(m, n_head_kv, head_dim)
    v = v.reshape(m, n_head_kv, head_dim_v)
    if head_norms[0].shape[0]:
        q = rms_norm(q.reshape(m * n_head, head_dim), head_norms[0], norm_eps,
                     np.empty((m * n_head, head_dim), np.float32)).reshape(m, n_head, head_dim)
        k = rms_norm(k.reshape(m * n_head_kv, head_dim), head_norms[1], norm_eps,
                     np.empty((m * n_head_kv, head_dim), np.float32)).reshape(m, n_head_kv, head_dim)
    apply_rope(q, cos, sin, rope_mode)
    apply_rope(k, cos, sin, rope_mode)
    if q_prescale != 1.0:
        _scale(q, np.float32(q_prescale))
    k_cells, k_scales, v_cells, v_scales = cache
    out = np.empty((m, n_head * head_dim_v), np.float32)
    for i in range(m):
        s, pos = slots[i], positions[i]
        kv_store(k_cells[s], k_scales[s], pos, k[i:i + 1])
        kv_store(v_cells[s], v_scales[s], pos, v[i:i + 1])
    if one_row:
        pos = positions[0]
        kc, ks, vc, vs = k_cells[slots[0]], k_scales[slots[0]], v_cells[slots[0]], v_scales[slots[0]]
        _attention_serial(q[0:1].copy(), kc[:pos + 1], ks[:pos + 1], vc[:pos + 1], vs[:pos + 1], pos,
                          window, np.float32(scale), out[0].reshape(1, n_head, head_dim_v), splits[0])
    else:
        _attend_rows(q, k_cells, k_scales, v_cells, v_scales, slots, positions, window, np.float32(scale), out,
                     splits)
    return _product(wo, to, _activations(out, o_blocks, o_super), wo.shape[0], one_row)


@njit(cache=True, parallel=True)
def _attend_rows(q, k_cells, k_scales, v_cells, v_scales, slots, positions, window, scale, out, splits):
    """One-query attention for each of m rows [m, n_head, d], row i over sequence slots[i]'s cells up
    to positions[i]: rows × kv heads in parallel. A single sequence's step runs it serially (a parallel
    region costs more than its nine heads); several sequences' heads fill both cores."""
    m, n_head, _ = q.shape
    n_kv = k_cells.shape[2]
    by_head = out.reshape(m, n_head, -1)
    for task in prange(m * n_kv):
        i, kh = task // n_kv, task % n_kv
        s, pos = slots[i], positions[i]
        attend_task(np.int64(kh), q[i:i + 1], k_cells[s][:pos + 1], k_scales[s][:pos + 1],
                     v_cells[s][:pos + 1], v_scales[s][:pos + 1], pos, window, scale, by_head[i:i + 1], splits[i])


@njit(cache=True, inline="always")
def _feed_forward(x, gate, t_gate, up, t_up, down, t_down, gu_blocks, gu_super, down_blocks, down_super,
                  activation, one_row):
    """FeedForward for m one-token rows x [m, d]: down(act(gate(x)) * up(x)); constants as _attention's."""
    acts = _activations(x, gu_blocks, gu_super)
    g = _product(gate, t_gate, acts, gate.shape[0], one_row)
    u = _product(up, t_up, acts, up.shape[0], one_row)
    if activation == ACT_SILU:
        h = swiglu(g, u)
    else:
        h = geglu(g, u)
    return _product(down, t_down, _activations(h, down_blocks, down_super), down.shape[0], one_row)


class StepKernels(NamedTuple):
    """A block's one-call decode kernels: `step` = x + post(block(pre(x))), `token` = block(x)."""

    step: object
    token: object


@functools.cache
def attention_kernels(tq: int, tk: int, tv: int, to: int, one_row: bool) -> StepKernels:
    """The attention block's kernels for weights of types tq, tk, tv, to, for steps of one row
    (one_row) or of several.

    step(x, norms, eps, wq, wk, wv, wo, biases, head_norms, norm_eps, shape, cos, sin, rope_mode,
    q_prescale, cache, slots, positions, window, scale, splits), norms = (pre, post or empty);
    token: the same without norms and eps. The rest as _attention's."""
    qkv_blocks, qkv_super = not all(map(_is_k, (tq, tk, tv))), any(map(_is_k, (tq, tk, tv)))
    o_blocks, o_super = not _is_k(to), _is_k(to)

    @njit(cache=True)
    def step(x, norms, eps, wq, wk, wv, wo, biases, head_norms, norm_eps, shape, cos, sin, rope_mode, q_prescale,
             cache, slots, positions, window, scale, splits):
        h = rms_norm(x, norms[0], eps, np.empty_like(x))
        return _residual(x, norms, eps, _attention(h, wq, tq, wk, tk, wv, tv, wo, to, qkv_blocks, qkv_super,
                                                   o_blocks, o_super, biases, head_norms, norm_eps, shape, cos, sin,
                                                   rope_mode, q_prescale, cache, slots, positions, window, scale,
                                                   splits, one_row))

    @njit(cache=True)
    def token(x, wq, wk, wv, wo, biases, head_norms, norm_eps, shape, cos, sin, rope_mode, q_prescale, cache,
              slots, positions, window, scale, splits):
        return _attention(x, wq, tq, wk, tk, wv, tv, wo, to, qkv_blocks, qkv_super, o_blocks, o_super, biases,
                          head_norms, norm_eps, shape, cos, sin, rope_mode, q_prescale, cache, slots, positions,
                          window, scale, splits, one_row)

    return StepKernels(step, token)


@functools.cache
def feed_forward_kernels(t_gate: int, t_up: int, t_down: int, activation: int, one_row: bool) -> StepKernels:
    """The feed-forward block's kernels: step(x, norms, eps, gate, up, down), token(x, gate, up, down)."""
    gu_blocks, gu_super = not (_is_k(t_gate) and _is_k(t_up)), _is_k(t_gate) or _is_k(t_up)
    down_blocks, down_super = not _is_k(t_down), _is_k(t_down)

    @njit(cache=True)
    def step(x, norms, eps, gate, up, down):
        h = rms_norm(x, norms[0], eps, np.empty_like(x))
        return _residual(x, norms, eps, _feed_forward(h, gate, t_gate, up, t_up, down, t_down, gu_blocks, gu_super,
                                                      down_blocks, down_super, activation, one_row))

    @njit(cache=True)
    def token(x, gate, up, down):
        return _feed_forward(x, gate, t_gate, up, t_up, down, t_down, gu_blocks, gu_super, down_blocks, down_super,
                             activation, one_row)

    return StepKernels(step, token)

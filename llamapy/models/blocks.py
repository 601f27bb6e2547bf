"""Building blocks shared by the architectures: quantized linear layers, norms, attention, feed-forward.

Every block works on float32 activations [n_tokens, width]; weights stay in their GGUF blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..gguf.reader import GGUFFile
from ..kernels.activations import geglu, swiglu
from ..kernels.attention import attention, attention_plain
from ..kernels.decode import ACT_GELU, ACT_SILU, attention_kernels, feed_forward_kernels
from ..kernels.norm import rms_norm
from ..kernels.rope import apply_rope, rope_tables
from ..numerics import EXACT, Numerics
from ..quants import get_rows, linear
from ..quants._inputs import packed_rows, read_only
from ..quants.products import QuantizedActivations, exact_product, is_exact, quantize_for
from ..quants.types import quant_type
from .batch import Batch


class MissingTensor(ValueError):
    """The GGUF lacks a tensor the architecture needs."""


class Linear:
    """y = x @ W.T with W [n_out, n_in] kept as raw GGUF blocks.

    `Linear.observer`, when set, is called as observer(name, x) with the float32 activations
    entering every named product: how the imatrix collector sees the forward pass.
    """

    observer = None

    def __init__(self, raw: np.ndarray, type_id: int, n_in: int, n_out: int, name: str | None = None,
                 numerics: Numerics = EXACT):
        self.name = name
        self.numerics = numerics  # which of llama.cpp's batch-size choices the product follows
        self.raw = raw
        self.type_id = type_id
        self.n_in = n_in
        self.n_out = n_out
        self.exact = is_exact(type_id)
        # Whether this weight's exact product takes Q8_K activations (registry lookup, once).
        self.super_blocks = quant_type(type_id).exact == "k"
        self.rows = packed_rows(raw, type_id, n_in) if self.exact else raw

    def quantize(self, x: np.ndarray) -> QuantizedActivations | None:
        """x as this weight's 8-bit activation blocks (shareable with weights of the same family)."""
        return quantize_for(self.type_id, np.ascontiguousarray(x, dtype=np.float32)) if self.exact else None

    def __call__(self, x: np.ndarray, act: QuantizedActivations | None = None,
                 batch: Batch | None = None) -> np.ndarray:
        """`batch` says which sequence each row is from, so that each row takes the kernel its own
        sequence's chunk would take alone (default: all rows one sequence)."""
        if Linear.observer is not None and self.name is not None:
            Linear.observer(self.name, x)
        if not self.exact:
            return linear(self.raw, self.type_id, x)
        if act is None or act.super_blocks != self.super_blocks:
            act = self.quantize(x)
        return exact_product(self.rows, self.type_id, act, None if batch is None else batch.rows(), self.numerics)

    def rows_f32(self, ids: np.ndarray) -> np.ndarray:
        """Rows of W as float32: the embedding lookup."""
        return get_rows(self.raw, self.type_id, self.n_in, ids)


class Weights:
    """Named access to a GGUF's tensors, with one clear error for a missing one. Every Linear it
    makes carries the model's numerics profile (numerics.py)."""

    def __init__(self, gguf: GGUFFile, numerics: Numerics = EXACT):
        self.gguf = gguf
        self.numerics = numerics

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def linear(self, name: str) -> Linear:
        info = self._info(name)
        n_in = info.shape[0]
        n_out = info.n_elements // n_in
        return Linear(self.gguf.raw(name), info.type_id, n_in, n_out, name, self.numerics)

    def split_linear(self, name: str, sizes: list[int]) -> list[Linear]:
        """A fused weight (Phi-3's attn_qkv, ffn_up = gate|up) as one Linear per consecutive block of output
        rows: each output is the same row's dot product as in the fused product, so results are unchanged."""
        info = self._info(name)
        n_in, raw = info.shape[0], self.gguf.raw(name)
        if sum(sizes) != raw.shape[0]:
            raise MissingTensor(f"{self.gguf.path}: tensor {name} has {raw.shape[0]} rows, expected {sum(sizes)}")
        bounds = np.cumsum([0, *sizes])
        return [Linear(raw[a:b], info.type_id, n_in, int(b - a), name, self.numerics)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def vector(self, name: str) -> np.ndarray:
        self._info(name)
        return np.ascontiguousarray(self.gguf.array(name), dtype=np.float32)

    def _info(self, name: str):
        info = self.gguf.tensors.get(name)
        if info is None:
            raise MissingTensor(f"{self.gguf.path}: tensor {name} is missing")
        return info


_EMPTY = read_only(np.empty(0, np.float32))  # read-only as the weights: one compiled signature


_ONE_SLOT = np.zeros(1, np.int64)


def step_caches(batch: Batch, layer: int):
    """(the layer's cache arrays with a leading sequence axis, each row's index in it) for a decode
    step's one-call path: one cache, or caches of one pool (KVCache.pooled); None otherwise, or
    when the caches are read by the plain (non-flash) attention."""
    first = batch.segments[0].cache
    if not first.flash_attn:
        return None
    if len(batch.segments) == 1:
        return tuple(a[None] for a in first.layer_arrays(layer)), _ONE_SLOT
    if first.pool is None or any(s.cache.pool is not first.pool for s in batch.segments):
        return None
    return first.pool_arrays(layer), batch.slots()


ONE_CALL_STEPS = True  # off: every decode step block by block (what tests compare the one call with)


def fusable(all_exact: bool) -> bool:
    """Whether a block's one-token pass can run in one call (kernels/decode.py): exact products
    only (all_exact: the block's weights, known once), and no imatrix observer waiting to see each
    product's input."""
    return ONE_CALL_STEPS and Linear.observer is None and all_exact


def norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return rms_norm(x, weight, np.float32(eps), np.empty_like(x))


@dataclass
class AttentionLayer:
    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    rope_mode: int
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    norm_eps: float = 1e-6
    window: int = 0  # sliding window in tokens; 0 = full causal attention
    # Biases added to the q/k/v projections (Qwen2), or None.
    q_bias: np.ndarray | None = None
    k_bias: np.ndarray | None = None
    v_bias: np.ndarray | None = None

    def residual(self, x: np.ndarray, norms: tuple, eps: float, batch: Batch, layer: int, rope: tuple,
                 scale: float, q_prescale: float = 1.0) -> np.ndarray:
        """x + post(self(pre(x))) for the residual stream x, norms = (pre, post or None): a layer's
        attention half, in one numba call for a decode step."""
        pre, post = norms
        caches = self._step_caches(batch, layer)
        if caches is not None:
            return self._kernels(x).step(x, (pre, _EMPTY if post is None else post), np.float32(eps),
                                         *self._step_args(batch, caches, rope, scale, q_prescale))
        h = self(norm(x, pre, eps), batch, layer, rope, scale, q_prescale)
        return x + (h if post is None else norm(h, post, eps))

    def __call__(self, x: np.ndarray, batch: Batch, layer: int, rope: tuple, scale: float,
                 q_prescale: float = 1.0) -> np.ndarray:
        caches = self._step_caches(batch, layer)
        if caches is not None:
            return self._kernels(x).token(x, *self._step_args(batch, caches, rope, scale, q_prescale))
        n = x.shape[0]
        act = self.wq.quantize(x)
        q, k, v = self.wq(x, act, batch), self.wk(x, act, batch), self.wv(x, act, batch)
        if self.q_bias is not None:
            q, k, v = q + self.q_bias, k + self.k_bias, v + self.v_bias
        q = q.reshape(n, self.n_head, self.head_dim)
        k = k.reshape(n, self.n_head_kv, self.head_dim)
        v = v.reshape(n, self.n_head_kv, self.head_dim_v)
        if self.q_norm is not None:
            q = norm(q.reshape(-1, self.head_dim), self.q_norm, self.norm_eps).reshape(q.shape)
            k = norm(k.reshape(-1, self.head_dim), self.k_norm, self.norm_eps).reshape(k.shape)
        cos, sin = rope
        apply_rope(q, cos, sin, self.rope_mode)
        apply_rope(k, cos, sin, self.rope_mode)
        if q_prescale != 1.0:
            q *= np.float32(q_prescale)
        out = np.empty((n, self.n_head, self.head_dim_v), dtype=np.float32)
        for s in batch.segments:
            s.cache.store(layer, s.pos0, k[s.start:s.stop], v[s.start:s.stop])
            cells = s.cache.view(layer, s.pos0 + s.n, s.n)
            if s.cache.flash_attn:
                attention(q[s.start:s.stop], *cells, s.pos0, self.window, np.float32(scale),
                          out[s.start:s.stop], s.cache.n_ctx, self.numerics)
            else:
                attention_plain(q[s.start:s.stop], *cells, s.pos0, self.window, np.float32(scale),
                                out[s.start:s.stop])
        return self.wo(out.reshape(n, -1), batch=batch)

    @property
    def numerics(self) -> Numerics:
        """The model's profile, which its weights carry: whether one-query attention splits as llama.cpp's."""
        return self.wq.numerics

    def _step_caches(self, batch, layer):
        """The caches for the one-call path of a decode step (kernels/decode.py), or None to take the
        block-by-block path."""
        if batch.decode_step and fusable(self._exact):
            return step_caches(batch, layer)
        return None

    @cached_property
    def _exact(self) -> bool:
        return all(w.exact for w in (self.wq, self.wk, self.wv, self.wo))

    @cached_property
    def _kernel_args(self) -> tuple:
        """The one-call kernels' arguments that are this layer's own (weights, shapes): built once."""
        biases = (self.q_bias, self.k_bias, self.v_bias) if self.q_bias is not None else (_EMPTY,) * 3
        norms = (self.q_norm, self.k_norm) if self.q_norm is not None else (_EMPTY,) * 2
        return (self.wq.rows, self.wk.rows, self.wv.rows, self.wo.rows, biases, norms, np.float32(self.norm_eps),
                (self.n_head, self.n_head_kv, self.head_dim, self.head_dim_v))

    def _kernels(self, x):
        return attention_kernels(self.wq.type_id, self.wk.type_id, self.wv.type_id, self.wo.type_id, x.shape[0] == 1)

    def _step_args(self, batch, caches, rope, scale, q_prescale):
        """The one-call kernels' arguments after the input rows (and norms)."""
        arrays, slots = caches
        cos, sin = rope
        return (*self._kernel_args, cos, sin, self.rope_mode, float(q_prescale), arrays, slots, batch.positions(),
                self.window, float(scale), batch.splits(self.numerics))


@dataclass
class FeedForward:
    gate: Linear
    up: Linear
    down: Linear
    activation: str = "silu"  # "silu" → SwiGLU, "gelu" → GeGLU

    def residual(self, x: np.ndarray, norms: tuple, eps: float, batch: Batch | None = None) -> np.ndarray:
        """x + post(self(pre(x))), norms = (pre, post or None): a layer's feed-forward half, in one
        numba call for a decode step."""
        pre, post = norms
        if self._one_call(x, batch):
            return self._kernels(x).step(x, (pre, _EMPTY if post is None else post), np.float32(eps),
                                         self.gate.rows, self.up.rows, self.down.rows)
        h = self(norm(x, pre, eps), batch)
        return x + (h if post is None else norm(h, post, eps))

    def _one_call(self, x, batch) -> bool:
        one_row = batch is None and x.shape[0] == 1
        return (one_row or batch is not None and batch.decode_step) and fusable(self._exact)

    @cached_property
    def _exact(self) -> bool:
        return all(w.exact for w in (self.gate, self.up, self.down))

    def _kernels(self, x):
        return feed_forward_kernels(self.gate.type_id, self.up.type_id, self.down.type_id,
                                    ACT_SILU if self.activation == "silu" else ACT_GELU, x.shape[0] == 1)

    def __call__(self, x: np.ndarray, batch: Batch | None = None) -> np.ndarray:
        if self._one_call(x, batch):
            return self._kernels(x).token(x, self.gate.rows, self.up.rows, self.down.rows)
        gated = swiglu if self.activation == "silu" else geglu
        act = self.gate.quantize(x)
        return self.down(gated(self.gate(x, act, batch), self.up(x, act, batch)), batch=batch)


class RopeCache:
    """cos/sin tables for positions 0..n_ctx-1, one pair per distinct base.

    freq_factors and mscale (rope_freqs, longrope factors and their attention factor) apply to
    every table when given."""

    def __init__(self, n_ctx: int, rope_dim: int, freq_factors: np.ndarray | None = None, mscale: float = 1.0):
        self.n_ctx = n_ctx
        self.rope_dim = rope_dim
        self.freq_factors = freq_factors
        self.mscale = mscale
        self._tables: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def slice(self, base: float, pos0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if base not in self._tables:
            self._tables[base] = rope_tables(np.arange(self.n_ctx), self.rope_dim, base, self.freq_factors,
                                             self.mscale)
        cos, sin = self._tables[base]
        return cos[pos0:pos0 + n], sin[pos0:pos0 + n]

"""The key/value cache: preallocated per layer, filled position by position, in a storage type.

Storage types (-ctk / -ctv, llama.cpp's names): f16 (llama.cpp's default; kept as float16 bits),
f32, q8_0 and q4_0 (blocks of 32 along the head, one scale each). Attention reads any of them
through kernels/kv_access.py.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .kernels.attention import FA_TILE_Q
from .kernels.kv_access import quantize_cells_q4_0, quantize_cells_q8_0


class ContextFull(ValueError):
    """More tokens than the context (-c) holds."""


class CacheType(NamedTuple):
    name: str
    dtype: type
    values_per_cell: int  # quants packed in one stored element
    block: int  # values per scale (0: no scales)

    def bytes_per_value(self) -> float:
        scale_bytes = 2 / self.block if self.block else 0  # llama.cpp stores the scale as float16
        return np.dtype(self.dtype).itemsize / self.values_per_cell + scale_bytes


CACHE_TYPES = {t.name: t for t in (
    CacheType("f16", np.uint16, 1, 0),
    CacheType("f32", np.float32, 1, 0),
    CacheType("q8_0", np.int8, 1, 32),
    CacheType("q4_0", np.uint8, 2, 32),
)}


def cache_type(name: str) -> CacheType:
    t = CACHE_TYPES.get(str(name).lower())
    if t is None:
        raise ValueError(f"unknown KV cache type {name!r} (one of: {', '.join(CACHE_TYPES)})")
    return t


def check_attention(type_v: str, flash_attn: bool) -> None:
    """A quantized V cache is read only by flash attention, as in llama.cpp."""
    if cache_type(type_v).block and not flash_attn:
        raise ValueError(f"a {cache_type(type_v).name} V cache (-ctv) needs flash attention (-fa on or auto), "
                         "as in llama.cpp")


class _Cells:
    """One layer's keys or values in a storage type: cells [n_ctx, heads, d / per_cell] + scales."""

    _NO_SCALES = np.zeros((1, 1, 1), np.float32)  # the stand-in `floats` returns

    def __init__(self, kind: CacheType, n_ctx: int, heads: int, dim: int, n_seq: int | None = None):
        if kind.block and dim % kind.block:
            raise ValueError(f"a {kind.name} KV cache needs a head size that is a multiple of {kind.block}, "
                             f"this model's is {dim}")
        self.kind = kind
        lead = (n_ctx,) if n_seq is None else (n_seq, n_ctx)  # n_seq: a pool, one sequence per index
        # np.zeros maps untouched pages lazily, so memory grows with use, not n_ctx.
        self.cells = np.zeros((*lead, heads, dim // kind.values_per_cell), kind.dtype)
        # One float16 scale per block (its bits), as in ggml's q8_0 / q4_0 blocks.
        self.scales = (np.zeros((*lead, heads, dim // kind.block), np.uint16) if kind.block
                       else np.zeros((*lead[:-1], 1, 1, 1), np.float32))

    @classmethod
    def of_sequence(cls, pool: _Cells, i: int) -> _Cells:
        """Sequence i's cells in a pool (views: writes land in the pool)."""
        one = cls.__new__(cls)
        one.kind, one.cells = pool.kind, pool.cells[i]
        one.scales = pool.scales[i]
        return one

    def store(self, pos0: int, x: np.ndarray) -> None:
        n, name = x.shape[0], self.kind.name
        if name == "f32":
            self.cells[pos0:pos0 + n] = x
        elif name == "f16":
            self.cells[pos0:pos0 + n] = x.astype(np.float16).view(np.uint16)
        elif name == "q8_0":
            quantize_cells_q8_0(np.ascontiguousarray(x), self.cells[pos0:pos0 + n], self.scales[pos0:pos0 + n])
        else:
            quantize_cells_q4_0(np.ascontiguousarray(x), self.cells[pos0:pos0 + n], self.scales[pos0:pos0 + n])

    def view(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cells[:n], self.scales[:n] if self.kind.block else self.scales

    def floats(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions 0..n-1 decoded to float32 (the same values kv_value reads): what a prompt's many
        queries read, where decoding once beats decoding per query."""
        name, cells = self.kind.name, self.cells[:n]
        if name == "f32":
            return cells, self._NO_SCALES
        if name == "f16":
            return cells.view(np.float16).astype(np.float32), self._NO_SCALES
        scales = self.scales[:n, :, :, None].view(np.float16).astype(np.float32)
        if name == "q8_0":
            q = cells.reshape(n, cells.shape[1], -1, 32).astype(np.float32)
        else:
            packed = cells.reshape(n, cells.shape[1], -1, 16)
            q = np.concatenate([packed & 15, packed >> 4], axis=3).astype(np.float32) - 8
        return np.ascontiguousarray((q * scales).reshape(n, cells.shape[1], -1)), self._NO_SCALES


class KVPool(NamedTuple):
    """Per layer, the key and value cells of several sequences side by side."""

    k: list[_Cells]
    v: list[_Cells]


class KVCache:
    """Keys and values of every layer (or of a pipeline stage's layers) for positions 0..n_ctx-1.

    Cells 0..n_past-1 are valid; the next forward pass writes at position n_past. Forgetting the tail
    (trim) only moves n_past back: attention never reads beyond it, so stale cells need no clearing.
    """

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int,
                 first_layer: int = 0, type_k: str = "f16", type_v: str = "f16", flash_attn: bool = True):
        self.n_ctx = n_ctx
        # Read by flash attention (online softmax, llama.cpp's -fa on), or by the plain graph (-fa off).
        self.flash_attn = flash_attn
        # A pipeline stage holds only layers first_layer .. first_layer + n_layer - 1.
        self.first_layer = first_layer
        self.type_k, self.type_v = cache_type(type_k), cache_type(type_v)
        check_attention(self.type_v.name, flash_attn)
        self.k = [_Cells(self.type_k, n_ctx, n_head_kv, head_dim) for _ in range(n_layer)]
        self.v = [_Cells(self.type_v, n_ctx, n_head_kv, head_dim_v) for _ in range(n_layer)]
        self.n_past = 0
        # A cache made by `pooled` is sequence `slot` of shared per-layer arrays (`pool`), which lets
        # one kernel call reach every sequence of a decode step.
        self.pool: KVPool | None = None
        self.slot = 0

    @classmethod
    def pooled(cls, n_seq: int, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int,
               first_layer: int = 0, type_k: str = "f16", type_v: str = "f16",
               flash_attn: bool = True) -> list[KVCache]:
        """n_seq caches whose cells live in one array per layer, [n_seq, n_ctx, ...]: a server's slots."""
        pool = KVPool([_Cells(cache_type(type_k), n_ctx, n_head_kv, head_dim, n_seq) for _ in range(n_layer)],
                      [_Cells(cache_type(type_v), n_ctx, n_head_kv, head_dim_v, n_seq) for _ in range(n_layer)])
        caches = []
        for i in range(n_seq):
            cache = cls(0, n_ctx, n_head_kv, head_dim, head_dim_v, first_layer, type_k, type_v, flash_attn)
            cache.k = [_Cells.of_sequence(layer, i) for layer in pool.k]
            cache.v = [_Cells.of_sequence(layer, i) for layer in pool.v]
            cache.pool, cache.slot = pool, i
            caches.append(cache)
        return caches

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_past

    def nbytes(self) -> int:
        """Bytes the cache holds once every cell is in use."""
        return sum(c.cells.nbytes + (c.scales.nbytes if c.kind.block else 0) for c in self.k + self.v)

    def check_room(self, pos0: int, n: int) -> None:
        if pos0 + n > self.n_ctx:
            raise ContextFull(f"context is full: {pos0 + n} tokens do not fit in a context of {self.n_ctx} (-c)")

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Keys and values [n, heads, d] (float32) of positions pos0.., in the cache's types."""
        i = layer - self.first_layer
        self.k[i].store(pos0, k)
        self.v[i].store(pos0, v)

    def view(self, layer: int, n_filled: int, n_queries: int = 1) -> tuple[np.ndarray, ...]:
        """(key cells, key scales, value cells, value scales) of positions 0..n_filled-1, for
        n_queries queries: decoded to float32 first where that pays or the kernel needs it (64
        queries or more; several over quantized cells or without flash attention, whose kernels
        read cells one value at a time). Flash attention reads float16 cells as they are for fewer
        queries: the same values, and decoding the whole cache per pass cost more than the
        attention itself (2-7x, 20 queries over 500-2000 cells)."""
        i = layer - self.first_layer
        one_by_one = self.type_k.block or self.type_v.block or not self.flash_attn
        if n_queries >= FA_TILE_Q or n_queries > 1 and one_by_one:
            return (*self.k[i].floats(n_filled), *self.v[i].floats(n_filled))
        return (*self.k[i].view(n_filled), *self.v[i].view(n_filled))

    def layer_arrays(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(key cells, key scales, value cells, value scales) of one layer, every position: what a
        kernel that writes and reads the cache itself takes."""
        i = layer - self.first_layer
        return self.k[i].cells, self.k[i].scales, self.v[i].cells, self.v[i].scales

    def pool_arrays(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """layer_arrays of every sequence of the pool, [n_seq, n_ctx, ...] each."""
        i = layer - self.first_layer
        k, v = self.pool.k[i], self.pool.v[i]
        return k.cells, k.scales, v.cells, v.scales

    def trim(self, n: int) -> None:
        """Forget every cached position from n on (llama_memory_seq_rm(seq, n, -1))."""
        if n < 0:
            raise ValueError(f"cannot trim the cache to {n} positions")
        self.n_past = min(self.n_past, n)

    def clear(self) -> None:
        self.n_past = 0

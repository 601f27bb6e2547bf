"""The key/value cache: preallocated per layer, filled position by position."""

from __future__ import annotations

import numpy as np


class ContextFull(ValueError):
    """More tokens than the context (-c) holds."""


class KVCache:
    """Keys and values of every layer for positions 0..n_ctx-1.

    Values are float16-rounded (as llama.cpp's f16 cache) but stored as float32, since numba has no
    float16 on the CPU. np.zeros maps untouched pages lazily, so memory grows with use, not n_ctx.
    Cells 0..n_past-1 are valid; the next forward pass writes at position n_past. Forgetting the tail
    (trim) only moves n_past back: attention never reads beyond it, so stale cells need no clearing.
    """

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, head_dim_v: int,
                 first_layer: int = 0):
        self.n_ctx = n_ctx
        # A pipeline stage holds only layers first_layer .. first_layer + n_layer - 1.
        self.first_layer = first_layer
        self.k = [np.zeros((n_ctx, n_head_kv, head_dim), dtype=np.float32) for _ in range(n_layer)]
        self.v = [np.zeros((n_ctx, n_head_kv, head_dim_v), dtype=np.float32) for _ in range(n_layer)]
        self.n_past = 0

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_past

    def check_room(self, pos0: int, n: int) -> None:
        if pos0 + n > self.n_ctx:
            raise ContextFull(f"context is full: {pos0 + n} tokens do not fit in a context of {self.n_ctx} (-c)")

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        n, i = k.shape[0], layer - self.first_layer
        self.k[i][pos0:pos0 + n] = k
        self.v[i][pos0:pos0 + n] = v

    def view(self, layer: int, n_filled: int) -> tuple[np.ndarray, np.ndarray]:
        i = layer - self.first_layer
        return self.k[i][:n_filled], self.v[i][:n_filled]

    def trim(self, n: int) -> None:
        """Forget every cached position from n on (llama_memory_seq_rm(seq, n, -1))."""
        if n < 0:
            raise ValueError(f"cannot trim the cache to {n} positions")
        self.n_past = min(self.n_past, n)

    def clear(self) -> None:
        self.n_past = 0

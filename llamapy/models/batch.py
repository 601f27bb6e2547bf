"""A forward pass over several sequences at once: which rows of the activations belong to whom.

The rows of x are the sequences' new tokens side by side. Products with weights take all rows at
once (one pass over each weight serves every sequence); attention and the KV cache are per
sequence. A row's arithmetic depends only on its own sequence's chunk, never on what else is in
the batch: each kernel choice that llama.cpp makes by batch size (`tiled_min_batch`, attention's
tiled path) is made here by the size of the row's own segment, so a request batched with others
gives the same logits as alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kv_cache import KVCache


@dataclass(frozen=True)
class Segment:
    cache: KVCache
    pos0: int  # position of the segment's first token in its cache
    start: int  # its rows in x: start .. stop-1
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start


class Batch:
    """Segments of consecutive rows, one per sequence, each extending its own cache."""

    def __init__(self, caches: list[KVCache], lengths: list[int]):
        if len(caches) != len(lengths):
            raise ValueError("one length per cache")
        self.segments: list[Segment] = []
        start = 0
        for cache, n in zip(caches, lengths, strict=True):
            if n <= 0:
                raise ValueError("every sequence in a batch needs at least one token")
            if any(s.cache is cache for s in self.segments):
                raise ValueError("a cache can appear only once in a batch")
            cache.check_room(cache.n_past, n)
            self.segments.append(Segment(cache, cache.n_past, start, start + n))
            start += n
        self.n_rows = start
        self._rows = None
        # What every layer of a pass asks of it, computed once per pass instead of once per layer.
        self.decode_step = all(s.n == 1 for s in self.segments)  # every sequence brings one token
        self._rope: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
        self._positions: np.ndarray | None = None
        self._slots: np.ndarray | None = None
        self._splits: dict[object, np.ndarray] = {}

    @classmethod
    def single(cls, cache: KVCache, n: int) -> Batch:
        return cls([cache], [n])

    def rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per row: its segment's length and its index in it, what batch-size-dependent kernel
        choices look at (None for one sequence: the whole batch is its chunk)."""
        if len(self.segments) == 1:
            return None
        if self._rows is None:  # once per pass, and only for several sequences (not on one's hot path)
            lengths = np.array([s.n for s in self.segments], np.int64)
            self._rows = (np.repeat(lengths, lengths), np.concatenate([np.arange(n) for n in lengths]))
        return self._rows

    def rope(self, tables, base: float) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin rows for every row of x, each at its own sequence's position (once per pass and base)."""
        key = (id(tables), base)
        found = self._rope.get(key)
        if found is None:
            parts = [tables.slice(base, s.pos0, s.n) for s in self.segments]
            if len(parts) == 1:
                found = parts[0]
            else:
                found = (np.ascontiguousarray(np.concatenate([c for c, _ in parts])),
                         np.ascontiguousarray(np.concatenate([s for _, s in parts])))
            self._rope[key] = found
        return found

    def positions(self) -> np.ndarray:
        """Each sequence's first position in this pass."""
        if self._positions is None:
            self._positions = np.array([s.pos0 for s in self.segments], np.int64)
        return self._positions

    def slots(self) -> np.ndarray:
        """Each sequence's slot in its cache pool (KVCache.pooled)."""
        if self._slots is None:
            self._slots = np.array([s.cache.slot for s in self.segments], np.int64)
        return self._slots

    def splits(self, numerics) -> np.ndarray:
        """Each sequence's numerics.split_cells for its one query (a decode step's attention)."""
        found = self._splits.get(numerics)
        if found is None:
            found = np.array([numerics.split_cells(s.pos0, s.cache.n_ctx) for s in self.segments], np.int64)
            self._splits[numerics] = found
        return found

    def n_ctx(self) -> int:
        """The largest context in the batch (for RoPE tables)."""
        return max(s.cache.n_ctx for s in self.segments)

    def commit(self) -> None:
        """Every cache now holds its segment's tokens."""
        for s in self.segments:
            s.cache.n_past = s.pos0 + s.n

    def last_rows(self) -> np.ndarray:
        return np.array([s.stop - 1 for s in self.segments], np.int64)

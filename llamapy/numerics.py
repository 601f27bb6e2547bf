"""The numerics profile: where llamapy's arithmetic follows llama.cpp's choices, in one place.

Every kernel reproduces ggml's AVX2 arithmetic (lane order, fma chains, reductions); the choices
gathered here are the ones llama.cpp makes from the shape of a pass rather than from the data:

- one-query attention over a long KV view is cut into one chunk per thread of its reference run
  (two), each summed apart and merged (`split_kv_min`);
- K-quant products change their arithmetic with the number of tokens: Q6_K takes its tiled
  kernel from `tiled_min_batch` tokens on, Q4_K's repacked gemm takes tokens in groups of
  `gemm_group` and leaves the rest to its gemv (the quant registry holds those figures).

`exact` makes all of them as llama.cpp does: logits equal its AVX2 build's bit for bit, what the
reference tests pin. `fast` drops the emulation where it costs time: no attention split (its merge
is extra work on one thread) and every row of a sequence chunk of two tokens or more takes the batch
arithmetic (the faster one: tests/test_numerics.py holds it to the fidelity bars against
llama.cpp's logits). Either way a row's arithmetic depends only on its own sequence's chunk, so a
request batched with others gives the logits it gives alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KV_PAD = 256  # llama.cpp views its KV cache in multiples of 256 cells


@dataclass(frozen=True)
class Numerics:
    name: str
    split_kv_min: int | None  # one-query attention over a view of this many cells or more is split; None: never
    batch_thresholds: bool  # K-quant arithmetic by llama.cpp's batch thresholds; False: batch arithmetic from 2 tokens

    def split_cells(self, pos0: int, n_ctx: int) -> int:
        """For one query at pos0: the cells its keys are split over as llama.cpp splits them (the KV
        view it would take), or 0 for no split."""
        if self.split_kv_min is None:
            return 0
        n_kv = min(_pad(max(n_ctx, 1)), max(KV_PAD, _pad(pos0 + 1)))
        return n_kv if n_kv >= self.split_kv_min else 0

    def tiled(self, qt, n: int) -> bool:
        """Whether n tokens of one sequence take a type's tiled (batch) arithmetic."""
        return qt.tiled_min_batch is not None and n >= self._tiled_from(qt)

    def _tiled_from(self, qt) -> int:
        return qt.tiled_min_batch if self.batch_thresholds else 2

    def gemm_rows(self, qt, n: int) -> int:
        """How many leading tokens of a batch of n take the repacked gemm (groups of gemm_group)."""
        if not qt.gemm_group:
            return n
        return n - n % qt.gemm_group

    def batched_rows(self, qt, sizes: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Per row: whether its own chunk (of sizes[row] tokens, the row at index[row]) alone would send
        it through the batch arithmetic."""
        if qt.tiled_min_batch is not None:
            return sizes >= self._tiled_from(qt)
        if qt.gemm_group:
            return index < sizes - sizes % qt.gemm_group
        return np.ones(sizes.shape[0], bool)


def _pad(n: int) -> int:
    return (n + KV_PAD - 1) // KV_PAD * KV_PAD


EXACT = Numerics("exact", split_kv_min=512, batch_thresholds=True)
FAST = Numerics("fast", split_kv_min=None, batch_thresholds=False)
PROFILES = {p.name: p for p in (EXACT, FAST)}
DEFAULT = EXACT


def numerics(name: str) -> Numerics:
    """The profile named name, or a ValueError listing the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown numerics profile {name!r}; valid: {', '.join(PROFILES)}") from None

"""Aggregate throughput of N parallel sequences, measured as llama-batched-bench measures it.

For each N: N sequences, each with its own KV cache, take a prompt of `n_prompt` random tokens
together (the prompts of all N in the same forward passes, n_batch tokens of each sequence per
pass), then decode `n_gen` tokens each, one token of every sequence per forward pass. S_PP is
N·n_prompt over the prompt time, S_TG is N·n_gen over the generation time: what one model in memory
delivers to N clients at once. Each row is the median of `reps` runs after a warm-up, the runs of
the different N interleaved.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchedResult:
    n_prompt: int  # PP: prompt tokens per sequence
    n_gen: int  # TG: generated tokens per sequence
    n_parallel: int  # B: sequences
    t_pp: float  # seconds for every prompt
    t_tg: float  # seconds for every generated token

    @property
    def n_kv(self) -> int:
        """Cells used in all: B × (PP + TG)."""
        return self.n_parallel * (self.n_prompt + self.n_gen)

    @property
    def s_pp(self) -> float:
        return self.n_parallel * self.n_prompt / self.t_pp if self.t_pp else 0.0

    @property
    def s_tg(self) -> float:
        return self.n_parallel * self.n_gen / self.t_tg if self.t_tg else 0.0

    @property
    def t(self) -> float:
        return self.t_pp + self.t_tg

    @property
    def s(self) -> float:
        return self.n_kv / self.t if self.t else 0.0


def _forward(model, tokens: list[np.ndarray], caches: list) -> np.ndarray:
    from .server.engine import forward_step

    return forward_step(model, tokens, caches)


def run_once(model, n_prompt: int, n_gen: int, n_parallel: int, n_batch: int, rng: np.random.Generator
             ) -> tuple[float, float]:
    """(prompt seconds, generation seconds) of one run from empty caches."""
    n_vocab = model.config.n_vocab
    caches = model.new_caches(n_parallel, max(n_prompt + n_gen, 1))
    prompts = rng.integers(0, n_vocab, size=(n_parallel, n_prompt))
    start = time.perf_counter()
    for i in range(0, n_prompt, n_batch):
        _forward(model, [p[i:i + n_batch] for p in prompts], caches)
    t_pp = time.perf_counter() - start
    tokens = rng.integers(0, n_vocab, size=(n_gen, n_parallel))
    start = time.perf_counter()
    for step in range(n_gen):
        _forward(model, [tokens[step, j:j + 1] for j in range(n_parallel)], caches)
    return t_pp, time.perf_counter() - start


def check_sweep(n_prompt: int, n_gen: int, parallels: list[int], reps: int) -> None:
    """ValueError for a sweep that cannot run (before anything is measured or printed)."""
    if min(parallels) < 1:
        raise ValueError(f"-np must be at least 1, got {min(parallels)}")
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise ValueError("each sequence needs prompt or generated tokens (-p, -n)")
    if reps < 1:
        raise ValueError(f"-r must be at least 1, got {reps}")


def batched_sweep(model, n_prompt: int, n_gen: int, parallels: list[int], n_batch: int = 512, reps: int = 3,
                  warmup: bool = True, seed: int = 0) -> list[BatchedResult]:
    """The rows of llama-batched-bench for each N in parallels: N sequences of n_prompt + n_gen tokens.

    The repetitions take the N in turn (N=1, N=4, N=1, N=4, ...) rather than all of one N first, so
    that a slow spell of a shared machine falls on every row alike and their ratios hold."""
    check_sweep(n_prompt, n_gen, parallels, reps)
    rng = np.random.default_rng(seed)
    if warmup:
        for n in parallels:
            run_once(model, min(n_prompt, 8), min(n_gen, 2), n, n_batch, rng)
    runs = [[] for _ in parallels]  # by position: a count given twice (-np 4,4) is two rows, as before
    for _ in range(reps):
        for row, n in zip(runs, parallels, strict=True):
            row.append(run_once(model, n_prompt, n_gen, n, n_batch, rng))
    return [BatchedResult(n_prompt, n_gen, n, statistics.median(r[0] for r in row),
                          statistics.median(r[1] for r in row)) for row, n in zip(runs, parallels, strict=True)]


HEADER = ("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n"
          "|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n")


def table_row(r: BatchedResult) -> str:
    """One row of llama-batched-bench's table."""
    return (f"| {r.n_prompt:5d} | {r.n_gen:6d} | {r.n_parallel:4d} | {r.n_kv:6d} | {r.t_pp:8.3f} | {r.s_pp:8.2f} | "
            f"{r.t_tg:8.3f} | {r.s_tg:8.2f} | {r.t:8.3f} | {r.s:8.2f} |\n")

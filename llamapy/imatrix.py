"""Importance matrices, as llama-imatrix computes and stores them.

For every matrix multiply of the forward pass whose weight is a layer tensor (`blk.*`), the squared
activations entering it are summed per input column over all evaluated tokens; `quantize --imatrix`
divides the sums by the token count and uses the means as the weights of its search.

The text is cut into chunks of n_ctx tokens (BOS first, when the model wants one) and evaluated in
llama.cpp's batch layout: batch/n_ctx chunks side by side, stepped through in 512-token ubatches
(perplexity.py has the layout), so the tokens reach the sums in llama-imatrix's order and the
float32 sums come out the same.  Saved in llama.cpp's imatrix GGUF layout: `<weight>.in_sum2` (the
sums) and `<weight>.counts` per weight, names sorted, with `imatrix.datasets`, `imatrix.chunk_count`
and `imatrix.chunk_size`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from .gguf.reader import ARRAY, STRING, UINT32, GGUFFile
from .gguf.writer import AtomicGGUFWriter, TensorSpec, encode_kv
from .models.blocks import Linear
from .perplexity import chunks_per_pass, count_chunks, pass_sizes, tokenize_text, tokens_per_step
from .quants.types import F32

MIN_TOKENS = 16  # llama-imatrix ignores products of fewer rows


@njit(cache=True)
def _add_squares(x, acc):
    """acc[j] += x[r, j]^2, token after token in float32, as llama-imatrix's loop."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            acc[j] += x[r, j] * x[r, j]


@dataclass
class ImatrixCollector:
    """Linear.observer that sums squared activations per weight."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, name: str, x: np.ndarray) -> None:
        if not name.startswith("blk.") or x.shape[0] < MIN_TOKENS:
            return
        acc = self.sums.get(name)
        if acc is None:
            acc = self.sums[name] = np.zeros(x.shape[1], np.float32)
        _add_squares(np.ascontiguousarray(x, dtype=np.float32), acc)
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]


@dataclass
class ChunkDone:
    index: int
    total: int


def collect(model, text: str, n_ctx: int = 512, n_batch: int = 2048, max_chunks: int | None = None,
            collector: ImatrixCollector | None = None) -> Iterator[ChunkDone]:
    """Evaluate the chunks of `text`, feeding `collector`; yields after each pass of chunks."""
    tokens = tokenize_text(model, text)
    n_chunks = count_chunks(len(tokens), n_ctx, max_chunks)
    collector = collector if collector is not None else ImatrixCollector()
    n_seq = chunks_per_pass(n_ctx, n_batch)
    caches = [model.new_cache(n_ctx) for _ in range(min(n_seq, n_chunks))]
    passes = pass_sizes(n_chunks, n_ctx, n_batch)
    previous, Linear.observer = Linear.observer, collector
    try:
        for first in range(0, n_chunks, n_seq):
            n_in_pass = passes[first]
            chunks = [tokens[(first + s) * n_ctx:(first + s + 1) * n_ctx].copy() for s in range(n_in_pass)]
            for chunk, cache in zip(chunks, caches, strict=False):
                if model.tokenizer.add_bos:
                    chunk[0] = model.tokenizer.bos_id
                cache.n_past = 0
            step = tokens_per_step(n_ctx, n_batch, n_in_pass)
            for start in range(0, n_ctx, step):
                for chunk, cache in zip(chunks, caches, strict=False):
                    model.forward(chunk[start:start + step], cache)
            yield ChunkDone(first + n_in_pass, n_chunks)
    finally:
        Linear.observer = previous


def save_imatrix(path: str | os.PathLike, collector: ImatrixCollector, datasets: list[str], chunk_count: int,
                 chunk_size: int) -> None:
    """Write the sums in llama.cpp's imatrix GGUF layout (atomically)."""
    kv = [
        encode_kv("general.type", "imatrix", STRING),
        encode_kv("imatrix.datasets", datasets, ARRAY, STRING),
        encode_kv("imatrix.chunk_count", chunk_count, UINT32),
        encode_kv("imatrix.chunk_size", chunk_size, UINT32),
    ]
    names = sorted(collector.sums)
    specs, data = [], []
    for name in names:
        sums = collector.sums[name]
        specs += [TensorSpec(f"{name}.in_sum2", (sums.shape[0],), F32), TensorSpec(f"{name}.counts", (1,), F32)]
        data += [sums, np.array([collector.counts[name]], np.float32)]
    with AtomicGGUFWriter(path, kv, specs) as writer:
        for d in data:
            writer.write_tensor(d)


def load_imatrix(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The per-column means (sums / count, in float32 as llama-quantize) of an imatrix GGUF, and its
    metadata (datasets, chunk_count, chunk_size)."""
    with GGUFFile(path) as g:
        sums = {n[: -len(".in_sum2")]: n for n in g.tensors if n.endswith(".in_sum2")}
        if not sums:
            raise ValueError(f"{path}: no <tensor>.in_sum2 entries: not an imatrix GGUF file")
        means = {}
        for name, sums_name in sums.items():
            counts_name = f"{name}.counts"
            if counts_name not in g.tensors:
                raise ValueError(f"{path}: {sums_name} has no {counts_name}")
            values = np.array(g.array(sums_name), dtype=np.float32).reshape(-1)
            counts = np.rint(np.array(g.array(counts_name), dtype=np.float32).reshape(-1))
            per = values.reshape(counts.shape[0], -1)
            out = np.ones_like(per)
            for j, count in enumerate(counts):
                if count > 0:
                    out[j] = per[j] / np.float32(count)
            if not np.all(np.isfinite(out)):
                raise ValueError(f"{path}: imatrix entry {name} contains non-finite values")
            means[name] = out.reshape(-1)
        datasets = g.kv.get("imatrix.datasets", [])
        meta = {"datasets": [str(d) for d in datasets], "chunk_count": int(g.kv.get("imatrix.chunk_count", 0)),
                "chunk_size": int(g.kv.get("imatrix.chunk_size", 0))}
    return means, meta


ProgressFn = Callable[[ChunkDone], None]

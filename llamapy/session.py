"""One sequence's state: a KV cache and the tokens behind it, kept across calls.

A Session is what a conversation (chat), a server slot or a repeated `Model.generate` holds on to.
Position i of the cache holds token `tokens[i]`; everything else follows from that invariant:

- `prefill(ids)` makes the cache hold exactly `ids`, reusing the longest common prefix with what is
  cached (llama-server's cache_prompt) and evaluating only the rest;
- `trim(n)` forgets everything from position n on;
- `feed(ids, pos)` evaluates ids at an explicit position (default: the end), for decode steps.

Sessions never share a cache, and a session does nothing on its own: the caller drives `feed`, so a
scheduler can later interleave (or batch) the steps of several sessions on the one model thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .kv_cache import ContextFull


@dataclass
class Prefill:
    logits: np.ndarray  # [n_vocab] float32: what follows the last prompt token
    n_reused: int  # prompt tokens found in the cache
    n_evaluated: int  # prompt tokens run through the model
    seconds: float


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if len(differ) else n


class Session:
    """One KV cache of n_ctx positions and the token history it holds."""

    def __init__(self, model, n_ctx: int, n_batch: int = 512, cache=None):
        """cache: one already made for it (of n_ctx positions), else a new one."""
        if n_ctx <= 0:
            raise ValueError(f"context size must be positive, got {n_ctx}")
        if n_batch <= 0:
            raise ValueError(f"batch size must be positive, got {n_batch}")
        self.model = model
        self.cache = cache if cache is not None else model.new_cache(n_ctx)
        self.n_batch = n_batch
        self.tokens: list[int] = []

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.n_ctx - len(self.tokens)

    def trim(self, n: int) -> None:
        """Forget cached tokens from position n on."""
        if n < 0:
            raise ValueError(f"cannot trim a session to {n} tokens")
        del self.tokens[n:]
        self.cache.trim(len(self.tokens))

    def clear(self) -> None:
        self.trim(0)

    def feed(self, ids: list[int], pos: int | None = None) -> np.ndarray:
        """Evaluate ids at positions pos.. (default: after the cached tokens); logits of the last one.

        A pos before the end forgets the cached tokens from pos on first.
        """
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("nothing to evaluate")
        if pos is not None:
            if not 0 <= pos <= len(self.tokens):
                raise ValueError(f"position {pos} is outside the cached range 0..{len(self.tokens)}")
            self.trim(pos)
        self.cache.check_room(len(self.tokens), len(ids))
        logits = None
        # -b is the most tokens per call, -ub the most per forward pass (llama.cpp's batch and ubatch).
        options = getattr(self.model, "options", None)
        step = min(self.n_batch, options.n_ubatch) if options is not None else self.n_batch
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            # The token list is the truth: an interrupted pass (Ctrl-C) may have moved n_past or not.
            self.cache.n_past = len(self.tokens)
            logits = self.model.forward(chunk, self.cache)
            self.tokens += chunk
        return logits[-1]

    def prefill(self, ids: list[int]) -> Prefill:
        """Make the cache hold exactly ids, evaluating only what it does not already hold."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) > self.n_ctx:
            raise ContextFull(f"the prompt has {len(ids)} tokens, more than the context holds ({self.n_ctx}, -c)")
        # At least the last token is evaluated again: its logits are what the caller samples from.
        n_keep = min(common_prefix(self.tokens, ids), len(ids) - 1)
        start = time.perf_counter()
        logits = self.feed(ids[n_keep:], pos=n_keep)
        return Prefill(logits, n_keep, len(ids) - n_keep, time.perf_counter() - start)

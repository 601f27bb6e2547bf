"""llama.cpp's default sampler chain, vectorised over the vocabulary.

Order as llama.cpp's common sampler: repetition penalties → top-k → top-p → min-p → temperature →
draw. temp <= 0 is greedy. Each step works on a short candidate list after top-k, never per token
of the vocabulary in Python.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None


class Sampler:
    def __init__(self, params: SamplingParams = SamplingParams()):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.recent: deque[int] = deque(maxlen=max(params.repeat_last_n, 0) or None)

    def accept(self, token: int) -> None:
        """Remember a token (prompt or generated) for the repetition penalties."""
        if self.params.repeat_last_n:
            self.recent.append(int(token))

    def sample(self, logits: np.ndarray) -> int:
        p = self.params
        logits = self._penalise(np.asarray(logits, dtype=np.float32))
        if p.temp <= 0:
            return int(np.argmax(logits))
        ids, values = top_k(logits, p.top_k)
        keep = top_p_count(values, p.top_p)
        ids, values = ids[:keep], values[:keep]
        keep = min_p_count(values, p.min_p)
        ids, values = ids[:keep], values[:keep]
        probs = softmax(values / np.float32(p.temp))
        return int(ids[self.rng.choice(len(ids), p=probs)])

    def _penalise(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        if not self.recent or (p.repeat_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty):
            return logits
        ids, counts = np.unique(np.fromiter(self.recent, dtype=np.int64), return_counts=True)
        logits = logits.copy()
        seen = logits[ids]
        seen = np.where(seen > 0, seen / p.repeat_penalty, seen * p.repeat_penalty)
        logits[ids] = seen - counts * p.frequency_penalty - p.presence_penalty
        return logits


def softmax(values: np.ndarray) -> np.ndarray:
    e = np.exp(values.astype(np.float64) - values.max())
    return e / e.sum()


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits, sorted descending (k <= 0 keeps the whole vocabulary)."""
    if 0 < k < len(logits):
        ids = np.argpartition(logits, -k)[-k:]
    else:
        ids = np.arange(len(logits))
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    return ids, logits[ids]


def top_p_count(sorted_values: np.ndarray, p: float) -> int:
    """How many of the sorted candidates to keep so that their probability reaches p."""
    if p >= 1.0:
        return len(sorted_values)
    cumulative = np.cumsum(softmax(sorted_values))
    return int(min(np.searchsorted(cumulative, p) + 1, len(sorted_values)))


def min_p_count(sorted_values: np.ndarray, min_p: float) -> int:
    """Keep candidates whose probability is at least min_p times the best one's."""
    if min_p <= 0.0:
        return len(sorted_values)
    threshold = sorted_values[0] + np.log(min_p)
    return max(1, int(np.count_nonzero(sorted_values >= threshold)))

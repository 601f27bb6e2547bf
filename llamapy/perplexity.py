"""Perplexity, KL-divergence and HellaSwag scores of a model on a text, the way llama-perplexity computes them.

Perplexity: the tokenized text is cut into chunks of n_ctx tokens; each chunk is evaluated in a fresh
context and only its second half is scored, so that every scored token has at least n_ctx/2 tokens of
context. PPL = exp(mean negative log-likelihood) over all scored tokens.

KL-divergence: a base model's predictions on the same chunks are saved once (`BaseLogProbs`, an .npz
holding each scored position's most likely tokens and a sample of the others), and another model is
compared against them.

Everything here returns numbers or yields progress; printing is left to the command.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

# llama.cpp evaluates at most this many tokens per graph (its default ubatch); our kernels change
# numerics with the batch size as its kernels do, so batching the same way reproduces its logits.
UBATCH = 512
BASE_FORMAT = "llamapy-kl-base/1"
DEFAULT_TOP_K = 64
MIN_CTX = 4  # below this a chunk has fewer than two scored tokens and no error estimate


class TextTooShort(ValueError):
    """The text has fewer tokens than two contexts."""


class BadBaseFile(ValueError):
    """A --kl-divergence-base file that is missing pieces or does not fit the model."""


# --- numbers shared by every mode -------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _row_log_sum_exp(logits):
    n, n_vocab = logits.shape
    out = np.empty(n, np.float64)
    for r in prange(n):
        top = logits[r, 0]
        for j in range(1, n_vocab):
            top = max(top, logits[r, j])
        total = 0.0
        for j in range(n_vocab):
            total += math.exp(np.float64(logits[r, j] - top))
        out[r] = np.float64(top) + math.log(total)
    return out


def log_sum_exp(logits: np.ndarray) -> np.ndarray:
    """log Σ exp(logits) per row, in float64 (the normalizer of every log-prob below)."""
    return _row_log_sum_exp(np.ascontiguousarray(logits, dtype=np.float32))


def target_log_probs(logits: np.ndarray, targets: np.ndarray, lse: np.ndarray | None = None) -> np.ndarray:
    """log p(targets[i]) under row i of logits, float64."""
    lse = log_sum_exp(logits) if lse is None else lse
    picked = np.take_along_axis(logits, np.asarray(targets, np.int64)[:, None], axis=1)[:, 0]
    return picked.astype(np.float64) - lse


@dataclass
class NllSums:
    """Running sums of per-token negative log-likelihoods, enough for PPL and its error."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, nll: np.ndarray) -> None:
        self.count += len(nll)
        self.total += float(np.sum(nll))
        self.total_sq += float(np.sum(np.square(nll)))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def ppl(self) -> float:
        return math.exp(self.mean)

    @property
    def ppl_err(self) -> float:
        """Standard error of the mean NLL carried through exp (d ppl = ppl · d mean)."""
        return self.ppl * standard_error(self.total, self.total_sq, self.count)


def standard_error(total: float, total_sq: float, count: int) -> float:
    """Standard error of a mean from its sums; 0 where the sample is too small to tell (as llama.cpp)."""
    if count <= 1:
        return 0.0
    mean = total / count
    variance = total_sq / count - mean * mean
    return math.sqrt(variance / (count - 1)) if variance > 0 else 0.0


# --- chunks ------------------------------------------------------------------------------------------


def tokenize_text(model, text: str) -> np.ndarray:
    """The whole text as token ids: BOS as the model wants it, special-token text left as plain text
    (llama-perplexity does not parse special tokens in its input)."""
    return np.asarray(model.tokenize(text, special=False), dtype=np.int64)


def count_chunks(n_tokens: int, n_ctx: int, max_chunks: int | None = None) -> int:
    """How many whole n_ctx chunks to score: all of them, or at most max_chunks (when > 0)."""
    if n_ctx < MIN_CTX:
        raise ValueError(f"context size must be at least {MIN_CTX} tokens for perplexity, got {n_ctx} (-c)")
    if n_tokens < 2 * n_ctx:
        raise TextTooShort(
            f"the text has only {n_tokens} token{'' if n_tokens == 1 else 's'}; "
            f"a context of {n_ctx} needs at least {2 * n_ctx} (lower -c)"
        )
    available = n_tokens // n_ctx
    return available if max_chunks is None or max_chunks <= 0 else min(max_chunks, available)


def first_scored(n_ctx: int) -> int:
    """Positions first_scored .. n_ctx-2 are scored, each predicting its successor."""
    return n_ctx // 2


def chunks_per_pass(n_ctx: int, n_batch: int) -> int:
    """llama.cpp evaluates this many chunks side by side, as separate sequences of one batch."""
    if n_batch <= 0:
        raise ValueError(f"batch size must be positive, got {n_batch} (-b)")
    return max(1, n_batch // n_ctx)


def tokens_per_step(n_ctx: int, n_batch: int, n_in_pass: int) -> int:
    """How many of a chunk's tokens go through the model at once, as in llama.cpp.

    llama.cpp cuts each batch into ubatches of at most 512 tokens; with several chunks in a batch each
    ubatch takes an equal share of every chunk (so -c 128 advances each chunk 32 tokens at a time,
    but 128 in a last pass of only 3 chunks). Attention rounds differently below 64 queries per
    sequence, so taking the same steps reproduces its numbers.
    """
    n_seq = chunks_per_pass(n_ctx, n_batch)
    ubatch = min(UBATCH, n_batch, n_seq * n_ctx)
    if n_seq == 1:
        return ubatch
    return max(1, min(n_ctx, ubatch // n_in_pass))


def pass_sizes(n_chunks: int, n_ctx: int, n_batch: int) -> list[int]:
    """For every chunk, how many chunks share its pass (the last pass may be short)."""
    n_seq = chunks_per_pass(n_ctx, n_batch)
    return [min(n_seq, n_chunks - i + i % n_seq) for i in range(n_chunks)]


def forward_rows(model, ids: np.ndarray, cache, start: int) -> np.ndarray:
    """Extend the cache with ids; logits of ids[start:] only, float32 [len(ids) - start, n_vocab]."""
    if start >= len(ids):
        model.forward(ids, cache)
        return np.zeros((0, model.config.n_vocab), np.float32)
    # Only the scored rows go through the output head, as llama.cpp's output mask does: the head is
    # the largest matrix of a small model, and it works row by row, so the logits are unchanged.
    return model.forward(ids, cache, logits_from=start)


def scored_logits(model, chunk: np.ndarray, cache, step: int, out: np.ndarray) -> np.ndarray:
    """Evaluate one chunk from an empty cache, step tokens at a time; the logits at its scored positions
    go into out [n_ctx-1-first, n_vocab], reused from chunk to chunk (a Gemma chunk of 512 has 255
    rows of 262,144 logits: 267 MB that need not be allocated again each time)."""
    n_ctx = len(chunk)
    first, last = first_scored(n_ctx), n_ctx - 2
    chunk = chunk.copy()
    if model.tokenizer.add_bos:
        # Every chunk starts as a document would, so the model is not scored mid-sentence without BOS.
        chunk[0] = model.tokenizer.bos_id
    cache.n_past = 0
    for start in range(0, n_ctx, step):
        logits = forward_rows(model, chunk[start:start + step], cache, max(0, first - start))
        row = max(first, start) - first
        n_rows = max(0, min(len(logits), last + 1 - first - row))
        out[row:row + n_rows] = logits[:n_rows]
    return out


def scored_buffer(model, n_ctx: int) -> np.ndarray:
    return np.empty((n_ctx - 1 - first_scored(n_ctx), model.config.n_vocab), np.float32)


@dataclass
class ScoredChunk:
    """One chunk's outcome: index counts from 1; running_ppl is the PPL over chunks 1..index."""

    index: int
    n_chunks: int
    nll: np.ndarray
    running_ppl: float
    running_err: float


def perplexity(model, tokens: np.ndarray, n_ctx: int, n_batch: int = 2048, max_chunks: int | None = None,
               recorder: BaseRecorder | None = None) -> Iterator[ScoredChunk]:
    """Score the chunks of tokens one by one; the last yielded running_ppl is the final estimate.
    A recorder, if given, keeps what --kl-divergence-base saves."""
    n_chunks = count_chunks(len(tokens), n_ctx, max_chunks)
    passes = pass_sizes(n_chunks, n_ctx, n_batch)
    cache = model.new_cache(n_ctx)
    logits = scored_buffer(model, n_ctx)
    first = first_scored(n_ctx)
    sums = NllSums()
    for i in range(n_chunks):
        chunk = np.asarray(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=np.int64)
        scored_logits(model, chunk, cache, tokens_per_step(n_ctx, n_batch, passes[i]), logits)
        lse = log_sum_exp(logits)
        nll = -target_log_probs(logits, chunk[first + 1:], lse)
        sums.add(nll)
        if recorder is not None:
            recorder.add(logits, lse, nll)
        yield ScoredChunk(i + 1, n_chunks, nll, sums.ppl, sums.ppl_err)


# --- KL-divergence: the base model's predictions ----------------------------------------------------
#
# llama.cpp saves the base's whole distribution at every scored position (2 bytes a token: gigabytes
# for a full run). We keep per position the k most likely tokens exactly, plus a sample of the rest
# drawn in proportion to the base's probabilities. The head of the KL sum is then exact; the tail is
# counted as one merged outcome (exact, computed from both models' leftover mass) plus a small
# correction for the spread of log-ratios inside the tail, estimated from the sample. On SmolLM2
# Q4_1 against Q8_0 with 64 + 64 tokens this lands within 0.2 % of the full-vocabulary mean KLD.


def top_k_log_probs(logits: np.ndarray, lse: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely tokens per row (ids int32, log-probs float32), most likely first; ties go to
    the lower id, so column 0 is each row's argmax."""
    k = min(k, logits.shape[1])
    ids = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(logits, ids, axis=1)
    order = np.lexsort((ids, -values), axis=1)
    ids = np.take_along_axis(ids, order, axis=1).astype(np.int32)
    return ids, log_probs_at(logits, lse, ids)


def log_probs_at(logits: np.ndarray, lse: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Log-probs of the given ids per row, rounded to float32 as they are stored: both sides of a
    comparison go through the same rounding, so a model against itself differs by exactly zero."""
    picked = np.take_along_axis(logits, ids.astype(np.int64), axis=1).astype(np.float64)
    return (picked - lse[:, None]).astype(np.float32)


@njit(cache=True, parallel=True)
def _tail_sample(logits, lse, top_ids, n_samples):
    n, n_vocab = logits.shape
    out = np.empty((n, n_samples), np.int32)
    for r in prange(n):
        in_top = np.zeros(n_vocab, np.bool_)
        for t in range(top_ids.shape[1]):
            in_top[top_ids[r, t]] = True
        tail_mass = 0.0
        for j in range(n_vocab):
            if not in_top[j]:
                tail_mass += math.exp(np.float64(logits[r, j]) - lse[r])
        # Systematic sampling: one draw at the middle of each of n_samples equal slices of the tail's
        # mass, walking the vocabulary in id order. Deterministic, so base files are reproducible.
        stride = tail_mass / n_samples
        mark = 0.5 * stride
        seen = 0.0
        taken = 0
        last = 0
        for j in range(n_vocab):
            if in_top[j]:
                continue
            last = j
            seen += math.exp(np.float64(logits[r, j]) - lse[r])
            while taken < n_samples and seen > mark:
                out[r, taken] = j
                taken += 1
                mark += stride
        for s in range(taken, n_samples):  # rounding can leave the last slice unclaimed
            out[r, s] = last
    return out


def tail_sample(logits: np.ndarray, lse: np.ndarray, top_ids: np.ndarray, n_samples: int) -> np.ndarray:
    """n_samples token ids per row from outside top_ids, each slice of equal probability mass giving one."""
    return _tail_sample(np.ascontiguousarray(logits, dtype=np.float32), lse, top_ids, n_samples)


@dataclass
class BaseLogProbs:
    """The base model's view of every scored position, as saved by --kl-divergence-base.

    tokens: the chunks' tokens [n_chunks * n_ctx]. top_ids/top_log_probs: [n_chunks, n_scored, k], most
    likely first. tail_ids/tail_log_probs: [n_chunks, n_scored, s], the sample of the other tokens.
    target_log_probs: the log-prob of the token that follows [n_chunks, n_scored] (exact).
    """

    n_ctx: int
    n_vocab: int
    tokens: np.ndarray
    top_ids: np.ndarray
    top_log_probs: np.ndarray
    tail_ids: np.ndarray
    tail_log_probs: np.ndarray
    target_log_probs: np.ndarray

    ARRAYS = ("tokens", "top_ids", "top_log_probs", "tail_ids", "tail_log_probs", "target_log_probs")

    @property
    def n_chunks(self) -> int:
        return self.top_ids.shape[0]

    @property
    def top_k(self) -> int:
        return self.top_ids.shape[2]

    def save(self, path: str | os.PathLike) -> None:
        # Written beside the target and renamed: an interrupted run leaves no half file to compare against.
        tmp = f"{path}.part"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, format=np.array(BASE_FORMAT), n_ctx=np.int64(self.n_ctx),
                                n_vocab=np.int64(self.n_vocab), **{a: getattr(self, a) for a in self.ARRAYS})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseLogProbs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"KL-divergence base file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                found = str(data["format"])
                if found != BASE_FORMAT:
                    raise BadBaseFile(f"{path}: base file format {found!r}, expected {BASE_FORMAT!r}")
                base = cls(int(data["n_ctx"]), int(data["n_vocab"]), *(data[a] for a in cls.ARRAYS))
        except BadBaseFile:
            raise
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise BadBaseFile(f"{path}: not a KL-divergence base file written by llamapy ({e})") from None
        base.check_shapes(path)
        return base

    def check_shapes(self, path) -> None:
        scored = (self.n_chunks, self.n_ctx - 1 - first_scored(self.n_ctx))
        if (self.top_ids.shape[:2] != scored or self.tail_ids.shape[:2] != scored
                or self.top_log_probs.shape != self.top_ids.shape or self.tail_log_probs.shape != self.tail_ids.shape
                or self.target_log_probs.shape != scored or len(self.tokens) != self.n_chunks * self.n_ctx):
            raise BadBaseFile(f"{path}: inconsistent array shapes; the file is damaged")


class BaseRecorder:
    """Collects the base model's chunks, as perplexity() scores them, into a BaseLogProbs."""

    def __init__(self, tokens: np.ndarray, n_ctx: int, n_vocab: int, top_k: int = DEFAULT_TOP_K,
                 tail_samples: int | None = None):
        if top_k <= 0:
            raise ValueError(f"tokens kept per position for the KL base must be positive, got {top_k}")
        self.tokens, self.n_ctx, self.n_vocab = tokens, n_ctx, n_vocab
        self.top_k = min(top_k, n_vocab)
        self.tail_samples = top_k if tail_samples is None else tail_samples
        self.parts: dict[str, list] = {a: [] for a in BaseLogProbs.ARRAYS[1:]}

    def add(self, logits: np.ndarray, lse: np.ndarray, nll: np.ndarray) -> None:
        """One chunk's scored logits, their log-sum-exp and the NLL of each actual next token."""
        top_ids, top_lp = top_k_log_probs(logits, lse, self.top_k)
        tail_ids = tail_sample(logits, lse, top_ids, self.tail_samples)
        for name, value in zip(BaseLogProbs.ARRAYS[1:], (
                top_ids, top_lp, tail_ids, log_probs_at(logits, lse, tail_ids), (-nll).astype(np.float32)),
                strict=True):
            self.parts[name].append(value)

    def finish(self) -> BaseLogProbs:
        n = len(self.parts["top_ids"])
        tokens = np.asarray(self.tokens[:n * self.n_ctx], dtype=np.int32)
        return BaseLogProbs(self.n_ctx, self.n_vocab, tokens, *(np.stack(v) for v in self.parts.values()))


# --- KL-divergence: comparing a model against the base ----------------------------------------------


def kl_divergence_at(base: BaseLogProbs, chunk: int, logits: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """KL(base ‖ model) at each scored position of one chunk, float64."""
    lp_base = base.top_log_probs[chunk].astype(np.float64)
    lp_model = log_probs_at(logits, lse, base.top_ids[chunk]).astype(np.float64)
    p_base = np.exp(lp_base)
    head = np.sum(p_base * (lp_base - lp_model), axis=1)
    tail_base = np.clip(1.0 - p_base.sum(axis=1), 0.0, 1.0)
    tail_model = np.clip(1.0 - np.exp(lp_model).sum(axis=1), 1e-15, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        merged = np.where(tail_base > 0, tail_base * (np.log(tail_base) - np.log(tail_model)), 0.0)
    return head + merged + tail_base * tail_spread(base, chunk, logits, lse)


def tail_spread(base: BaseLogProbs, chunk: int, logits: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """What merging the tail into one outcome hides, per unit of tail mass: E[d] + log E[exp(-d)] over
    the base's tail distribution, d the log-ratio base/model of a token. It is 0 when d is the same for
    every tail token and about Var(d)/2 otherwise; the sample's estimate is scaled by s/(s-1) to undo
    the plug-in bias of a variance from s draws."""
    n_samples = base.tail_ids.shape[2]
    if n_samples < 2:
        return np.zeros(logits.shape[0])
    d = base.tail_log_probs[chunk].astype(np.float64) - log_probs_at(logits, lse, base.tail_ids[chunk])
    spread = d.mean(axis=1) + np.log(np.mean(np.exp(-d), axis=1))
    return np.maximum(spread, 0.0) * n_samples / (n_samples - 1)


@dataclass
class KlSums:
    """Running sums over scored positions for every KL-mode statistic (the model is Q, the base is base);
    NllSums double as plain sum and sum-of-squares counters for KLD and Δp."""

    nll: NllSums = field(default_factory=NllSums)
    nll_base: NllSums = field(default_factory=NllSums)
    nll_cross: float = 0.0
    kld: NllSums = field(default_factory=NllSums)
    p_diff: NllSums = field(default_factory=NllSums)
    p_diff_sq: NllSums = field(default_factory=NllSums)
    same_top: int = 0
    kld_values: list = field(default_factory=list, repr=False)
    p_diff_values: list = field(default_factory=list, repr=False)

    def add(self, nll, nll_base, kld, p_diff, same_top: int) -> None:
        self.nll.add(nll)
        self.nll_base.add(nll_base)
        self.nll_cross += float(np.dot(nll, nll_base))
        self.kld.add(kld)
        self.p_diff.add(p_diff)
        self.p_diff_sq.add(np.square(p_diff))
        self.same_top += same_top
        self.kld_values.append(kld)
        self.p_diff_values.append(p_diff)

    @property
    def count(self) -> int:
        return self.nll.count

    def mean_err(self, sums: NllSums) -> tuple[float, float]:
        """Mean and its standard error; the error stays 0 until there are more than 10 values."""
        err = standard_error(sums.total, sums.total_sq, sums.count) if sums.count > 10 else 0.0
        return sums.mean, err

    def nll_covariance(self) -> float:
        """Covariance of the two mean NLLs (far from independent: same text, similar models)."""
        n = self.count
        if n < 10:
            return 0.0
        return (self.nll_cross / n - self.nll.mean * self.nll_base.mean) / (n - 1)

    def log_ppl_ratio(self) -> tuple[float, float]:
        (mq, eq), (mb, eb) = self.mean_err(self.nll), self.mean_err(self.nll_base)
        variance = eq * eq + eb * eb - 2.0 * self.nll_covariance()
        return mq - mb, math.sqrt(max(variance, 0.0))

    def p_diff_rms(self) -> tuple[float, float]:
        mse, mse_err = self.mean_err(self.p_diff_sq)
        rms = math.sqrt(mse)
        return rms, (0.5 / rms * mse_err if rms > 0 else 0.0)

    def same_top_fraction(self) -> tuple[float, float]:
        f = self.same_top / self.count
        return f, math.sqrt(f * (1 - f) / (self.count - 1)) if self.count > 1 else 0.0


@dataclass
class KlChunk:
    index: int
    n_chunks: int
    sums: KlSums


def kl_divergence(model, base: BaseLogProbs, n_batch: int = 2048,
                  max_chunks: int | None = None) -> Iterator[KlChunk]:
    """Compare model against the base chunk by chunk; KlSums grow as they go (the same object each time)."""
    if model.config.n_vocab != base.n_vocab:
        raise BadBaseFile(f"the base was made with a vocabulary of {base.n_vocab} tokens, this model has "
                          f"{model.config.n_vocab}: compare models that share a tokenizer")
    n_ctx = base.n_ctx
    n_chunks = base.n_chunks if not max_chunks or max_chunks <= 0 else min(max_chunks, base.n_chunks)
    passes = pass_sizes(n_chunks, n_ctx, n_batch)
    first = first_scored(n_ctx)
    cache = model.new_cache(n_ctx)
    logits = scored_buffer(model, n_ctx)
    sums = KlSums()
    for i in range(n_chunks):
        chunk = base.tokens[i * n_ctx:(i + 1) * n_ctx].astype(np.int64)
        scored_logits(model, chunk, cache, tokens_per_step(n_ctx, n_batch, passes[i]), logits)
        lse = log_sum_exp(logits)
        lp = log_probs_at(logits, lse, chunk[first + 1:, None])[:, 0].astype(np.float64)
        lp_base = base.target_log_probs[i].astype(np.float64)
        kld = kl_divergence_at(base, i, logits, lse)
        same_top = int(np.sum(np.argmax(logits, axis=1) == base.top_ids[i, :, 0]))
        sums.add(-lp, -lp_base, kld, np.exp(lp) - np.exp(lp_base), same_top)
        yield KlChunk(i + 1, n_chunks, sums)


KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
P_DIFF_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1)


def kl_summary(sums: KlSums) -> dict:
    """Every KL-mode statistic as plain numbers (Δp as fractions, not percent)."""
    mq, eq = sums.mean_err(sums.nll)
    mb, eb = sums.mean_err(sums.nll_base)
    ln_ratio, ln_ratio_err = sums.log_ppl_ratio()
    ppl, ppl_base, ratio = math.exp(mq), math.exp(mb), math.exp(ln_ratio)
    ppl_cov = ppl * ppl_base * sums.nll_covariance()
    kld_values = np.concatenate(sums.kld_values) if sums.kld_values else np.zeros(0)
    p_diff_values = np.concatenate(sums.p_diff_values) if sums.p_diff_values else np.zeros(0)
    kld, kld_err = sums.mean_err(sums.kld)
    p_diff, p_diff_err = sums.mean_err(sums.p_diff)
    rms, rms_err = sums.p_diff_rms()
    same, same_err = sums.same_top_fraction()
    correlation = sums.nll_covariance() / (eq * eb) if eq > 0 and eb > 0 else None
    return {
        "n_tokens": sums.count,
        "ppl": ppl, "ppl_err": ppl * eq, "ppl_base": ppl_base, "ppl_base_err": ppl_base * eb,
        "ln_ppl_correlation": correlation,
        "ln_ppl_ratio": ln_ratio, "ln_ppl_ratio_err": ln_ratio_err,
        "ppl_ratio": ratio, "ppl_ratio_err": ratio * ln_ratio_err,
        "ppl_diff": ppl - ppl_base,
        "ppl_diff_err": math.sqrt(max((ppl * eq) ** 2 + (ppl_base * eb) ** 2 - 2.0 * ppl_cov, 0.0)),
        "kld": kld, "kld_err": kld_err,
        "kld_max": float(kld_values.max()), "kld_min": float(kld_values.min()),
        "kld_percentiles": percentiles(kld_values, KLD_PERCENTILES),
        "p_diff": p_diff, "p_diff_err": p_diff_err,
        "p_diff_max": float(p_diff_values.max()), "p_diff_min": float(p_diff_values.min()),
        "p_diff_percentiles": percentiles(p_diff_values, P_DIFF_PERCENTILES),
        "p_diff_rms": rms, "p_diff_rms_err": rms_err,
        "same_top": same, "same_top_err": same_err,
    }


def percentiles(values: np.ndarray, points) -> dict:
    """Linear interpolation between order statistics, keyed by the percentile as text ("99.9")."""
    return {f"{p:g}": float(np.percentile(values, p)) for p in points}


# --- HellaSwag ----------------------------------------------------------------------------------------


@dataclass
class HellaswagTask:
    context: str
    gold: int
    endings: list[str]


def parse_hellaswag(text: str) -> list[HellaswagTask]:
    """llama.cpp's HellaSwag file: 6 lines per task (context, index of the right ending, 4 endings)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError("the HellaSwag file is empty")
    if len(lines) % 6:
        raise ValueError(f"a HellaSwag file has 6 lines per task; this one has {len(lines)} lines")
    tasks = []
    for i in range(0, len(lines), 6):
        label = lines[i + 1].strip()
        if label not in ("0", "1", "2", "3"):
            raise ValueError(f"HellaSwag task {i // 6 + 1} (line {i + 2}): the gold ending must be 0-3, got {label!r}")
        tasks.append(HellaswagTask(lines[i], int(label), lines[i + 2:i + 6]))
    return tasks


class MersenneTwister:
    """std::mt19937, so that task selection draws the same tasks as llama.cpp's fixed seed."""

    def __init__(self, seed: int):
        self.state = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            prev = self.state[-1]
            self.state.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
        self.index = 624

    def _twist(self) -> None:
        s = self.state
        for i in range(624):
            y = (s[i] & 0x80000000) | (s[(i + 1) % 624] & 0x7FFFFFFF)
            s[i] = s[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.index = 0

    def next_u32(self) -> int:
        if self.index >= 624:
            self._twist()
        y = self.state[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def below(self, n: int) -> int:
        """Uniform in [0, n), as libstdc++'s uniform_int_distribution draws it from a 32-bit engine
        (Lemire's multiply-and-reject)."""
        product = self.next_u32() * n
        if product & 0xFFFFFFFF < n:
            threshold = (-n) % (1 << 32) % n
            while product & 0xFFFFFFFF < threshold:
                product = self.next_u32() * n
        return product >> 32


def select_tasks(tasks: list[HellaswagTask], n: int, seed: int = 1) -> list[HellaswagTask]:
    """n tasks drawn at random without replacement, in llama.cpp's order (it shuffles so that the
    running score settles early)."""
    pool = list(tasks)
    rng = MersenneTwister(seed)
    return [pool.pop(rng.below(len(pool))) for _ in range(min(n, len(pool)))]


def common_prefix_length(sequences: list[list[int]]) -> int:
    n = 0
    for column in zip(*sequences, strict=False):
        if any(token != column[0] for token in column):
            break
        n += 1
    return n


def ending_scores(model, task: HellaswagTask, cache) -> list[float]:
    """Mean log-prob per token of each ending after the shared context (acc_norm's score)."""
    sequences = [model.tokenize(task.context + " " + ending, special=False) for ending in task.endings]
    longest = max(map(len, sequences))
    if longest > cache.n_ctx:
        raise ValueError(f"a HellaSwag task needs {longest} tokens, more than the context of {cache.n_ctx} (-c)")
    # Each ending is scored from its first token that differs from the others; at least one token.
    prefix = max(1, min(common_prefix_length(sequences), min(map(len, sequences)) - 1))
    cache.n_past = 0
    context_logits = model.forward(np.asarray(sequences[0][:prefix]), cache)
    first_log_probs = context_logits[0].astype(np.float64) - log_sum_exp(context_logits)[0]
    scores = []
    for seq in sequences:
        cache.n_past = prefix
        total = first_log_probs[seq[prefix]]
        rest = np.asarray(seq[prefix:-1], dtype=np.int64)
        if len(rest):
            logits = forward_rows(model, rest, cache, 0)
            total += float(np.sum(target_log_probs(logits, np.asarray(seq[prefix + 1:]))))
        scores.append(float(total) / (len(seq) - prefix))
    return scores


@dataclass
class HellaswagProgress:
    index: int
    n_tasks: int
    correct: int

    @property
    def acc_norm(self) -> float:
        return self.correct / self.index

    def interval(self, z: float = 1.959963984540054) -> tuple[float, float]:
        """Wilson score interval (95 % by default): sound even at 0 % or 100 % on few tasks."""
        n, p = self.index, self.acc_norm
        z2n = z * z / n
        centre = p + z2n / 2
        spread = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
        return (centre - spread) / (1 + z2n), (centre + spread) / (1 + z2n)


def hellaswag(model, tasks: list[HellaswagTask], n_tasks: int, n_ctx: int) -> Iterator[HellaswagProgress]:
    """Score randomly chosen tasks; a task counts when its gold ending has the best mean log-prob."""
    chosen = select_tasks(tasks, n_tasks)
    cache = model.new_cache(n_ctx)
    correct = 0
    for i, task in enumerate(chosen):
        scores = ending_scores(model, task, cache)
        correct += int(np.argmax(scores)) == task.gold
        yield HellaswagProgress(i + 1, len(chosen), correct)

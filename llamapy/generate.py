"""The generation loop: prefill the prompt in batches, then decode one token at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .kv_cache import ContextFull
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder


class PromptTooLong(ContextFull):
    pass


@dataclass
class Timings:
    n_prompt: int = 0
    prompt_seconds: float = 0.0
    n_generated: int = 0
    generate_seconds: float = 0.0
    first_token_at: float | None = None  # perf_counter when the first generated token was ready

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.n_generated / self.generate_seconds if self.generate_seconds else 0.0


@dataclass
class GenerationStep:
    token: int
    text: str  # complete UTF-8 text this token finishes (may be empty mid-character)
    is_end: bool  # an end-of-generation token: not part of the output text
    timings: Timings = field(repr=False)


def generate(model, prompt_ids: list[int], n_predict: int, params: SamplingParams, n_ctx: int,
             n_batch: int = 512) -> Iterator[GenerationStep]:
    """Yield generated tokens until n_predict (-1: until the context is full) or an end token."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if len(prompt_ids) >= n_ctx:
        raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens, more than the context holds ({n_ctx}, -c)")
    cache = model.new_cache(n_ctx)
    sampler = Sampler(params)
    for t in prompt_ids:
        sampler.accept(t)
    timings = Timings(n_prompt=len(prompt_ids))
    decoder = StreamDecoder(model.tokenizer)

    start = time.perf_counter()
    for i in range(0, len(prompt_ids), n_batch):
        logits = model.forward(prompt_ids[i:i + n_batch], cache)
    timings.prompt_seconds = time.perf_counter() - start

    limit = n_ctx - len(prompt_ids) if n_predict < 0 else min(n_predict, n_ctx - len(prompt_ids))
    start = time.perf_counter()
    for _ in range(limit):
        token = sampler.sample(logits[-1])
        sampler.accept(token)
        timings.n_generated += 1
        if timings.first_token_at is None:
            timings.first_token_at = time.perf_counter()
        if model.tokenizer.is_eog(token):
            timings.generate_seconds = time.perf_counter() - start
            yield GenerationStep(token, decoder.flush(), True, timings)
            return
        text = decoder.feed(token)
        if cache.n_past < n_ctx:
            logits = model.forward([token], cache)
        timings.generate_seconds = time.perf_counter() - start
        yield GenerationStep(token, text, False, timings)
    tail = decoder.flush()
    if tail:
        yield GenerationStep(-1, tail, True, timings)

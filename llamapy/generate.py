"""The generation loop on a Session: prefill what is not cached, then decode one token at a time.

Generation stops at an end-of-generation token (EOS, EOT, the template's end of turn), at a stop
string (-r), at n_predict tokens or when the context is full. Stop strings are matched on the text;
text that could still turn into a stop string is held back, so a partial one is never yielded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .kv_cache import ContextFull
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder


class PromptTooLong(ContextFull):
    pass


@dataclass
class Timings:
    n_prompt: int = 0  # prompt tokens evaluated
    n_reused: int = 0  # prompt tokens found in the session's cache
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
    token: int  # -1 for a step that only carries held-back text
    text: str  # text this step releases (may be empty mid-character or while a stop string may follow)
    is_end: bool  # the last step; its token (an end token) is not part of the output text
    timings: Timings = field(repr=False)
    finish: str | None = None  # on the last step: "eog", "stop", "length" or "context"


class StopStrings:
    """Streaming match of stop strings: feed text pieces, get back what is safe to show."""

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text to release, whether a stop string was completed); after a match the rest is dropped."""
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[:min(hits)], True
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest end of buf that is the start of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def generate(session, prompt_ids: list[int], n_predict: int, params: SamplingParams,
             stop: Iterable[str] = (), end_tokens: Iterable[int] = ()) -> Iterator[GenerationStep]:
    """Yield generated tokens of `session` after prompt_ids until n_predict (-1: until the context is
    full), an end token (the tokenizer's end-of-generation ones plus end_tokens) or a stop string."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if len(prompt_ids) >= session.n_ctx:
        raise PromptTooLong(
            f"the prompt has {len(prompt_ids)} tokens, more than the context holds ({session.n_ctx}, -c)")
    tokenizer = session.model.tokenizer
    extra_ends = frozenset(end_tokens)
    sampler = Sampler(params)
    for t in prompt_ids:
        sampler.accept(t)
    prefill = session.prefill(prompt_ids)
    timings = Timings(n_prompt=prefill.n_evaluated, n_reused=prefill.n_reused, prompt_seconds=prefill.seconds)
    decoder = StreamDecoder(tokenizer)
    stops = StopStrings(stop)
    logits = prefill.logits

    room = session.n_ctx - len(prompt_ids)
    limit = room if n_predict < 0 else min(n_predict, room)
    start = time.perf_counter()
    for _ in range(limit):
        token = sampler.sample(logits)
        sampler.accept(token)
        timings.n_generated += 1
        if timings.first_token_at is None:
            timings.first_token_at = time.perf_counter()
        if tokenizer.is_eog(token) or token in extra_ends:
            timings.generate_seconds = time.perf_counter() - start
            text, _ = stops.feed(decoder.flush())
            yield GenerationStep(token, text + stops.flush(), True, timings, "eog")
            return
        text, stopped = stops.feed(decoder.feed(token))
        if stopped:
            timings.generate_seconds = time.perf_counter() - start
            yield GenerationStep(token, text, True, timings, "stop")
            return
        if session.n_free > 0:
            logits = session.feed([token])
        timings.generate_seconds = time.perf_counter() - start
        yield GenerationStep(token, text, False, timings)
    text, _ = stops.feed(decoder.flush())
    finish = "length" if n_predict >= 0 and limit == n_predict else "context"
    yield GenerationStep(-1, text + stops.flush(), True, timings, finish)

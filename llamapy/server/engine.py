"""The engine: parallel slots, a queue, and the one thread that runs the model for all of them.

Each slot is a Session (its own KV cache and token history). The engine thread loops:

1. admit waiting jobs into free slots, each into the idle slot whose cache shares the longest prefix
   with its prompt (prefix reuse: only the rest is evaluated), else the one idle longest;
2. gather one decode token from every generating slot and prompt chunks of prefilling slots (each
   prompt in chunks of n_batch tokens, however busy the server is; chunks of further prompts join a
   step while the step's prompt tokens stay within n_batch);
3. run them all in one `forward_batch` (each row equals what that sequence gives alone), sample
   each slot's next token with its own sampler and RNG, and hand the text to the job's sink.

Everything that touches the model (and numba's parallel regions, which must never be entered from
two threads at once) happens on this thread. Other threads only submit jobs, set a job's
`cancelled` flag, and read the slots' state; the job's sink is called on the engine thread and must
only hand the event over (the app uses loop.call_soon_threadsafe).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..generate import StopStrings
from ..sampling import Sampler, SamplingParams
from ..session import common_prefix
from ..tokenizer import StreamDecoder
from .protocol import Usage


@dataclass
class Event:
    """What the engine tells a job: released text, and on the last event the finish and the usage."""

    text: str = ""
    n_tokens: int = 0  # tokens generated so far
    finish: str | None = None  # "stop" or "length" on the last event
    usage: Usage | None = None
    error: str | None = None  # the engine failed this job (the last event)
    status: int = 500  # of the error: 503 when the server is shutting down

    @property
    def done(self) -> bool:
        return self.finish is not None or self.error is not None


@dataclass(eq=False)
class Job:
    """One request on its way through the engine."""

    prompt: list[int]
    sink: Callable[[Event], None]
    params: SamplingParams = SamplingParams()
    max_tokens: int = -1  # -1: until an end token or a full context
    stop: tuple[str, ...] = ()
    end_tokens: frozenset[int] = frozenset()
    cache_prompt: bool = True
    ignore_eos: bool = False
    id: int = 0
    cancelled: bool = False  # set by any thread; the engine drops the job at its next step
    queued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True


IDLE, PREFILL, GENERATE = "idle", "prefill", "generating"


def forward_step(model, tokens: list[np.ndarray], caches: list) -> np.ndarray:
    """Each sequence's tokens through the model, extending its cache: the logits after each one's last
    token, [len(caches), n_vocab]. A local model runs them all in one batched pass; a model that runs
    its forward pass elsewhere (--rpc: DistributedModel) runs them one after another."""
    from ..model import Model

    if type(model).forward is Model.forward:
        return model.net.forward_batch(tokens, caches)
    return np.stack([model.forward(t, cache)[-1] for t, cache in zip(tokens, caches, strict=True)])


class Slot:
    """A session and the job it serves, if any."""

    def __init__(self, id: int, session):
        self.id = id
        self.session = session
        self.job: Job | None = None
        self.state = IDLE
        self.last_used = 0.0
        self.n_jobs = 0

    # --- per job ------------------------------------------------------------------------------

    def start(self, job: Job, tokenizer, eog_ids: np.ndarray) -> None:
        prompt = job.prompt
        n_keep = common_prefix(self.session.tokens, prompt) if job.cache_prompt else 0
        # At least the last prompt token is evaluated again: its logits give the first token.
        n_keep = min(n_keep, len(prompt) - 1)
        self.session.trim(n_keep)
        self.pending = prompt[n_keep:]
        self.usage = Usage(n_prompt=len(prompt), n_cached=n_keep)
        self.sampler = Sampler(job.params)
        for t in prompt[-job.params.repeat_last_n:] if job.params.repeat_last_n else ():
            self.sampler.accept(t)
        self.decoder = StreamDecoder(tokenizer)
        self.stops = StopStrings(job.stop)
        room = self.session.n_ctx - len(prompt)
        self.limit = room if job.max_tokens < 0 else min(job.max_tokens, room)
        self.banned = np.union1d(eog_ids, np.fromiter(job.end_tokens, np.int64)) if job.ignore_eos else None
        self.next_token: int | None = None
        self.started = time.perf_counter()
        self.prompt_done = 0.0
        self.n_jobs += 1
        # Last: other threads read the slot (/slots) and must see a whole job or none.
        self.state = PREFILL
        self.job = job

    def release(self) -> None:
        """The job is over; the cache keeps what it evaluated, for the next job's prefix."""
        self.job = None
        self.state = IDLE
        self.next_token = None
        self.last_used = time.perf_counter()

    def info(self) -> dict:
        job = self.job
        return {
            "id": self.id,
            "n_ctx": self.session.n_ctx,
            "is_processing": job is not None,
            "state": self.state,
            "id_task": job.id if job is not None else None,
            "n_past": self.session.n_past,  # tokens the cache holds
            "n_prompt_tokens": len(job.prompt) if job is not None else None,
            "n_decoded": self.usage.n_generated if job is not None else None,
            "n_prompt_tokens_cached": self.usage.n_cached if job is not None else None,
            "n_jobs": self.n_jobs,
        }


@dataclass
class Metrics:
    """Counters for /metrics (names after llama-server's)."""

    prompt_tokens_total: int = 0  # prompt tokens evaluated
    prompt_tokens_cached_total: int = 0
    prompt_seconds_total: float = 0.0
    tokens_predicted_total: int = 0
    tokens_predicted_seconds_total: float = 0.0
    n_decode_total: int = 0  # forward passes
    n_busy_slots_total: int = 0  # summed over passes
    n_tokens_max: int = 0
    requests_total: int = 0
    requests_cancelled_total: int = 0
    engine_busy_seconds_total: float = 0.0


class Engine:
    """n_parallel slots of n_ctx_slot tokens each over one model, driven by one thread.

    `load` runs on that thread and returns the Model (so that /health can answer 503 while it loads);
    `threads` is numba's thread count there (numba's setting is per thread).
    """

    def __init__(self, load: Callable[[], object], n_parallel: int = 1, n_ctx_slot: int = 4096,
                 n_batch: int = 512, threads: int | None = None, on_load_error: Callable[[str], None] | None = None):
        if n_parallel < 1:
            raise ValueError(f"-np must be at least 1, got {n_parallel}")
        if n_ctx_slot < 8:
            raise ValueError(f"each slot needs a context of at least 8 tokens, got {n_ctx_slot} (-c / -np)")
        if n_batch < 1:
            raise ValueError(f"-b must be at least 1, got {n_batch}")
        self._load = load
        self.n_parallel = n_parallel
        self.n_ctx_slot = n_ctx_slot
        self.n_batch = n_batch
        self.threads = threads
        self.on_load_error = on_load_error
        self.model = None
        self.slots: list[Slot] = []
        self.metrics = Metrics()
        self.load_error: str | None = None
        self.ready = threading.Event()
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._next_id = 0
        self._thread = threading.Thread(target=self._run, name="llamapy-engine", daemon=True)
        self._governors: dict[tuple[int, int], object] = {}  # (threads, sequences in the step) -> governor

    # --- other threads ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop taking work, without waiting: running and queued jobs end with an error event after the
        pass in progress, so that their streams close and the HTTP server can shut down."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        self.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> Job:
        with self._wake:
            self._next_id += 1
            job.id = self._next_id
            self._waiting.append(job)
            self.metrics.requests_total += 1
            self._wake.notify_all()
        return job

    def wake(self) -> None:
        """Make the engine look at its jobs now (after a cancel)."""
        with self._wake:
            self._wake.notify_all()

    @property
    def n_waiting(self) -> int:
        return sum(1 for j in list(self._waiting) if not j.cancelled)

    @property
    def n_processing(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    def slots_info(self) -> list[dict]:
        return [s.info() for s in list(self.slots)]

    # --- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            model = self._load()
            # A prompt chunk is at most -ub tokens, as a forward pass of llama.cpp.
            options = getattr(model, "options", None)
            if options is not None:
                self.n_batch = min(self.n_batch, options.n_ubatch)
            sessions = model.sessions(self.n_parallel, self.n_ctx_slot, self.n_batch)
            self.slots = [Slot(i, session) for i, session in enumerate(sessions)]
        except Exception as e:  # reported by the command as one line
            self.load_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
            return
        self.model = model
        self.eog_ids = np.array(sorted(model.tokenizer.vocab.eog_ids), np.int64)
        self._warm_up()
        self.ready.set()
        while True:
            with self._wake:
                if self._stopping:
                    break
                if not self._waiting and not any(s.job is not None for s in self.slots):
                    self._wake.wait(timeout=1.0)
                    continue
            self.step()
        for s in self.slots:
            if s.job is not None:
                self._finish(s, error="the server is shutting down", status=503)
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            job.sink(Event(error="the server is shutting down", status=503))

    def _warm_up(self) -> None:
        """One batched pass of a prompt chunk beside a decode token on scratch caches, so that the first
        request does not pay for loading every kernel (llama-server warms up too)."""
        from ..model import Model

        if type(self.model).forward is not Model.forward:
            return
        caches = [self.model.new_cache(8), self.model.new_cache(8)]
        self.model.forward([0, 1], caches[0])
        self._forward([np.array([0]), np.array([0, 1, 2])], caches)

    def step(self) -> None:
        """One forward pass over every active slot (engine thread only)."""
        self._drop_cancelled()
        self._admit()
        entries = self._gather()
        if not entries:
            return
        slots = [s for s, _ in entries]
        for s in slots:
            s.session.cache.n_past = len(s.session.tokens)  # the token list is the truth
        start = time.perf_counter()
        try:
            logits = self._forward([np.asarray(t, np.int64) for _, t in entries], [s.session.cache for s in slots])
        except Exception as e:
            for s in slots:
                s.session.clear()  # what the pass left in the caches is not known
                self._finish(s, error=f"the engine failed: {type(e).__name__}: {e}")
            return
        now = time.perf_counter()
        m = self.metrics
        m.n_decode_total += 1
        m.n_busy_slots_total += len(slots)
        m.engine_busy_seconds_total += now - start
        for (s, tokens), row in zip(entries, logits, strict=True):
            s.session.tokens += tokens
            m.n_tokens_max = max(m.n_tokens_max, s.session.n_past)
            if s.state == PREFILL:
                s.pending = s.pending[len(tokens):]
                if s.pending:
                    continue
                s.prompt_done = now
                s.usage.prompt_ms = 1e3 * (now - s.started)
                s.state = GENERATE
                if s.limit <= 0:  # n_predict 0: the prompt only
                    self._finish(s, "", "length")
                    continue
            self._sample(s, row, now)

    def _forward(self, tokens: list[np.ndarray], caches: list) -> np.ndarray:
        """forward_step at the model's thread counts (-t for steps of decode tokens only, -tb for steps with
        prompt chunks); a decode step runs at -t or one thread, whichever a governor per batch size
        measures faster (llamapy/threads.py: a loaded core must not make -t N slower than -t 1)."""
        import numba

        from ..threads import ThreadGovernor

        options = getattr(self.model, "options", None)
        decode = all(len(t) == 1 for t in tokens)
        requested = (options.threads_for(1 if decode else 2) if options is not None else None) or self.threads
        most = numba.config.NUMBA_NUM_THREADS
        requested = min(requested or most, most)
        governor = None
        if decode and requested > 1 and getattr(options, "adaptive_threads", True):
            governor = self._governors.setdefault((requested, len(tokens)), ThreadGovernor(requested))
        n = governor.choose() if governor is not None else requested
        numba.set_num_threads(n)
        start = time.perf_counter()
        logits = forward_step(self.model, tokens, caches)
        if governor is not None:
            governor.record(n, time.perf_counter() - start)
        return logits

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            if s.job is not None and s.job.cancelled:
                self.metrics.requests_cancelled_total += 1
                self._account(s)
                s.release()

    def _admit(self) -> None:
        while True:
            with self._wake:
                while self._waiting and self._waiting[0].cancelled:
                    self._waiting.popleft()
                    self.metrics.requests_cancelled_total += 1
                free = [s for s in self.slots if s.job is None]
                if not self._waiting or not free:
                    return
                job = self._waiting.popleft()
            if not 0 < len(job.prompt) < self.n_ctx_slot:  # the app checks this; a library caller may not
                job.sink(Event(error=f"the prompt has {len(job.prompt)} tokens; a slot holds 1 to "
                                     f"{self.n_ctx_slot - 1} (and room for a reply)"))
                continue
            slot = self._pick_slot(free, job)
            slot.start(job, self.model.tokenizer, self.eog_ids)

    @staticmethod
    def _pick_slot(free: list[Slot], job: Job) -> Slot:
        if job.cache_prompt:
            shared = [(common_prefix(s.session.tokens, job.prompt), s) for s in free]
            best, slot = max(shared, key=lambda p: (p[0], -p[1].last_used))
            if best > 0:
                return slot
        return min(free, key=lambda s: s.last_used)

    def _gather(self) -> list[tuple[Slot, list[int]]]:
        entries = [(s, [s.next_token]) for s in self.slots if s.state == GENERATE]
        budget = self.n_batch
        prefilling = sorted((s for s in self.slots if s.state == PREFILL), key=lambda s: s.job.queued_at)
        for i, s in enumerate(prefilling):
            chunk = s.pending[:self.n_batch]
            if i and len(chunk) > budget:
                break  # a prompt's chunks never shrink to fit: it waits for the next step
            entries.append((s, chunk))
            budget -= len(chunk)
        return entries

    def _sample(self, s: Slot, logits: np.ndarray, now: float) -> None:
        job, usage = s.job, s.usage
        if s.banned is not None:
            logits = logits.copy()
            logits[s.banned] = -np.inf
        token = s.sampler.sample(logits)
        s.sampler.accept(token)
        usage.n_generated += 1
        usage.predicted_ms = 1e3 * (now - s.prompt_done)
        tokenizer = self.model.tokenizer
        if not job.ignore_eos and (tokenizer.is_eog(token) or token in job.end_tokens):
            text, _ = s.stops.feed(s.decoder.flush())
            self._finish(s, text + s.stops.flush(), "stop")
            return
        text, stopped = s.stops.feed(s.decoder.feed(token))
        if stopped:
            self._finish(s, text, "stop")
        elif usage.n_generated >= s.limit:
            tail, _ = s.stops.feed(s.decoder.flush())
            self._finish(s, text + tail + s.stops.flush(), "length")
        else:
            s.next_token = token
            self._emit(s, Event(text, usage.n_generated))

    def _emit(self, s: Slot, event: Event) -> None:
        try:
            s.job.sink(event)
        except Exception:  # the receiving side is gone (its event loop closed): drop the job
            s.job.cancelled = True

    def _finish(self, s: Slot, text: str = "", finish: str | None = None, error: str | None = None,
                status: int = 500) -> None:
        self._account(s)
        self._emit(s, Event(text, s.usage.n_generated, finish, s.usage, error, status))
        s.release()

    def _account(self, s: Slot) -> None:
        m, u = self.metrics, s.usage
        m.prompt_tokens_total += u.n_prompt - u.n_cached - len(s.pending) if s.state == PREFILL else \
            u.n_prompt - u.n_cached
        m.prompt_tokens_cached_total += u.n_cached
        m.prompt_seconds_total += u.prompt_ms / 1e3
        m.tokens_predicted_total += u.n_generated
        m.tokens_predicted_seconds_total += u.predicted_ms / 1e3

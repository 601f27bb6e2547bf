"""The Dask actor a worker holds for one model: a pipeline stage, its KV caches, and the next hop.

The main host creates one Shard per worker (`client.submit(Shard, actor=True, workers=[address])`).
Its plain methods run on the worker's single actor thread, so all model work of a worker happens on
one thread, never two at once (numba's parallel regions must not be entered concurrently); `collect`
is a coroutine and runs on the worker's event loop, which stays free while the actor thread computes.

One forward pass, k stages: the main host sends the hidden states to stage 1's `run`; each stage runs
its layers and sends the result straight to the next stage's `run` (from its own event loop, without
waiting on it); the last stage hands its result to the `collect` call the main host made at the start.
So the states cross each link once: main → worker 1 → … → worker k → main. A stage that fails, or
cannot reach its successor, reports that to the last stage, whose `collect` raises it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..validate import available_memory
from .errors import HandshakeRefused, StageFailed
from .files import find_copy
from .identity import describe_host, identity, mismatch
from .stage import stage_from_file, stage_from_tensors

# What `llamapy rpc-server` sets in its own process before the worker starts; a plain `dask worker`
# with llamapy installed runs with these defaults.
SERVER_OPTIONS = {
    "mem": None,  # bytes offered for layers (rpc-server --mem); None: the memory free now
    "nthreads": None,  # numba threads for model work; None: numba's default
    "model_dirs": [],  # folders searched for the main host's GGUF
    "local_files": True,  # False: never open model files here, always receive layers
}

_KEEP_RESULTS = 64  # uncollected results kept per shard (a main host that went away leaves some)


class Failure:
    """A stage's error, travelling to the last stage in place of hidden states."""

    def __init__(self, where: str, error: BaseException | str, lost: str | None = None):
        self.where = where  # the worker that reports it
        self.error = error
        self.lost = lost  # the address of a worker found unreachable, if that is what happened


class Shard:
    """A worker's part of one model: layers [a, b), a KV cache per sequence, the route onwards."""

    def __init__(self):
        from distributed import get_worker

        self._worker = get_worker()
        self.address = self._worker.address
        self.stage = None
        self.caches: dict[int, object] = {}
        self._received: dict[str, np.ndarray] = {}
        self._results: dict[int, object] = {}  # seq -> result or Failure, touched on the event loop only
        self._waiting: dict[int, asyncio.Future] = {}
        self._governors: dict[int, object] = {}  # thread count -> ThreadGovernor

    # --- handshake and loading (actor thread) -----------------------------------------------------

    def hello(self) -> dict:
        self._threads()
        mem = SERVER_OPTIONS["mem"]
        return {**identity(), **describe_host(), "address": self.address,
                "free_memory": int(mem) if mem else available_memory(),
                "local_files": SERVER_OPTIONS["local_files"]}

    def open(self, theirs: dict, ref, layers: tuple[int, int], engine: dict) -> dict:
        """Load layers [a, b) from this host's copy of ref; {"source": "wire"} when there is none."""
        self._threads()
        refusal = mismatch("on the main host", theirs, identity())
        if refusal:
            raise HandshakeRefused(f"worker {self.address} refuses the main host: it runs llamapy "
                                   f"{theirs.get('version')} (kernel build {theirs.get('build')}), this worker "
                                   f"{identity()['version']} (kernel build {identity()['build']})")
        path = find_copy(ref, SERVER_OPTIONS["model_dirs"]) if SERVER_OPTIONS["local_files"] else None
        if path is None:
            return {"source": "wire"}
        self.stage = stage_from_file(str(path), range(*layers))
        self.stage.configure(engine)
        self._warm_up()
        return {"source": self.stage.source}

    def receive(self, tensors: dict[str, np.ndarray]) -> int:
        """Some of the stage's tensors, sent by the main host (a layer at a time)."""
        self._received.update(tensors)
        return len(self._received)

    def build(self, name: str, config, tensors: dict, layers: tuple[int, int], engine: dict) -> dict:
        """The stage from the tensors received."""
        self._threads()
        self.stage = stage_from_tensors(name, config, tensors, self._received, range(*layers))
        self.stage.configure(engine)
        self._received = {}
        self._warm_up()
        return {"source": self.stage.source}

    def _warm_up(self) -> None:
        # The first pass loads the compiled kernels (seconds); do it now, not in the first request.
        cache = self.stage.new_cache(2)
        self.stage.run(np.zeros((1, self.stage.config.n_embd), np.float32), cache, 0)

    @staticmethod
    def _threads() -> None:
        n = SERVER_OPTIONS["nthreads"]
        if n:
            import numba

            numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))

    # --- caches (actor thread) --------------------------------------------------------------------

    def open_cache(self, cache_id: int, n_ctx: int) -> None:
        if cache_id not in self.caches:
            self.caches[cache_id] = self.stage.new_cache(n_ctx)

    def drop_cache(self, cache_id: int) -> None:
        self.caches.pop(cache_id, None)

    # --- the forward pass -------------------------------------------------------------------------

    def run(self, job: dict):
        """Run this stage's layers on job["x"]; pass the result on, or return it (a one-stage pipeline)."""
        received = time.time()
        self._threads()
        try:
            cache = self.caches.get(job["cache"])
            if cache is None:
                self.open_cache(job["cache"], job["n_ctx"])
                cache = self.caches[job["cache"]]
            y = self._stage_run(job["x"], cache, job["n_past"])
        except Exception as e:
            if job["reply"]:
                raise
            self._to_last(job, Failure(self.address, e))
            return None
        stamps = [*job["stamps"], received, time.time()]
        route = job["route"]
        if not route:
            keep = job["keep_from"]
            result = {"x": y if keep is None else np.ascontiguousarray(y[keep:]), "stamps": stamps}
            if job["reply"]:
                return result
            self._worker.loop.add_callback(self._deliver, job["seq"], result)
            return None
        nxt = {**job, "x": y, "route": route[1:], "stamps": stamps}
        self._worker.loop.add_callback(self._push, route[0], nxt)
        return None

    def _stage_run(self, x: np.ndarray, cache, n_past: int) -> np.ndarray:
        """The stage's pass; a single token at the thread count that measures faster (llamapy/threads.py:
        on a loaded host one thread can beat several)."""
        import numba

        from ..threads import ThreadGovernor

        threads = numba.get_num_threads()
        if len(x) != 1 or threads <= 1:
            return self.stage.run(x, cache, n_past)
        governor = self._governors.setdefault(threads, ThreadGovernor(threads))
        n = governor.choose()
        numba.set_num_threads(n)
        try:
            start = time.perf_counter()
            y = self.stage.run(x, cache, n_past)
            governor.record(n, time.perf_counter() - start)
        finally:
            numba.set_num_threads(threads)
        return y

    async def _push(self, target: tuple[str, str], job: dict) -> None:
        from distributed.protocol import to_serialize

        address, key = target
        try:
            reply = await self._worker.rpc(address).actor_execute(
                actor=key, function="run", args=[to_serialize(job)], kwargs={})
        except Exception as e:  # the next worker is gone or unreachable
            await self._report(job, Failure(self.address, f"{type(e).__name__}: {e}", lost=address))
            return
        if reply.get("status") != "OK":
            await self._report(job, Failure(address, reply.get("exception", "error")))

    def _to_last(self, job: dict, failure: Failure) -> None:
        if not job["route"]:
            self._worker.loop.add_callback(self._deliver, job["seq"], failure)
        else:
            self._worker.loop.add_callback(self._report, job, failure)

    async def _report(self, job: dict, failure: Failure) -> None:
        from distributed.protocol import to_serialize

        address, key = job["last"]
        if address == self.address:
            self._deliver(job["seq"], failure)
            return
        try:
            await self._worker.rpc(address).actor_execute(
                actor=key, function="fail", args=[job["seq"], to_serialize(failure)], kwargs={})
        except Exception:
            pass  # the last stage is gone too: the main host's collect finds that out itself

    async def fail(self, seq: int, failure: Failure) -> None:
        self._deliver(seq, failure)

    def _deliver(self, seq: int, result) -> None:
        waiter = self._waiting.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
            return
        self._results[seq] = result
        while len(self._results) > _KEEP_RESULTS:
            self._results.pop(next(iter(self._results)))

    async def collect(self, seq: int):
        """The last stage's result of pass seq, once it is there (runs on the event loop)."""
        if seq in self._results:
            result = self._results.pop(seq)
        else:
            waiter = self._waiting[seq] = asyncio.get_running_loop().create_future()
            try:
                result = await waiter
            finally:
                self._waiting.pop(seq, None)
        if isinstance(result, Failure):
            return {"failure": result}
        return result


__all__ = ["SERVER_OPTIONS", "Failure", "Shard", "StageFailed"]

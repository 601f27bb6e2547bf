"""The main host's side: a Model whose layers run on Dask workers, one contiguous range per worker.

DistributedModel is a Model (tokenizer, chat templates, sessions, generate) whose forward pass embeds
the tokens here, sends the hidden states through the workers' stages (main → worker 1 → … → worker k →
main, one hop per link; a prompt batch travels whole) and applies the output head here. Its caches
(DistributedCache) have KVCache's interface, so Session, generate, perplexity and bench drive it
unchanged; each worker keeps its own layers' keys and values, the main host only the token ids.

Faults: a worker that dies or becomes unreachable mid-pass ends that call with WorkerLost, one line
naming the worker. The model stays usable: the next forward pass re-plans onto the workers still
alive (a new split, shards loaded again), and a cache whose keys and values were lost is rebuilt by
running its tokens again, so a session simply continues.

Threads: model work (embedding, head) runs on the calling thread; the Dask client's event loop runs
in its own thread and only moves messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
import uuid
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..kv_cache import ContextFull
from ..model import Model
from ..validate import check_context_memory
from .errors import DistributedError, HandshakeRefused, PlanError, SchedulerUnreachable, StageFailed, WorkerLost
from .files import ModelRef, model_ref
from .identity import identity, mismatch
from .plan import Stage, WorkerInfo, plan, sort_key
from .stage import layer_bytes, stage_tensor_names

DEFAULT_PORT = 8786
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler
START_TIMEOUT = 120.0  # seconds for a worker to start its shard and load its layers
WATCH_INTERVAL = 0.5  # while a pass runs longer than this, check (again) that its workers are still listed
REPLAY_BATCH = 512  # tokens per pass when a cache is rebuilt on a new plan


def scheduler_address(text: str) -> str:
    """--rpc as given (tcp://HOST:PORT, HOST:PORT or HOST) as a Dask address."""
    text = text.strip()
    if not text or "," in text:
        raise ValueError(f"--rpc {text!r}: give the one Dask scheduler's address, e.g. tcp://HOST:{DEFAULT_PORT}")
    if "://" not in text:
        text = "tcp://" + text
    scheme, _, rest = text.partition("://")
    if scheme not in ("tcp", "tls") or not rest:
        raise ValueError(f"--rpc {text!r}: expected tcp://HOST:PORT or tls://HOST:PORT")
    if not rest.rsplit(":", 1)[-1].isdigit() or rest.endswith("]"):
        rest = f"{rest}:{DEFAULT_PORT}"
    return f"{scheme}://{rest}"


@dataclass
class StageHandle:
    stage: Stage
    key: str
    future: object  # the actor's Future; releasing it ends the actor
    source: str = ""  # "file PATH" or "received"
    info: dict = field(default_factory=dict)  # what the worker's hello said

    @property
    def address(self) -> str:
        return self.stage.address

    def describe(self) -> str:
        return self.stage.describe()


class DistributedCache:
    """KVCache's interface for a sequence whose keys and values live on the workers.

    The main host keeps the token at each position, so that a cache whose workers were lost can be
    rebuilt on the next plan; `valid` says up to where the current plan's workers hold it."""

    _ids = itertools.count(1)

    def __init__(self, n_ctx: int):
        self.id = next(self._ids)
        self.n_ctx = n_ctx
        self.n_past = 0
        self.first_layer = 0
        self.tokens = np.zeros(n_ctx, dtype=np.int64)
        self.epoch = -1  # the plan whose workers hold positions 0 .. valid-1
        self.valid = 0

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_past

    def check_room(self, pos0: int, n: int) -> None:
        if pos0 + n > self.n_ctx:
            raise ContextFull(f"context is full: {pos0 + n} tokens do not fit in a context of {self.n_ctx} (-c)")

    def trim(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"cannot trim the cache to {n} positions")
        self.n_past = min(self.n_past, n)

    def clear(self) -> None:
        self.n_past = 0


class HopStats:
    """Where the time of each pass went: per link, the seconds from send to receive; per stage, the
    seconds of compute. Passes of one token (decode) and of more (prompt) are kept apart.

    Link times come from wall clocks on both ends, exact on one host and as good as the hosts' clock
    sync between hosts; `overhead` (the pass's time on the main host minus the stages' compute) needs
    no synchronised clocks and is the sum of the link times."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.passes: dict[str, list[tuple[list[float], list[float], float]]] = {"decode": [], "prompt": []}

    def add(self, n_tokens: int, stamps: list[float], received: float) -> None:
        # stamps: sent, then (received, done) per stage; received: back on the main host
        sent, per_stage = stamps[0], stamps[1:]
        arrivals, departures = per_stage[0::2], per_stage[1::2]
        hops = [arrivals[0] - sent] + [a - d for a, d in zip(arrivals[1:], departures[:-1], strict=True)]
        hops.append(received - departures[-1])
        compute = [d - a for a, d in zip(arrivals, departures, strict=True)]
        self.passes["decode" if n_tokens == 1 else "prompt"].append((hops, compute, received - sent))

    def summary(self, names: list[str]) -> list[dict]:
        """Rows: kind, what (a link or a stage), median and mean milliseconds, passes."""
        rows = []
        for kind, passes in self.passes.items():
            if not passes:
                continue
            hops = np.array([p[0] for p in passes]) * 1e3
            compute = np.array([p[1] for p in passes]) * 1e3
            wall = np.array([p[2] for p in passes]) * 1e3
            labels = ["main → " + names[0]] + [f"{a} → {b}" for a, b in zip(names, names[1:], strict=False)]
            labels.append(names[-1] + " → main")
            for i, label in enumerate(labels):
                rows.append(_row(kind, f"hop {label}", hops[:, i], len(passes)))
            for i, name in enumerate(names):
                rows.append(_row(kind, f"compute {name}", compute[:, i], len(passes)))
            rows.append(_row(kind, "overhead (pass - compute)", wall - compute.sum(axis=1), len(passes)))
        return rows


def _row(kind: str, what: str, ms: np.ndarray, n: int) -> dict:
    return {"kind": kind, "what": what, "median_ms": float(np.median(ms)), "mean_ms": float(np.mean(ms)), "passes": n}


class DistributedModel(Model):
    """A model whose layers run on the workers of the Dask scheduler at `scheduler` (--rpc).

    tensor_split: one ratio per worker in address order (-ts); None splits by the workers' free memory.
    """

    def __init__(self, path, scheduler: str, tensor_split: list[float] | None = None, options=None,
                 connect_timeout: float = CONNECT_TIMEOUT, start_timeout: float = START_TIMEOUT):
        self.scheduler = scheduler_address(scheduler)
        self.tensor_split = tensor_split
        self.start_timeout = start_timeout
        self.hops = HopStats()
        self.stages: list[StageHandle] = []
        self.epoch = 0
        self._broken = True
        self._seq = itertools.count(1)
        self.client = _connect(self.scheduler, connect_timeout)
        try:
            super().__init__(path, options)
            self.ref: ModelRef = model_ref(self.path)
            self._plan()
        except BaseException:
            self.close()
            raise

    # --- the plan ---------------------------------------------------------------------------------

    def _plan(self) -> None:
        """Handshake with every live worker, split the layers, load each stage (file or wire)."""
        self._release()
        addresses = self._live_workers()
        if not addresses:
            raise SchedulerUnreachable(f"the scheduler at {self.scheduler} has no workers; start one on each host "
                                       f"with: llamapy rpc-server --scheduler {self.scheduler}")
        ts = self.tensor_split
        if ts is not None and self.epoch > 0 and len(ts) > len(addresses):
            ts = None  # a worker was lost: its ratio has no owner any more, so split by memory
        handles = self._start_shards(addresses)
        try:
            ours = identity()
            for h in handles:
                refusal = mismatch(h.address, h.info, ours)
                if refusal:
                    raise HandshakeRefused(refusal)
            infos = [WorkerInfo(h.address, h.info["free_memory"]) for h in handles]
            stages = plan(self.config.n_layer, infos, ts, layer_bytes(self.gguf.tensors, self.config.n_layer))
            by_address = {h.address: h for h in handles}
            used = []
            for s in stages:
                h = by_address.pop(s.address)
                h.stage = s
                used.append(h)
            self._cancel(list(by_address.values()))  # workers given no layers
            self.stages = used
            self._load_stages()
        except BaseException:
            self._cancel(handles)
            self.stages = []
            raise
        self.epoch += 1
        self._broken = False

    def _live_workers(self) -> list[str]:
        try:
            listed = list(self.client.scheduler_info(n_workers=-1)["workers"])
        except Exception as e:
            raise SchedulerUnreachable(f"the scheduler at {self.scheduler} does not answer: {_reason(e)}") from None

        async def alive(address: str) -> bool:
            try:
                await asyncio.wait_for(self.client.rpc(address).identity(), 5.0)
                return True
            except Exception:
                return False

        async def probe():
            return await asyncio.gather(*(alive(a) for a in listed))

        answers = self.client.sync(probe)
        return sorted((a for a, ok in zip(listed, answers, strict=True) if ok), key=sort_key)

    def _start_shards(self, addresses: list[str]) -> list[StageHandle]:
        from .shard import Shard

        futures = []
        for address in addresses:
            key = f"llamapy-shard-{uuid.uuid4().hex[:12]}"
            futures.append(self.client.submit(Shard, actor=True, workers=[address], allow_other_workers=False,
                                              pure=False, key=key))
        handles = []
        try:
            for address, f in zip(addresses, futures, strict=True):
                try:
                    f.result(timeout=self.start_timeout)
                except TimeoutError:
                    raise HandshakeRefused(f"worker {address} did not start llamapy's shard within "
                                           f"{self.start_timeout:.0f} s") from None
                except Exception as e:
                    raise HandshakeRefused(f"worker {address} cannot run llamapy's shard ({_reason(e)}); install "
                                           f"llamapy {identity()['version']} there") from None
                handles.append(StageHandle(Stage(address, range(0)), f.key, f))
            for h, info in zip(handles, self._ask_each(handles, "hello"), strict=True):
                h.info = info
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return handles

    def _load_stages(self) -> None:
        ours = identity()
        layers = {h.address: (h.stage.layers.start, h.stage.layers.stop) for h in self.stages}
        answers = self._ask_each(self.stages, "open", lambda h: (ours, self.ref, layers[h.address], self._engine()))
        for h, answer in zip(self.stages, answers, strict=True):
            if answer["source"] == "wire":
                answer = self._send_layers(h)
            h.source = answer["source"]

    def _send_layers(self, h: StageHandle) -> dict:
        """The stage's tensors over the wire, a layer at a time, then the stage built from them."""
        tensors = self.gguf.tensors
        names = stage_tensor_names(tensors, h.stage.layers)
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(name.split(".")[1] if name.startswith("blk.") else "", []).append(name)
        for group in groups.values():
            part = {n: self.gguf.raw(n) for n in group}
            self._ask_each([h], "receive", lambda h, part=part: (part,))
        layers = (h.stage.layers.start, h.stage.layers.stop)
        return self._ask_each([h], "build", lambda h: (self.ref.name, self.config, dict(tensors), layers,
                                                       self._engine()))[0]

    def _engine(self) -> dict:
        """What the stages must share with this host to compute the same numbers (-ctk/-ctv, -fa)."""
        return {"cache_types": tuple(getattr(self.net, "cache_types", ("f16", "f16"))),
                "flash_attn": bool(getattr(self.net, "flash_attn", True))}

    def _ask_each(self, handles: list[StageHandle], function: str, args=lambda h: ()) -> list:
        """function(*args(h)) on every shard at once, waiting for all (setup calls, not the forward pass)."""
        async def each():
            calls = [self._call(h, function, *args(h)) for h in handles]
            return await asyncio.wait_for(asyncio.gather(*calls), self.start_timeout)

        try:
            return self.client.sync(each)
        except TimeoutError:
            raise StageFailed(f"the workers did not answer {function} within {self.start_timeout:.0f} s") from None

    def _cancel(self, handles: list[StageHandle]) -> None:
        futures = [h.future for h in handles]
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:
                pass

    def _release(self) -> None:
        self._cancel(self.stages)
        self.stages = []

    def describe_plan(self) -> list[str]:
        """One line per stage: worker, layers, where its weights came from."""
        return [f"{h.describe()}: {h.source}" for h in self.stages]

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            try:
                self._release()
                client.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- caches -----------------------------------------------------------------------------------

    def new_caches(self, n: int, n_ctx: int) -> list[DistributedCache]:
        """Caches live on the workers, one per sequence: there is no local pool to share."""
        return [self.new_cache(n_ctx) for _ in range(n)]

    def new_cache(self, n_ctx: int) -> DistributedCache:
        check_context_memory(self.config, n_ctx, n_layer=0)
        self._ensure_plan()
        cache = DistributedCache(n_ctx)
        self._on_stages("open_cache", cache.id, n_ctx)
        cache.epoch, cache.valid = self.epoch, 0
        weakref.finalize(cache, _drop_cache, weakref.ref(self), cache.id)
        return cache

    def _on_stages(self, function: str, *args) -> list:
        return self._ask_each(self.stages, function, lambda h: args)

    def _ensure_plan(self) -> None:
        if self.client is None:
            raise DistributedError("the distributed model is closed")
        if self._broken:
            self._plan()

    # --- the forward pass -------------------------------------------------------------------------

    def forward(self, ids, cache: DistributedCache, all_logits: bool = False,
                logits_from: int | None = None) -> np.ndarray:
        if not isinstance(cache, DistributedCache):
            raise ValueError("a distributed model runs only on its own caches (model.new_cache)")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ValueError("every sequence in a batch needs at least one token")
        pos = cache.n_past
        cache.check_room(pos, len(ids))
        self._ensure_plan()
        n, governor = self._main_threads(len(ids))
        with _threads(n):  # -t/-tb: this host's part, the embeddings and the head
            self._restore(cache, pos)
            keep = None if all_logits else (len(ids) - 1 if logits_from is None else logits_from)
            start = time.perf_counter()
            x = self.net.embed(ids)
            here = time.perf_counter() - start
            x = self._pass(x, cache, pos, keep)
            cache.tokens[pos:pos + len(ids)] = ids
            cache.n_past = cache.valid = pos + len(ids)
            start = time.perf_counter()
            logits = self.net.head(x)
            here += time.perf_counter() - start
        if governor is not None:
            governor.record(n, here)
        return logits

    def _main_threads(self, n_tokens: int):
        """This host's thread count for a pass, and the governor judging it (single tokens, as Model does:
        under load one thread can beat several; llamapy/threads.py); only this host's work is timed."""
        import numba

        from ..threads import ThreadGovernor

        requested = self.options.threads_for(n_tokens) or numba.get_num_threads()
        requested = min(requested, numba.config.NUMBA_NUM_THREADS)
        if n_tokens != 1 or requested <= 1 or not getattr(self.options, "adaptive_threads", False):
            return requested, None
        governor = self._governors.setdefault(requested, ThreadGovernor(requested))
        return governor.choose(), governor

    def _restore(self, cache: DistributedCache, pos: int) -> None:
        """Make the current plan's workers hold the cache's first pos tokens (after a re-plan)."""
        if cache.epoch != self.epoch:
            cache.epoch, cache.valid = self.epoch, 0
        start = min(cache.valid, pos)
        for i in range(start, pos, REPLAY_BATCH):
            chunk = cache.tokens[i:min(pos, i + REPLAY_BATCH)]
            self._pass(self.net.embed(chunk), cache, i, len(chunk) - 1)
            cache.valid = i + len(chunk)

    def _pass(self, x: np.ndarray, cache: DistributedCache, pos: int, keep: int | None) -> np.ndarray:
        stages = self.stages
        job = {
            "cache": cache.id, "n_ctx": cache.n_ctx, "n_past": pos, "x": np.ascontiguousarray(x, np.float32),
            "seq": next(self._seq), "route": [(h.address, h.key) for h in stages[1:]],
            "last": (stages[-1].address, stages[-1].key), "reply": len(stages) == 1, "keep_from": keep,
            "stamps": [],
        }
        out = self.client.sync(self._run_pass, job)
        self.hops.add(len(x), out["stamps"], out["received"])
        return out["x"]

    async def _run_pass(self, job: dict) -> dict:
        first, last = self.stages[0], self.stages[-1]
        job["stamps"] = [time.time()]
        if job["reply"]:
            out = await self._call(first, "run", job)
        else:
            collect = asyncio.ensure_future(self._call(last, "collect", job["seq"]))
            ack = asyncio.ensure_future(self._call(first, "run", job))
            try:
                out = await self._wait_pass(ack, collect)
            finally:
                for f in (ack, collect):
                    if not f.done():
                        f.cancel()
        out["received"] = time.time()
        if "failure" in out:
            raise self._failure(out["failure"])
        return out

    async def _wait_pass(self, ack, collect) -> dict:
        pending = {ack, collect}
        while True:
            done, pending = await asyncio.wait(pending, timeout=WATCH_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
            if collect.done():
                return collect.result()
            if not done:
                await self._watch()

    async def _watch(self) -> None:
        """A pass is taking long: make sure each of its workers is still known to the scheduler."""
        try:
            known = (await self.client.scheduler.identity(n_workers=-1))["workers"]
        except Exception:
            return  # the scheduler being slow is no proof of anything
        for h in self.stages:
            if h.address not in known:
                raise self._lost(h, "the scheduler no longer lists it")

    async def _call(self, h: StageHandle, function: str, *args):
        from distributed.protocol import to_serialize

        try:
            reply = await self.client.rpc(h.address).actor_execute(
                actor=h.key, function=function, args=[to_serialize(a) for a in args], kwargs={})
        except (TimeoutError, OSError) as e:
            raise self._lost(h, e) from None
        except KeyError as e:  # the worker no longer has the actor: it was restarted
            raise self._lost(h, f"it no longer holds its shard ({e})") from None
        if reply.get("status") != "OK":
            error = reply.get("exception")
            if isinstance(error, (DistributedError, ValueError)):
                raise error
            raise StageFailed(f"worker {h.describe()}: {_reason(error)}")
        return reply["result"]

    def _failure(self, failure) -> Exception:
        if failure.lost is not None:
            h = next((h for h in self.stages if h.address == failure.lost), None)
            if h is not None:
                return self._lost(h, f"unreachable from {failure.where}: {failure.error}")
        error = failure.error
        if isinstance(error, (DistributedError, ValueError)):
            return error
        where = next((h.describe() for h in self.stages if h.address == failure.where), failure.where)
        return StageFailed(f"worker {where}: {_reason(error)}")

    def _lost(self, h: StageHandle, reason) -> WorkerLost:
        self._broken = True
        reason = reason if isinstance(reason, str) else _comm_reason(reason)
        return WorkerLost(f"worker {h.describe()} was lost ({reason}); the request is cancelled and the next "
                          "one re-plans onto the remaining workers", h.address)

    # --- reports ----------------------------------------------------------------------------------

    def stage_names(self) -> list[str]:
        return [f"w{i + 1}" for i in range(len(self.stages))]

    def hop_summary(self) -> list[dict]:
        return self.hops.summary(self.stage_names())


@contextlib.contextmanager
def _threads(n: int):
    """numba's thread count for the block, restored after."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _connect(address: str, timeout: float):
    from distributed import Client

    host, _, port = address.partition("://")[2].rpartition(":")
    try:  # a closed port is refused at once, where Dask's client would retry until its timeout
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5.0)).close()
    except OSError as e:
        raise SchedulerUnreachable(f"cannot reach the Dask scheduler at {address} (--rpc): "
                                   f"{e.strerror or _reason(e)}") from None
    try:
        return Client(address, timeout=timeout, direct_to_workers=True, set_as_default=False)
    except Exception as e:
        raise SchedulerUnreachable(f"cannot reach the Dask scheduler at {address} (--rpc): {_reason(e)}") from None


def _drop_cache(model_ref: weakref.ref, cache_id: int) -> None:
    model = model_ref()
    client = getattr(model, "client", None)
    if model is None or client is None or model._broken:
        return

    async def drop():
        for h in list(model.stages):
            try:
                await model._call(h, "drop_cache", cache_id)
            except Exception:
                pass

    try:
        client.loop.add_callback(drop)
    except Exception:
        pass


def _comm_reason(e: BaseException) -> str:
    """A failed call to a worker, in a few words."""
    seen = e
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, TimeoutError):
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    if type(e).__name__ == "CommClosedError" or isinstance(e, (BrokenPipeError, ConnectionError)):
        return "connection closed"
    return _reason(e)


def _reason(e) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["DistributedCache", "DistributedModel", "HopStats", "PlanError", "scheduler_address"]

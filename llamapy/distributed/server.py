"""The cluster's processes: a Dask scheduler, and a Dask worker that offers llamapy's shards.

Both bind to 127.0.0.1 unless told otherwise, with the dashboard off unless asked for (and then on
the same host). A Dask cluster runs whatever code its clients send (pickled functions), so anything
that can reach the scheduler or a worker can run code as its user: bind to other addresses only on a
network you trust (docs/distributed.md). The commands print; these functions only report through
the callbacks they are given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import tempfile
from collections.abc import Callable
from importlib.util import find_spec

from .shard import SERVER_OPTIONS

DEFAULT_SCHEDULER = "tcp://127.0.0.1:8786"

# llama.cpp's rpc-server prints this when bound to anything but 127.0.0.1.
SECURITY_WARNING = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: Host ('{host}') is != '127.0.0.1'
         Never expose the RPC server to an open network!
         A Dask {what} runs any code a client sends it.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


class ServerError(RuntimeError):
    """A server could not start or lost its scheduler; one line."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def security_warning(host: str, what: str) -> str | None:
    return None if host == "127.0.0.1" else SECURITY_WARNING.format(host=host, what=what)


def check_bind(host: str, port: int) -> None:
    """Fail early, with one line, for a host that is not ours or a port that is taken."""
    if not 0 <= port <= 65535:
        raise ServerError(f"port {port} is not in 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServerError(f"cannot bind to {host!r}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ServerError(f"cannot bind to {host}:{port}: {e.strerror}") from None


def _check_resolves(address: str) -> None:
    """A scheduler host name that does not resolve fails now, not after --connect-timeout."""
    host = address.partition("://")[2].rpartition(":")[0].strip("[]")
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise ServerError(f"cannot resolve the scheduler's host {host!r} (--scheduler): {e.strerror}") from None


def dashboard_options(host: str, dashboard: bool, dashboard_port: int) -> dict:
    """Dask always runs a small HTTP server beside each process; with the dashboard off it serves only
    /health, on a free port of the same host (rather than Dask's default :8787 and its info pages)."""
    if not dashboard:
        return {"dashboard": False, "dashboard_address": f"{host}:0"}
    if find_spec("bokeh") is None:
        raise ServerError("the dashboard needs bokeh: pip install 'bokeh>=3.1'")
    return {"dashboard": True, "dashboard_address": f"{host}:{dashboard_port}"}


def _http_routes(dashboard: bool):
    import dask

    if dashboard:
        return dask.config.set({})
    health = ["distributed.http.health"]
    return dask.config.set({"distributed.scheduler.http.routes": health, "distributed.worker.http.routes": health})


def quiet_logs(verbose: bool = False) -> None:
    """Dask's INFO lines off (its warnings and errors stay), unless verbose."""
    import distributed  # noqa: F401  (configures Dask's loggers, which this then adjusts)

    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.ERROR)


async def _until_stopped(server, stop: asyncio.Event) -> bool:
    """Wait for a signal (True) or for the server to end by itself (False)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    stopped = asyncio.ensure_future(stop.wait())
    finished = asyncio.ensure_future(server.finished())
    await asyncio.wait({stopped, finished}, return_when=asyncio.FIRST_COMPLETED)
    for f in (stopped, finished):
        f.cancel()
    return stop.is_set()


async def run_scheduler(host: str, port: int, dashboard: bool = False, dashboard_port: int = 8787,
                        ready: Callable[[str], None] = lambda address: None) -> bool:
    """Serve a Dask scheduler until a signal (True) or until it ends by itself (False)."""
    from distributed import Scheduler

    check_bind(host, port)
    options = dashboard_options(host, dashboard, dashboard_port)
    with _http_routes(dashboard):
        scheduler = Scheduler(host=host, port=port, **options)
        await scheduler
    try:
        ready(scheduler.address)
        return await _until_stopped(scheduler, asyncio.Event())
    finally:
        await scheduler.close()


async def run_worker(scheduler: str, host: str, port: int = 0, nthreads: int | None = None,
                     mem: int | None = None, model_dirs: list[str] = (), local_files: bool = True,
                     name: str | None = None, dashboard: bool = False, dashboard_port: int = 0,
                     connect_timeout: float = 60.0, ready: Callable[[str], None] = lambda address: None) -> bool:
    """Serve a Dask worker offering llamapy's shards until a signal (True) or until it ends (False).

    One task thread: the shards run their model work on the worker's single actor thread, with
    nthreads numba threads."""
    from distributed import Worker

    check_bind(host, port)
    _check_resolves(scheduler)
    options = dashboard_options(host, dashboard, dashboard_port)
    SERVER_OPTIONS.update(mem=mem, nthreads=nthreads, model_dirs=list(model_dirs), local_files=local_files)
    with tempfile.TemporaryDirectory(prefix="llamapy-rpc-") as workdir:
        with _http_routes(dashboard):
            # memory_limit=0: no Dask memory manager, which would pause a worker whose layers fill its RAM
            worker = Worker(scheduler, host=host, port=port, nthreads=1, name=name, resources={"llamapy": 1},
                            death_timeout=connect_timeout, local_directory=workdir, memory_limit=0, **options)
        try:
            await worker
        except Exception as e:
            await worker.close()
            raise ServerError(f"no Dask scheduler answered at {scheduler} within {connect_timeout:.0f} s "
                              f"(--scheduler); start one with: llamapy rpc-scheduler ({type(e).__name__})") from None
        try:
            ready(worker.address)
            return await _until_stopped(worker, asyncio.Event())
        finally:
            await worker.close()

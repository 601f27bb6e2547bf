"""`llamapy rpc-server`: a Dask worker that holds layers of models for `--rpc` clients, as llama.cpp's rpc-server.

Lines about the server go to stderr; it runs until Ctrl-C or SIGTERM (exit 0), and exits 1 with one
line when it cannot start or its scheduler goes away.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from ._common import fail, user_errors

HELP = ("A Dask worker offering llamapy's model shards to `--rpc` clients, as llama.cpp's rpc-server. It joins "
        "the scheduler at --scheduler (start one with `llamapy rpc-scheduler`, or `dask scheduler`).\n\n"
        "A client's layers are loaded from this host's own copy of the GGUF when it has one with the same sha256 "
        "(at the client's path, in --model-dir, beside the default model, or in the Hugging Face cache), else "
        "they are sent over the network.\n\n"
        "Binds to 127.0.0.1 unless --host says otherwise: a Dask cluster runs any code its clients send, so "
        "expose it only on a network you trust.")


ModelDirs = Annotated[list[str] | None, typer.Option("--model-dir", help="Folder to look for clients' GGUF files "
                                                   "in (repeatable).")]


@user_errors
def rpc_server(
    scheduler: str = typer.Option("tcp://127.0.0.1:8786", "-s", "--scheduler", help="The Dask scheduler to join."),
    host: str = typer.Option("127.0.0.1", "-H", "--host", help="Address to bind to (and to be reached at)."),
    port: int = typer.Option(0, "-p", "--port", help="Port to bind to (default: any free one)."),
    mem: int = typer.Option(None, "-m", "--mem", help="Memory offered for layers, in MB (default: the free "
                            "memory); the default split gives each worker layers in proportion to it."),
    nthreads: int = typer.Option(None, "-t", "--nthreads", "--threads", help="Threads for model work "
                                 "(default: all cores)."),
    model_dir: ModelDirs = None,
    no_local_models: bool = typer.Option(False, "--no-local-models", help="Never open model files here: always "
                                         "receive the layers over the network."),
    name: str = typer.Option(None, "--name", help="The worker's name in the cluster."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Serve Dask's worker dashboard (on --host)."),
    dashboard_port: int = typer.Option(0, "--dashboard-port", help="Port of the dashboard (default: any)."),
    connect_timeout: float = typer.Option(60.0, "--connect-timeout", help="Seconds to wait for the scheduler."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Dask's own log lines on stderr."),
) -> None:
    from llamapy.distributed.client import scheduler_address
    from llamapy.distributed.server import ServerError, quiet_logs, run_worker, security_warning

    if mem is not None and mem <= 0:
        fail(f"--mem must be a positive number of MB, got {mem}")
    if nthreads is not None and nthreads <= 0:
        fail(f"--nthreads must be positive, got {nthreads}")
    address = scheduler_address(scheduler)
    warning = security_warning(host, "worker")
    if warning:
        print(warning, file=sys.stderr)
    quiet_logs(verbose)

    def ready(worker_address: str) -> None:
        print(f"llamapy rpc-server: worker {worker_address} joined the scheduler at {address}", file=sys.stderr,
              flush=True)

    try:
        stopped = asyncio.run(run_worker(address, host, port, nthreads=nthreads,
                                         mem=mem * 2**20 if mem else None, model_dirs=model_dir or [],
                                         local_files=not no_local_models, name=name, dashboard=dashboard,
                                         dashboard_port=dashboard_port, connect_timeout=connect_timeout,
                                         ready=ready))
    except ServerError as e:
        fail(str(e))
    if not stopped:
        fail(f"the worker stopped: the scheduler at {address} closed it or went away")


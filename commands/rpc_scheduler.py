"""`llamapy rpc-scheduler`: the Dask scheduler that `rpc-server` workers join and `--rpc` clients reach."""

from __future__ import annotations

import asyncio
import sys

import typer

from ._common import fail, user_errors


@user_errors
def rpc_scheduler(
    host: str = typer.Option("127.0.0.1", "-H", "--host", help="Address to bind to."),
    port: int = typer.Option(8786, "-p", "--port", help="Port to bind to (0: any free one)."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Serve Dask's dashboard (on --host)."),
    dashboard_port: int = typer.Option(8787, "--dashboard-port", help="Port of the dashboard."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Dask's own log lines on stderr."),
) -> None:
    from llamapy.distributed.server import ServerError, quiet_logs, run_scheduler, security_warning

    warning = security_warning(host, "scheduler")
    if warning:
        print(warning, file=sys.stderr)
    quiet_logs(verbose)

    def ready(address: str) -> None:
        print(f"llamapy rpc-scheduler: listening on {address}", file=sys.stderr, flush=True)

    try:
        stopped = asyncio.run(run_scheduler(host, port, dashboard=dashboard, dashboard_port=dashboard_port,
                                            ready=ready))
    except ServerError as e:
        fail(str(e))
    if not stopped:
        fail("the scheduler stopped")

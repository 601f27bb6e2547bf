"""The distributed engine's errors: each one a single line that names the scheduler or the worker.

Kept free of Dask imports so that commands can catch them without loading the cluster client.
"""

from __future__ import annotations


class DistributedError(RuntimeError):
    """Something about the cluster (--rpc) went wrong; the message says what and where."""


class SchedulerUnreachable(DistributedError):
    """No Dask scheduler answered at the --rpc address, or it has no usable workers."""


class HandshakeRefused(DistributedError):
    """A worker runs another llamapy version or kernel build, or cannot run llamapy at all."""


class PlanError(DistributedError):
    """The layers cannot be split as asked (-ts), or do not fit the workers' memory."""


class WorkerLost(DistributedError):
    """A worker died or became unreachable during a request; the next request re-plans without it."""

    def __init__(self, message: str, address: str):
        super().__init__(message)
        self.address = address


class StageFailed(DistributedError):
    """A worker reported an error of its own while running its layers."""


__all__ = ["DistributedError", "HandshakeRefused", "PlanError", "SchedulerUnreachable", "StageFailed",
           "WorkerLost"]

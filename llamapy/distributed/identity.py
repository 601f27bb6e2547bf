"""Who a process is, for the handshake: llamapy's version and the build of the code that does arithmetic.

Two hosts give bit-identical hidden states only if they run the same kernels. The kernel build id is a
hash of the sources that compute (kernels, quants, models, the KV cache) and of the compiler stack
(numba, llvmlite, numpy, Python's minor version); a worker whose id differs from the main host's is
refused. The instruction set is not part of it: the kernels give the same numbers on every x86 ISA
(quants/_isa.py), only at different speeds.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import sys
from pathlib import Path

from .. import __version__

_PACKAGE = Path(__file__).resolve().parent.parent
_NUMERIC_SOURCES = ("kernels", "quants", "models", "kv_cache.py")


@functools.cache
def kernel_build_id() -> str:
    import llvmlite
    import numba
    import numpy

    digest = hashlib.sha256()
    for entry in _NUMERIC_SOURCES:
        path = _PACKAGE / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(_PACKAGE)).encode() + b"\0")
            digest.update(f.read_bytes())
    stack = f"numba {numba.__version__} llvmlite {llvmlite.__version__} numpy {numpy.__version__} " \
            f"python {sys.version_info.major}.{sys.version_info.minor}"
    digest.update(stack.encode())
    return digest.hexdigest()[:12]


def identity() -> dict:
    """This process, as the handshake compares it."""
    return {"version": __version__, "build": kernel_build_id()}


def describe_host() -> dict:
    """What a worker says about itself beyond its identity: for messages and `bench --rpc`."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "cpu": platform.machine()}


def mismatch(worker: str, theirs: dict, ours: dict) -> str | None:
    """The one line refusing a worker whose identity differs from ours, or None when they agree."""
    if theirs.get("version") == ours["version"] and theirs.get("build") == ours["build"]:
        return None
    return (f"worker {worker} runs llamapy {theirs.get('version', '?')} (kernel build {theirs.get('build', '?')}), "
            f"this host llamapy {ours['version']} (kernel build {ours['build']}): refusing it; install the same "
            "llamapy on every host")

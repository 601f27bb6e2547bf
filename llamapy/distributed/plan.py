"""Which worker runs which layers: llama.cpp's layer split, over the workers of a Dask cluster.

llama.cpp gives each device a contiguous run of layers in proportion to a weight per device: its free
memory by default, or the -ts/--tensor-split ratios. The weights are summed into cut points (float32,
as llama.cpp) and layer il goes to the first device whose cut point exceeds il / n. llama.cpp counts its
output layer as one more layer at the end; here the output head stays on the main host, so n is the
number of repeating layers and a 1,1 split of 30 layers is 15 + 15.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import PlanError


@dataclass(frozen=True)
class WorkerInfo:
    address: str  # tcp://HOST:PORT, the Dask worker's address
    free_memory: int  # bytes it offers (rpc-server --mem, else its free memory)


@dataclass(frozen=True)
class Stage:
    address: str
    layers: range

    def describe(self) -> str:
        return f"{self.address} (layers {self.layers.start}-{self.layers.stop - 1})"


def parse_tensor_split(text: str | None) -> list[float] | None:
    """-ts 3,1 (or 3/1): one non-negative ratio per worker, in the workers' order; None when not given."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in re.split(r"[,/]", text)]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PlanError(f"-ts {text!r}: expected ratios such as 1,1 or 3,1") from None
    if any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise PlanError(f"-ts {text!r}: ratios must be non-negative with at least one above zero")
    return values


def layer_split(n_layer: int, weights: list[float]) -> list[range]:
    """Contiguous layer ranges, one per weight (empty for a zero weight), as llama.cpp assigns them."""
    splits = np.cumsum(np.asarray(weights, dtype=np.float32), dtype=np.float32)
    splits = splits / splits[-1]
    owner = [int(np.searchsorted(splits, np.float32(il) / np.float32(n_layer), side="right")) for il in range(n_layer)]
    owner = [min(o, len(weights) - 1) for o in owner]
    ranges = []
    for i in range(len(weights)):
        mine = [il for il, o in enumerate(owner) if o == i]
        ranges.append(range(mine[0], mine[-1] + 1) if mine else range(0))
    return ranges


def plan(n_layer: int, workers: list[WorkerInfo], tensor_split: list[float] | None = None,
         layer_bytes: list[int] | None = None) -> list[Stage]:
    """The pipeline: workers in address order, each with its layers; workers given no layer are left out.

    layer_bytes (one per layer), when known, is checked against each worker's memory."""
    if not workers:
        raise PlanError("no workers to split the layers over")
    if tensor_split is None:
        weights = [float(w.free_memory) for w in workers]
        if sum(weights) <= 0:
            weights = [1.0] * len(workers)
    else:
        if len(tensor_split) > len(workers):
            raise PlanError(f"-ts has {len(tensor_split)} ratios but the cluster has {len(workers)} worker(s)")
        weights = list(tensor_split) + [0.0] * (len(workers) - len(tensor_split))
    stages = [Stage(w.address, r) for w, r in zip(workers, layer_split(n_layer, weights), strict=True) if len(r)]
    if layer_bytes is not None:
        free = {w.address: w.free_memory for w in workers}
        for s in stages:
            need = sum(layer_bytes[il] for il in s.layers)
            if free[s.address] and need > free[s.address]:
                raise PlanError(f"worker {s.describe()} needs {_mib(need)} for its layers but offers "
                                f"{_mib(free[s.address])} (rpc-server --mem); use -ts to give it fewer")
    return stages


def sort_key(address: str) -> tuple:
    """Workers in the order of their addresses, ports compared as numbers."""
    host, _, port = address.rpartition(":")
    return (host, int(port) if port.isdigit() else 0, address)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"

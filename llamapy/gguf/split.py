"""Models split by llama-gguf-split: `NAME-00001-of-0000N.gguf` … read as one GGUF.

Each shard is a GGUF of its own carrying `split.no` (0-based), `split.count` and
`split.tensors.count`; the first shard holds the model's metadata, every shard holds some tensors.
SplitGGUF composes the shards' GGUFFile objects behind GGUFFile's interface (kv, tensors, raw, array,
get, path, close), so the rest of the code does not know a model was split.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .reader import GGUFError, GGUFFile

SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def split_name(prefix: str, no: int, count: int) -> str:
    """llama.cpp's shard file name: no is 1-based here, as in the name."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def split_paths(path: str | os.PathLike) -> list[Path] | None:
    """Every shard's path when path names a shard of a split model, else None."""
    path = Path(path)
    match = SPLIT_NAME.match(path.name)
    if match is None or int(match["count"]) < 2:
        return None
    count = int(match["count"])
    return [path.with_name(split_name(match["prefix"], i, count)) for i in range(1, count + 1)]


def open_gguf(path: str | os.PathLike, use_mmap: bool = True, use_mlock: bool = False):
    """A GGUFFile, or a SplitGGUF when path is a shard of a split model (any shard names them all)."""
    paths = split_paths(path)
    if paths is None:
        return GGUFFile(path, use_mmap, use_mlock)
    return SplitGGUF(paths, use_mmap, use_mlock)


class SplitGGUF:
    """Several shards of one model, seen as one GGUF file."""

    def __init__(self, paths: list[str | os.PathLike], use_mmap: bool = True, use_mlock: bool = False):
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"split model is missing {len(missing)} of {len(paths)} shards: {missing[0]}")
        self.shards: list[GGUFFile] = []
        try:
            for p in paths:
                self.shards.append(GGUFFile(p, use_mmap, use_mlock))
            self._check()
        except BaseException:
            self.close()
            raise
        first = self.shards[0]
        self.path = first.path
        self.mlock_error = next((s.mlock_error for s in self.shards if s.mlock_error), None)
        self.kv = {k: v for k, v in first.kv.items() if k not in SPLIT_KEYS}
        self.tensors = {}
        self._owner: dict[str, GGUFFile] = {}
        for shard in self.shards:
            for name, info in shard.tensors.items():
                if name in self.tensors:
                    raise GGUFError(f"{shard.path}: tensor {name} is also in an earlier shard")
                self.tensors[name] = info
                self._owner[name] = shard

    def _check(self) -> None:
        count = len(self.shards)
        for i, shard in enumerate(self.shards):
            no, n = shard.kv.get("split.no"), shard.kv.get("split.count")
            if no != i or n != count:
                raise GGUFError(f"{shard.path}: split.no={no}, split.count={n}; expected shard {i} of {count}")
        expected = self.shards[0].kv.get("split.tensors.count")
        found = sum(len(s.tensors) for s in self.shards)
        if expected is not None and expected != found:
            raise GGUFError(f"{self.shards[0].path}: split.tensors.count is {expected} but the shards hold {found}")

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shards)

    def get(self, key: str, default=None):
        return self.kv.get(key, default)

    def raw(self, name: str) -> np.ndarray:
        return self._owner[name].raw(name)

    def array(self, name: str) -> np.ndarray:
        return self._owner[name].array(name)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

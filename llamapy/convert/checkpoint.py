"""A Hugging Face checkpoint folder: config.json and its safetensors, read one tensor at a time.

Only each .safetensors file's JSON header is parsed up front; a tensor's bytes are read from its shard
when it is asked for and freed once written, so a checkpoint larger than memory converts. (Reads rather
than a memory map: pages of a map stay in the process's resident set until it is unmapped.)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class CheckpointError(ValueError):
    """The folder is not a checkpoint we can convert (missing config, shard or tensor; bad header)."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype: F32, F16 or BF16
    shape: tuple[int, ...]  # PyTorch order, outermost first
    shard: Path
    start: int  # byte range inside the shard's data section
    end: int


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a Hugging Face checkpoint folder)")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if "text_config" in config:  # multimodal wrappers keep the language model's numbers here
        config = {**config, **config["text_config"]}
    return config


class Checkpoint:
    """The tensors of one checkpoint, by name, across its shards."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{folder}: not a directory")
        self.config = read_config(self.folder)
        self.entries: dict[str, TensorEntry] = {}
        self._data_start: dict[Path, int] = {}
        for shard in self._shards():
            for entry in _read_header(shard):
                self.entries[entry.name] = entry

    def _shards(self) -> list[Path]:
        index = self.folder / INDEX_NAME
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no weight_map")
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (self.folder / n).is_file()]
            if missing:
                raise CheckpointError(f"{self.folder}: shard {missing[0]} named in {INDEX_NAME} is missing"
                                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            self._weight_map = weight_map
            return [self.folder / n for n in names]
        single = sorted(self.folder.glob("model*.safetensors"))
        if not single:
            raise CheckpointError(f"{self.folder}: no model.safetensors (only safetensors checkpoints convert)")
        self._weight_map = None
        return single

    def check_index(self) -> None:
        """Every tensor the index names is in the shard it names."""
        if self._weight_map is None:
            return
        for name, shard in self._weight_map.items():
            entry = self.entries.get(name)
            if entry is None or entry.shard.name != shard:
                raise CheckpointError(f"{self.folder}: tensor {name} is not in shard {shard} as {INDEX_NAME} says")

    def load(self, name: str) -> np.ndarray:
        """The tensor as float32 (F32, BF16) or float16 (F16), read from its shard."""
        e = self.entries[name]
        if e.shard not in self._data_start:
            with open(e.shard, "rb") as f:
                self._data_start[e.shard] = 8 + struct.unpack("<Q", f.read(8))[0]
        count = int(np.prod(e.shape)) if e.shape else 1
        raw = np.fromfile(e.shard, dtype=_DTYPES[e.dtype], count=count,
                          offset=self._data_start[e.shard] + e.start).reshape(e.shape)
        if e.dtype == "BF16":  # bfloat16 is the top half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw

    def close(self) -> None:
        self._data_start.clear()


def _read_header(shard: Path) -> list[TensorEntry]:
    size = shard.stat().st_size
    with open(shard, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{shard}: not a safetensors file (too short)")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > min(size - 8, 1 << 28):
            raise CheckpointError(f"{shard}: not a safetensors file (header length {header_len})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{shard}: unreadable safetensors header ({e})") from None
    data_size = size - 8 - header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"{shard}: tensor {name} is {dtype}; only F32, F16 and BF16 checkpoints convert")
        count = int(np.prod(shape)) if shape else 1
        if end - start != count * np.dtype(_DTYPES[dtype]).itemsize or not 0 <= start <= end <= data_size:
            raise CheckpointError(f"{shard}: tensor {name} has a byte range that does not fit its shape")
        entries.append(TensorEntry(name, dtype, shape, shard, start, end))
    # llama.cpp's converter walks each shard's tensors by name; the output keeps that order.
    entries.sort(key=lambda e: e.name)
    return entries

"""An atomic GGUF writer: the file appears under its name only once it is complete.

Data goes to a temporary file beside the target (same directory, so the final rename is
atomic on one file system) and is renamed over the target at the end; any exception on the
way — Ctrl-C, a full disk, a failed quantizer — removes the temporary file and leaves no output.

Metadata entries are given as bytes: copied from another GGUF (quantize/source.py keeps each
value's exact GGUF type that way) or encoded from Python values with `encode_kv`.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quants.types import row_bytes
from .reader import ARRAY, BOOL, FLOAT32, GGUF_MAGIC, INT32, STRING, UINT32, UINT64

GGUF_VERSION = 3


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # GGUF order, innermost first
    type_id: int

    @property
    def n_bytes(self) -> int:
        rows = 1
        for d in self.shape[1:]:
            rows *= d
        return rows * row_bytes(self.type_id, self.shape[0])


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_kv(key: str, value, vtype: int, item_type: int | None = None) -> bytes:
    """One metadata entry: key, type and value in GGUF's little-endian layout."""
    head = _string(key) + struct.pack("<I", vtype)
    if vtype == ARRAY:
        items = list(value)
        body = struct.pack("<IQ", item_type, len(items))
        if item_type == STRING:
            return head + body + b"".join(_string(v) for v in items)
        fmt = {UINT32: "I", INT32: "i", FLOAT32: "f", UINT64: "Q"}[item_type]
        return head + body + struct.pack(f"<{len(items)}{fmt}", *items)
    if vtype == STRING:
        return head + _string(value)
    fmt = {UINT32: "<I", INT32: "<i", FLOAT32: "<f", BOOL: "<?", UINT64: "<Q"}[vtype]
    return head + struct.pack(fmt, value)


class AtomicGGUFWriter:
    """with AtomicGGUFWriter(path, kv_entries, tensors) as w: w.write_tensor(bytes) per tensor, in order."""

    def __init__(self, path: str | os.PathLike, kv: Iterable[bytes], tensors: list[TensorSpec], alignment: int = 32):
        self.path = Path(path)
        self.kv = list(kv)
        self.tensors = tensors
        self.alignment = alignment
        self._next = 0
        self._file = None
        self._tmp: str | None = None

    def __enter__(self) -> AtomicGGUFWriter:
        directory = self.path.parent if str(self.path.parent) else Path(".")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self._tmp, 0o666 & ~mask)  # mkstemp's 0600 would make the model private
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._write_header()
        return self

    def _pad(self, n: int) -> None:
        gap = -n % self.alignment
        if gap:
            self._file.write(b"\0" * gap)

    def _write_header(self) -> None:
        f = self._file
        header = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv)), *self.kv]
        offset = 0
        for t in self.tensors:
            dims = struct.pack(f"<I{len(t.shape)}QIQ", len(t.shape), *t.shape, t.type_id, offset)
            header.append(_string(t.name) + dims)
            offset += t.n_bytes + (-t.n_bytes % self.alignment)
        blob = b"".join(header)
        f.write(blob)
        self._pad(len(blob))

    def write_tensor(self, data) -> None:
        """The next tensor's bytes (anything with the buffer protocol), in the order given."""
        spec = self.tensors[self._next]
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        if view.nbytes != spec.n_bytes:
            raise ValueError(f"{spec.name}: {view.nbytes} bytes given, {spec.n_bytes} expected")
        self._file.write(view)
        self._pad(view.nbytes)
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._next != len(self.tensors):
                raise ValueError(f"only {self._next} of {len(self.tensors)} tensors were written")
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                self._tmp = None
        finally:
            if not self._file.closed:
                self._file.close()
            if self._tmp is not None:
                os.unlink(self._tmp)
                self._tmp = None

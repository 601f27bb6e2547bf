"""An atomic GGUF writer: the file appears under its name only once it is complete.

Data goes to a temporary file beside the target (same directory, so the final rename is
atomic on one file system) and is renamed over the target at the end; any exception on the
way — Ctrl-C, a full disk, a failed quantizer — removes the temporary file and leaves no output.

Metadata can be copied from another GGUF byte for byte (`copy_kv`), which keeps each value's
exact GGUF type, or encoded from Python values (`encode_kv`).
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quants.types import row_bytes
from .reader import ARRAY, BOOL, FLOAT32, GGUF_MAGIC, INT32, STRING, UINT32, UINT64, GGUFError

GGUF_VERSION = 3
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


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


def copy_kv(path: str | os.PathLike) -> list[tuple[str, bytes]]:
    """Every metadata entry of a GGUF as (key, its raw bytes), in file order."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file")
        n_kv = struct.unpack_from("<Q", buf, 16)[0]
        pos, out = 24, []
        for _ in range(n_kv):
            start = pos
            klen = struct.unpack_from("<Q", buf, pos)[0]
            key = bytes(buf[pos + 8 : pos + 8 + klen]).decode()
            pos += 8 + klen
            vtype = struct.unpack_from("<I", buf, pos)[0]
            pos = _skip_value(buf, pos + 4, vtype)
            out.append((key, bytes(buf[start:pos])))
        return out


def _skip_value(buf, pos: int, vtype: int) -> int:
    if vtype == STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == ARRAY:
        item_type, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item_type == STRING:
            for _ in range(count):
                pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            return pos
        if item_type == ARRAY:
            for _ in range(count):
                pos = _skip_value(buf, pos, ARRAY)
            return pos
        return pos + count * _SIZES[item_type]
    return pos + _SIZES[vtype]


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

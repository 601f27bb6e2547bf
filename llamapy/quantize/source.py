"""The input of a quantization as raw layout: metadata entries as bytes, tensor infos, mapped data.

Quantizing copies the metadata byte for byte and never needs the vocabulary as Python strings, so
this walks the header with struct alone (a 49k-token vocabulary in ~30 ms, where decoding every
string as GGUFFile does costs several times that on every run).  The same checks apply as in the
reader: magic, version, sane counts, known tensor types, whole blocks, data inside the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..gguf.reader import ARRAY, GGUF_MAGIC, MAX_DIMS, STRING, GGUFError, TensorInfo
from ..quants.types import QUANT_TYPES, type_name

_U64 = struct.Struct("<Q").unpack_from
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class SourceFile:
    """`kv_entries` [(key, raw bytes)], `kv` (scalar and string values), `tensors`, `raw(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        p = Path(self.path)
        if not p.exists():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if p.is_dir():
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file")
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 24:
                raise GGUFError(f"{self.path}: too small to be a GGUF file ({self.size} bytes)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.kv_entries: list[tuple[str, bytes]] = []
        self.kv: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except (struct.error, UnicodeDecodeError, IndexError):
            raise GGUFError(f"{self.path}: truncated or corrupt GGUF header") from None

    def _parse(self) -> None:
        buf = self._map
        if buf[:4] != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (bad magic {bytes(buf[:4])!r})")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise GGUFError(f"{self.path}: unsupported GGUF version {version} (supported: 2, 3)")
        if n_tensors > self.size // 8 or n_kv > self.size // 8:
            raise GGUFError(f"{self.path}: truncated or corrupt header "
                            f"(tensor count {n_tensors}, metadata count {n_kv})")
        pos = 24
        for _ in range(n_kv):
            start = pos
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos = self._value(key, vtype, pos + 4)
            self.kv_entries.append((key, bytes(buf[start:pos])))
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"{self.path}: tensor {name} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            *shape, type_id, offset = struct.unpack_from(f"<{n_dims}QIQ", buf, pos + 4)
            pos += 4 + 8 * n_dims + 12
            infos.append(self._check(TensorInfo(name, tuple(shape), type_id, offset)))
        alignment = int(self.kv.get("general.alignment", 32))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{self.path}: general.alignment {alignment} is not a power of two")
        self.alignment = alignment
        self.data_offset = (pos + alignment - 1) // alignment * alignment
        for info in infos:
            end = self.data_offset + info.offset + info.n_bytes
            if end > self.size:
                raise GGUFError(f"{self.path}: tensor {info.name} ends at byte {end}, the file has {self.size}; "
                                "the file may be truncated")
            self.tensors[info.name] = info

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._map, pos)
        if pos + 8 + n > self.size:
            raise GGUFError(f"{self.path}: truncated GGUF file (string at byte {pos})")
        return bytes(self._map[pos + 8:pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n

    def _value(self, key: str, vtype: int, pos: int) -> int:
        """Skip one value (keeping scalars and strings in self.kv); returns the position after it."""
        buf = self._map
        if vtype in _SCALARS:
            (self.kv[key],) = struct.unpack_from(_SCALARS[vtype], buf, pos)
            return pos + struct.calcsize(_SCALARS[vtype])
        if vtype == STRING:
            self.kv[key], pos = self._string(pos)
            return pos
        if vtype != ARRAY:
            raise GGUFError(f"{self.path}: unknown metadata value type {vtype} in {key}")
        item, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _SCALARS:
            size = struct.calcsize(_SCALARS[item])
            if 0 < count <= 4096:  # small numeric arrays (per-layer head counts), not the vocabulary's
                self.kv[key] = list(struct.unpack_from(f"<{count}{_SCALARS[item][1]}", buf, pos))
            return pos + count * size
        if count > self.size // 8:
            raise GGUFError(f"{self.path}: corrupt array length {count} in {key}")
        if item == STRING:  # the vocabulary: only its end matters, so the tightest loop
            for _ in range(count):
                pos += 8 + _U64(buf, pos)[0]  # past the end: struct.error, reported as truncated
        else:
            for _ in range(count):
                pos = self._value(key, ARRAY, pos)
        if pos > self.size:
            raise GGUFError(f"{self.path}: truncated GGUF file (metadata {key})")
        return pos

    def _check(self, info: TensorInfo) -> TensorInfo:
        qt = QUANT_TYPES.get(info.type_id)
        if qt is None:
            supported = ", ".join(t.name for t in QUANT_TYPES.values())
            raise GGUFError(f"{self.path}: tensor {info.name} has unsupported type {type_name(info.type_id)} "
                            f"(supported: {supported})")
        if any(d <= 0 for d in info.shape) or info.shape[0] % qt.block_size:
            raise GGUFError(f"{self.path}: tensor {info.name} has an impossible shape {list(info.shape)} "
                            f"for {qt.name}")
        return info

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 [rows, row_bytes], a view into the mapped file."""
        info = self.tensors[name]
        rows = info.n_elements // info.shape[0]
        data = np.frombuffer(self._map, np.uint8, count=info.n_bytes, offset=self.data_offset + info.offset)
        return data.reshape(rows, info.n_bytes // rows)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # views handed out keep the map alive until they go

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""A GGUF reader over mmap: metadata parsed eagerly, tensor data left in place as zero-copy views.

gguf-py's GGUFReader builds numpy objects for every field and takes seconds on a 262k-token
vocabulary; this one parses the header with struct and turns string arrays into lists in one pass.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quants.types import QUANT_TYPES, row_bytes, type_name
from .strings import read_string_array

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME = 64  # ggml's GGML_MAX_NAME, the terminating NUL included
MAX_KEY = 256  # no real key comes near; a longer one is a damaged length

# GGUF metadata value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

_SCALARS = {
    UINT8: ("<B", 1), INT8: ("<b", 1), UINT16: ("<H", 2), INT16: ("<h", 2),
    UINT32: ("<I", 4), INT32: ("<i", 4), FLOAT32: ("<f", 4), BOOL: ("<?", 1),
    UINT64: ("<Q", 8), INT64: ("<q", 8), FLOAT64: ("<d", 8),
}
_NUMPY = {
    UINT8: np.uint8, INT8: np.int8, UINT16: np.uint16, INT16: np.int16, UINT32: np.uint32,
    INT32: np.int32, FLOAT32: np.float32, BOOL: np.bool_, UINT64: np.uint64, INT64: np.int64,
    FLOAT64: np.float64,
}


class GGUFError(ValueError):
    """A file that is not a valid GGUF; the message is one line that says what is wrong."""


def shown(text: str, limit: int = 48) -> str:
    """A name from the file as an error message may quote it: escaped, one line, short."""
    text = repr(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: innermost (contiguous) dimension first
    type_id: int
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return QUANT_TYPES[self.type_id].name

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        rows = self.n_elements // self.shape[0]
        return rows * row_bytes(self.type_id, self.shape[0])


class _Cursor:
    """Sequential reads over a buffer, with bounds checks that name the field being read."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.bytes = np.frombuffer(buf, dtype=np.uint8)
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"{self.path}: truncated GGUF file (reading {what} at byte {self.pos})")

    def scalar(self, vtype: int, what: str):
        fmt, size = _SCALARS[vtype]
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar(UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def string_array(self, count: int, what: str) -> list[str]:
        strings, end = read_string_array(self.bytes, self.pos, count)
        if strings is None:
            raise GGUFError(f"{self.path}: truncated GGUF file (reading {what} at byte {self.pos})")
        self.pos = end
        return strings

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            etype = self.u32(what)
            count = self.u64(what)
            if etype in _NUMPY:
                itemsize = np.dtype(_NUMPY[etype]).itemsize
                self.need(count * itemsize, what)
                arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos).copy()
                self.pos += count * itemsize
                return arr
            # Every element takes at least its length prefix: a count the bytes left cannot hold is
            # refused before a loop of that length starts.
            if etype == STRING:
                self.need(count * 8, what)
                return self.string_array(count, what)
            if etype == ARRAY:
                self.need(count * 12, what)
                return [self.value(ARRAY, what) for _ in range(count)]
            raise GGUFError(f"{self.path}: unknown array element type {etype} in {what}")
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} in {what}")


def _mlock(buffer, size: int) -> str | None:
    """Pin the pages of buffer in RAM (mlock(2)); None, or why the system refused."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    address = np.frombuffer(buffer, dtype=np.uint8, count=1).ctypes.data
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(size)) == 0:
        return None
    err = ctypes.get_errno()
    return f"mlock of {size / 2**20:.0f} MiB failed: {os.strerror(err)} (see ulimit -l)"


class GGUFFile:
    """An open GGUF file: `kv` (metadata), `tensors` (name → TensorInfo), and zero-copy tensor data."""

    def __init__(self, path: str | os.PathLike, use_mmap: bool = True, use_mlock: bool = False):
        """use_mmap=False reads the file into memory (--no-mmap); use_mlock pins its pages (--mlock),
        leaving `mlock_error` set to the reason where the system refuses."""
        self.path = str(path)
        p = Path(self.path)
        if not p.exists():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if p.is_dir():
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file")
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{self.path}: too small to be a GGUF file ({size} bytes)")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if use_mmap else f.read()
        self.size = size
        self.mlock_error = _mlock(self._mmap, size) if use_mlock else None
        self._buf = memoryview(self._mmap)
        self.kv: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    def _parse(self) -> None:
        cur = _Cursor(self._buf, self.path)
        if bytes(self._buf[:4]) != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (bad magic {bytes(self._buf[:4])!r})")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each entry takes at least 8 bytes, so larger counts can only come from a corrupt header.
        if n_tensors > self.size // 8 or n_kv > self.size // 8:
            raise GGUFError(f"{self.path}: corrupt header (tensor count {n_tensors}, metadata count {n_kv})")
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if len(key) > MAX_KEY or not key.isprintable():
                raise GGUFError(f"{self.path}: metadata key #{i} is damaged ({shown(key)})")
            vtype = cur.u32(f"type of {key}")
            self.kv[key] = cur.value(vtype, key)
        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        alignment = int(self.kv.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{self.path}: general.alignment {alignment} is not a power of two")
        self.data_offset = (cur.pos + alignment - 1) // alignment * alignment
        for info in infos:
            end = self.data_offset + info.offset + info.n_bytes
            if info.offset % alignment or end > self.size:
                raise GGUFError(
                    f"{self.path}: tensor {info.name} lies outside the file or is misaligned "
                    f"(ends at byte {end}, file has {self.size}); the file may be truncated"
                )
            if info.name in self.tensors:
                raise GGUFError(f"{self.path}: duplicate tensor name {info.name}")
            self.tensors[info.name] = info
        self._check_no_overlap(infos)

    def _check_no_overlap(self, infos: list[TensorInfo]) -> None:
        """Writers lay tensors out one after another; overlapping data means a damaged shape, type or offset."""
        ordered = sorted(infos, key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.offset + a.n_bytes > b.offset:
                raise GGUFError(f"{self.path}: tensor {a.name} ({a.type_name} {list(a.shape)}) runs into the data "
                                f"of tensor {b.name}: its shape, type or offset is damaged")

    def _tensor_info(self, cur: _Cursor, i: int) -> TensorInfo:
        name = cur.string(f"tensor name #{i}")
        if len(name.encode()) >= MAX_NAME or not name.isprintable():
            raise GGUFError(f"{self.path}: tensor #{i} has a damaged name ({shown(name)}; ggml allows "
                            f"{MAX_NAME - 1} printable bytes)")
        n_dims = cur.u32(f"dims of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"{self.path}: tensor {name} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
        if any(d <= 0 for d in shape) or np.prod(shape, dtype=np.float64) > self.size * 64:
            raise GGUFError(f"{self.path}: tensor {name} has an impossible shape {list(shape)}")
        type_id = cur.u32(f"type of {name}")
        if type_id not in QUANT_TYPES:
            supported = ", ".join(t.name for t in QUANT_TYPES.values())
            raise GGUFError(
                f"{self.path}: tensor {name} has unsupported type {type_name(type_id)} (supported: {supported})"
            )
        if shape[0] % QUANT_TYPES[type_id].block_size:
            raise GGUFError(
                f"{self.path}: tensor {name} row of {shape[0]} is not a multiple of "
                f"{QUANT_TYPES[type_id].name}'s block size {QUANT_TYPES[type_id].block_size}"
            )
        offset = cur.u64(f"offset of {name}")
        return TensorInfo(name, shape, type_id, offset)

    # --- access -------------------------------------------------------------------------------

    def get(self, key: str, default=None):
        return self.kv.get(key, default)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 [rows, row_bytes], a view into the mapped file."""
        info = self.tensors[name]
        start = self.data_offset + info.offset
        rows = info.n_elements // info.shape[0]
        data = np.frombuffer(self._mmap, dtype=np.uint8, count=info.n_bytes, offset=start)
        return data.reshape(rows, info.n_bytes // rows)

    def array(self, name: str) -> np.ndarray:
        """A float tensor (F32/F16) as numpy, numpy order (outermost first); zero-copy for F32."""
        info = self.tensors[name]
        dtypes = {0: np.float32, 1: np.float16}
        if info.type_id not in dtypes:
            raise GGUFError(f"{self.path}: tensor {name} is {info.type_name}, expected F32 or F16")
        start = self.data_offset + info.offset
        data = np.frombuffer(self._mmap, dtype=dtypes[info.type_id], count=info.n_elements, offset=start)
        return data.reshape(tuple(reversed(info.shape)))

    def close(self) -> None:
        self._buf.release()
        try:
            if isinstance(self._mmap, mmap.mmap):
                self._mmap.close()
        except BufferError:
            pass  # numpy views of tensors still alive keep the map open until they go

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

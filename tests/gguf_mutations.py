"""Deterministic damage to a real GGUF header, for the fuzz battery.

The header is walked here independently of llamapy's reader, so a bug there cannot hide a field.
A mutation is either a set of same-size patches (position, new bytes), applied in place to a working
copy and undone afterwards, or a truncation to a length.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

# GGUF value type → (struct format, size); 8 is a string, 9 an array.
SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
           7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
STRING, ARRAY = 8, 9
INTS = {0, 1, 2, 3, 4, 5, 10, 11}


@dataclass
class Field:
    name: str
    type: int
    value_pos: int  # the value (for strings and arrays: the length / element-type field)
    type_pos: int
    element_type: int = -1


@dataclass
class Tensor:
    name: str
    ndim_pos: int
    dims_pos: int
    ndim: int
    type_pos: int
    offset_pos: int


@dataclass
class Header:
    fields: list[Field] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    end: int = 0


@dataclass(frozen=True)
class Mutation:
    label: str
    patches: tuple[tuple[int, bytes], ...] = ()
    truncate_to: int | None = None


def _skip_value(buf: bytes, vtype: int, pos: int) -> int:
    if vtype in SCALARS:
        return pos + SCALARS[vtype][1]
    if vtype == STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    etype, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if etype in SCALARS:
        return pos + count * SCALARS[etype][1]
    for _ in range(count):
        pos = _skip_value(buf, etype, pos)
    return pos


def walk(buf: bytes) -> Header:
    header = Header()
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", buf, pos)[0]
        name = buf[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        vtype = struct.unpack_from("<I", buf, pos)[0]
        f = Field(name, vtype, pos + 4, pos)
        if vtype == ARRAY:
            f.element_type = struct.unpack_from("<I", buf, pos + 4)[0]
        header.fields.append(f)
        pos = _skip_value(buf, vtype, pos + 4)
    for _ in range(n_tensors):
        n = struct.unpack_from("<Q", buf, pos)[0]
        name = buf[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        ndim = struct.unpack_from("<I", buf, pos)[0]
        dims_pos = pos + 4
        type_pos = dims_pos + 8 * ndim
        header.tensors.append(Tensor(name, pos, dims_pos, ndim, type_pos, type_pos + 4))
        pos = type_pos + 12
    header.end = pos
    return header


def _numeric_values(vtype: int) -> list[tuple[str, bytes]]:
    fmt, size = SCALARS[vtype]
    if vtype == 6 or vtype == 12:
        return [(str(v), struct.pack(fmt, v)) for v in (0.0, 1.0, -1.0, 3.0e38, float("nan"), float("inf"))]
    if vtype == 7:
        return [("0", b"\x00"), ("1", b"\x01"), ("2", b"\x02")]
    bits = 8 * size
    unsigned = vtype in (0, 2, 4, 10)
    huge = (1 << (bits - 1)) - 1
    values = [("0", 0), ("1", 1), ("huge", huge), ("-1", (1 << bits) - 1 if unsigned else -1)]
    return [(label, struct.pack(fmt, v)) for label, v in values]


def _pick(items: list, n: int) -> list:
    """n items spread evenly over the list, first and last included."""
    if len(items) <= n:
        return items
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def mutations(buf: bytes, n_tensors: int = 12, n_flips: int = 40, n_truncations: int = 16,
              seed: int = 1234, keys: str = "all") -> list[Mutation]:
    """The battery for one file: header counts and version, every metadata field, a spread of
    tensors, truncations and random byte flips. `keys`: 'all' or 'arch' (only `{arch}.*` and
    `general.*` scalars, for files whose tokenizer makes every load slow)."""
    h = walk(buf)
    u32, u64 = (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<Q", v))
    out = [Mutation(f"version={v}", ((4, u32(v)),)) for v in (0, 1, 4, 0xFFFFFFFF)]
    n_t, n_kv = struct.unpack_from("<QQ", buf, 8)
    for label, value in (("+1", n_t + 1), ("-1", n_t - 1), ("huge", 1 << 62), ("0", 0)):
        out.append(Mutation(f"tensor count {label}", ((8, u64(value)),)))
    for label, value in (("+1", n_kv + 1), ("-1", n_kv - 1), ("huge", 1 << 62), ("0", 0)):
        out.append(Mutation(f"metadata count {label}", ((16, u64(value)),)))
    out += _field_mutations(h, buf, keys, u32, u64)
    out += _tensor_mutations(h, buf, n_tensors, u32, u64)
    for length in sorted({*_pick(list(range(1, h.end + 64)), n_truncations), len(buf) // 2, len(buf) - 1}):
        out.append(Mutation(f"truncated to {length} bytes", truncate_to=length))
    rng = random.Random(seed)
    for i in range(n_flips):
        pos = rng.randrange(24, h.end)
        out.append(Mutation(f"flip #{i} byte {pos}", ((pos, bytes([buf[pos] ^ (1 << rng.randrange(8))])),)))
    return out


def _field_mutations(h: Header, buf: bytes, keys: str, u32, u64) -> list[Mutation]:
    out = []
    arch = next((f for f in h.fields if f.name == "general.architecture"), None)
    prefix = None
    if arch is not None:
        n = struct.unpack_from("<Q", buf, arch.value_pos)[0]
        prefix = buf[arch.value_pos + 8:arch.value_pos + 8 + n].decode() + "."
    for f in h.fields:
        in_scope = keys == "all" or f.name.startswith(("general.", prefix or "\0"))
        if not in_scope:
            continue
        if f.type in SCALARS:
            for label, raw in _numeric_values(f.type):
                out.append(Mutation(f"{f.name}={label}", ((f.value_pos, raw),)))
        elif f.type == STRING:
            for label, n in (("huge", 1 << 62), ("2^32", 1 << 32)):
                out.append(Mutation(f"{f.name} string length {label}", ((f.value_pos, u64(n)),)))
        elif f.type == ARRAY:
            out.append(Mutation(f"{f.name} array length huge", ((f.value_pos + 4, u64(1 << 62)),)))
            out.append(Mutation(f"{f.name} array element type 99", ((f.value_pos, u32(99)),)))
            if f.element_type in INTS:
                out.append(Mutation(f"{f.name} array of float", ((f.value_pos, u32(6)),)))
        out.append(Mutation(f"{f.name} value type 99", ((f.type_pos, u32(99)),)))
    return out


def _tensor_mutations(h: Header, buf: bytes, n_tensors: int, u32, u64) -> list[Mutation]:
    out = []
    for t in _pick(h.tensors, n_tensors):
        dim0 = struct.unpack_from("<Q", buf, t.dims_pos)[0]
        last = t.dims_pos + 8 * (t.ndim - 1)
        dim_last = struct.unpack_from("<Q", buf, last)[0]
        offset = struct.unpack_from("<Q", buf, t.offset_pos)[0]
        out += [
            Mutation(f"{t.name} dim0=0", ((t.dims_pos, u64(0)),)),
            Mutation(f"{t.name} dim0 doubled", ((t.dims_pos, u64(dim0 * 2)),)),
            Mutation(f"{t.name} dim0 halved", ((t.dims_pos, u64(max(dim0 // 2, 1))),)),
            Mutation(f"{t.name} last dim halved", ((last, u64(max(dim_last // 2, 1))),)),
            Mutation(f"{t.name} last dim doubled", ((last, u64(dim_last * 2)),)),
            Mutation(f"{t.name} n_dims=0", ((t.ndim_pos, u32(0)),)),
            Mutation(f"{t.name} n_dims=5", ((t.ndim_pos, u32(5)),)),
            Mutation(f"{t.name} type 99", ((t.type_pos, u32(99)),)),
            Mutation(f"{t.name} type Q8_K", ((t.type_pos, u32(15)),)),
            Mutation(f"{t.name} type F32", ((t.type_pos, u32(0)),)),
            Mutation(f"{t.name} type Q4_0", ((t.type_pos, u32(2)),)),
            Mutation(f"{t.name} offset+1", ((t.offset_pos, u64(offset + 1)),)),
            Mutation(f"{t.name} offset past end", ((t.offset_pos, u64(len(buf))),)),
            Mutation(f"{t.name} offset huge", ((t.offset_pos, u64(1 << 62)),)),
            Mutation(f"{t.name} offset 0", ((t.offset_pos, u64(0)),)),
        ]
    return out

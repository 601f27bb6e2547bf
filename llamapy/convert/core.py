"""HF checkpoint folder → GGUF, as llama.cpp's convert_hf_to_gguf.py writes it.

The plan (names, shapes, types) is made from the safetensors headers alone; then every tensor is read,
rewritten, encoded and written in turn, so memory holds one tensor at a time. The file appears only
once it is complete (gguf/writer.py's atomic writer).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..gguf.reader import ARRAY, STRING
from ..gguf.writer import AtomicGGUFWriter, TensorSpec, encode_kv
from ..quantize.tensors import quantize
from ..quants.types import BF16, F16, F32, Q8_0, row_bytes, type_name
from .checkpoint import Checkpoint
from .families import Family, family_for

OUTTYPES = {"f32": (F32, gguf.LlamaFileType.ALL_F32), "f16": (F16, gguf.LlamaFileType.MOSTLY_F16),
            "bf16": (BF16, gguf.LlamaFileType.MOSTLY_BF16), "q8_0": (Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # PyTorch order
    type_id: int
    load: Callable[[], np.ndarray]

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, tuple(reversed(self.shape)), self.type_id)


@dataclass
class ConvertResult:
    path: Path
    arch: str
    outtype: str
    n_tensors: int
    n_params: int
    n_bytes: int
    tokenizer: str
    pre: str
    warnings: list[str]
    seconds: float


def auto_outtype(ckpt: Checkpoint) -> str:
    """llama.cpp's `auto`: the first 16-bit matrix decides (bf16 or f16); f16 when all are float32."""
    for entry in ckpt.entries.values():
        if len(entry.shape) >= 2 and entry.dtype in ("BF16", "F16"):
            return entry.dtype.lower()
    return "f16"


def convert(folder: str | os.PathLike, outfile: str | os.PathLike | None = None, outtype: str = "auto",
            on_tensor: Callable[[int, int, str], None] | None = None) -> ConvertResult:
    """Write the GGUF of the checkpoint in `folder`; on_tensor(done, total, name) after each tensor."""
    start = time.perf_counter()
    warnings: list[str] = []
    with _gguf_warnings(warnings):
        result = _convert(folder, outfile, outtype, on_tensor)
    result.warnings[:0] = warnings
    result.seconds = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _gguf_warnings(sink: list[str]) -> Iterator[None]:
    """gguf-py logs what it notices (SpecialVocab); the library collects it instead of printing."""
    class Collect(logging.Handler):
        def emit(self, record):
            sink.append(record.getMessage())

    log = logging.getLogger("gguf")
    handler, propagate = Collect(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _convert(folder, outfile, outtype, on_tensor) -> ConvertResult:
    ckpt = Checkpoint(folder)
    family = family_for(ckpt.folder, ckpt.config)
    ckpt.check_index()
    if outtype == "auto":
        outtype = auto_outtype(ckpt)
    if outtype not in OUTTYPES:
        raise ValueError(f"--outtype {outtype}: choose one of f32, f16, bf16, q8_0, auto")
    type_id, ftype = OUTTYPES[outtype]

    gw = gguf.GGUFWriter(path=None, arch=family.arch_name)
    extra = family.extra_tensors(gw)  # llama.cpp adds their keys (phi3's attn factor) before the others
    tensors = plan_tensors(ckpt, family, extra, type_id)
    metadata = model_metadata(ckpt.folder, tensors)
    gw.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(gw)
    family.add_params(gw, int(ftype))
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    family.add_vocab(gw)

    path = Path(outfile) if outfile else ckpt.folder / f"{default_name(metadata, outtype)}.gguf"
    if path.is_dir():
        path = path / f"{default_name(metadata, outtype)}.gguf"
    with AtomicGGUFWriter(path, encode_all(gw), [t.spec for t in tensors]) as out:
        for i, t in enumerate(tensors):
            out.write_tensor(encode_tensor(t))
            if on_tensor:
                on_tensor(i + 1, len(tensors), t.name)
    ckpt.close()
    return ConvertResult(path, family.arch_name, outtype, len(tensors), sum(_count(t.shape) for t in tensors),
                         path.stat().st_size, family.notes.kind, family.notes.pre, family.notes.warnings, 0.0)


def plan_tensors(ckpt: Checkpoint, family: Family, extra, type_id: int) -> list[PlannedTensor]:
    names = gguf.get_tensor_name_map(family.arch, family.n_layer)
    planned = [PlannedTensor(name, data.shape, F32, lambda d=data: d) for name, data in extra]
    for hf_name, entry in ckpt.entries.items():
        if family.skip(hf_name):
            continue
        name = names.get_name(hf_name.replace("language_model.", ""), try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"tensor {hf_name} has no GGUF name for a {family.arch_name} model")
        shape = family.shape_of(hf_name, entry.shape)
        planned.append(PlannedTensor(name, shape, tensor_type(name, shape, type_id), _loader(ckpt, family, hf_name)))
    return planned


def _loader(ckpt: Checkpoint, family: Family, hf_name: str) -> Callable[[], np.ndarray]:
    return lambda: family.rewrite(hf_name, ckpt.load(hf_name))


def tensor_type(name: str, shape: tuple[int, ...], type_id: int) -> int:
    """llama.cpp's rule: vectors, norms and biases stay F32; Q8_0 needs rows of whole 32-blocks (else F16)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return F32
    if type_id == Q8_0 and shape[-1] % 32:
        return F16
    return type_id


def encode_tensor(t: PlannedTensor) -> np.ndarray:
    data = t.load()
    if tuple(data.shape) != tuple(t.shape):
        raise ValueError(f"{t.name}: shape {data.shape}, planned {t.shape}")
    if t.type_id == F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if t.type_id == F16 and data.dtype == np.float16:
        return np.ascontiguousarray(data)
    rows = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, t.shape[-1])
    out = quantize(rows, t.type_id)
    assert out.nbytes == rows.shape[0] * row_bytes(t.type_id, t.shape[-1]), type_name(t.type_id)
    return out


def model_metadata(folder: Path, tensors: list[PlannedTensor]) -> gguf.Metadata:
    """general.* as llama.cpp fills it: model card and config heuristics, folder name, size label."""
    total = sum(_count(t.shape) for t in tensors)
    metadata = gguf.Metadata.load(None, folder, None, total)
    if metadata.name is None:
        metadata.name = folder.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, total, 0, 0)
    return metadata


def default_name(metadata: gguf.Metadata, outtype: str) -> str:
    return gguf.naming_convention(metadata.name, metadata.basename, metadata.finetune, metadata.version,
                                  metadata.size_label, outtype.upper())


def encode_all(gw: gguf.GGUFWriter) -> list[bytes]:
    return [encode_value(key, v.value, int(v.type), v.sub_type) for key, v in gw.kv_data[0].items()]


def encode_value(key: str, value, vtype: int, sub_type=None) -> bytes:
    if vtype == ARRAY:
        items = list(value)
        item_type = int(sub_type) if sub_type is not None else int(gguf.GGUFValueType.get_type(items[0]))
        if item_type == STRING:
            items = [v if isinstance(v, bytes | str) else str(v) for v in items]
        return encode_kv(key, items, ARRAY, item_type)
    if vtype in _EXTRA_SCALARS:
        return _scalar(key, value, vtype)
    return encode_kv(key, value, vtype)


# Scalar types our writer's encode_kv leaves out; packed here with GGUF's layout.
_EXTRA_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 11: "<q", 12: "<d"}


def _scalar(key: str, value, vtype: int) -> bytes:
    name = key.encode()
    return struct.pack("<Q", len(name)) + name + struct.pack("<I", vtype) + struct.pack(_EXTRA_SCALARS[vtype], value)


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n

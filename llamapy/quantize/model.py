"""Quantize a whole GGUF model the way llama-quantize does: same tensor order, types, metadata, bytes.

The library half of `llamapy quantize`; it reports progress through a callback and never prints.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..gguf.reader import STRING, UINT32
from ..gguf.writer import AtomicGGUFWriter, TensorSpec, encode_kv
from ..quants.types import QUANT_TYPES, type_name
from .mixes import FileType, ModelShape, Options, TypeChooser, file_type_named
from .source import SourceFile
from .tensors import convert

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
_REPLACED_KEYS = {"general.quantization_version", "general.file_type", "split.no", "split.count", "split.tensors.count"}


class RequantizeError(ValueError):
    """The input is already quantized and --allow-requantize was not given."""


@dataclass
class TensorDone:
    """One finished tensor, for the progress display."""

    index: int
    total: int
    name: str
    src_type: int
    dst_type: int
    src_bytes: int
    dst_bytes: int


@dataclass
class Summary:
    n_tensors: int
    n_elements: int
    src_bytes: int
    dst_bytes: int
    seconds: float
    n_fallback: int
    file_type: FileType
    path: Path

    @property
    def src_bpw(self) -> float:
        return self.src_bytes * 8 / self.n_elements

    @property
    def dst_bpw(self) -> float:
        return self.dst_bytes * 8 / self.n_elements


def default_output(inp: str | os.PathLike, ftype_name: str) -> Path:
    """llama-quantize's default: ggml-model-<TYPE>.gguf beside the input."""
    return Path(inp).parent / f"ggml-model-{file_type_named(ftype_name).name}.gguf"


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def tensor_order(names) -> list[str]:
    """llama.cpp's loader order: by layer number (non-layer tensors first), then by name."""
    return sorted(names, key=lambda n: (_layer_of(n), n))


def plan(gguf: SourceFile, ftype: FileType, opts: Options) -> tuple[list[tuple[str, int]], int]:
    """(tensor name, output type) for every tensor in output order, and how many fell back."""
    names = tensor_order(gguf.tensors)
    chooser = TypeChooser(ModelShape.from_kv(gguf.kv), ftype, opts, names)
    chosen = [(name, chooser.choose(name, gguf.tensors[name].shape, gguf.tensors[name].type_id)) for name in names]
    return chosen, chooser.n_fallback


def quantize_model(
    inp: str | os.PathLike,
    out: str | os.PathLike | None,
    ftype_name: str,
    *,
    allow_requantize: bool = False,
    opts: Options | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
    imatrix_info: dict | None = None,
    progress: Callable[[TensorDone], None] | None = None,
) -> Summary:
    """Quantize `inp` to `out` (default: llama-quantize's name) as file type `ftype_name`."""
    start = time.perf_counter()
    ftype = file_type_named(ftype_name)
    opts = opts or Options()
    opts.has_imatrix = bool(imatrix)
    path = Path(out) if out else default_output(inp, ftype.name)
    with SourceFile(inp) as gguf:
        chosen, n_fallback = plan(gguf, ftype, opts)
        _check_requantize(gguf, chosen, allow_requantize)
        file_type = ftype.file_type if ftype.name != "COPY" else int(gguf.kv.get("general.file_type", 0))
        specs = [TensorSpec(name, gguf.tensors[name].shape, t) for name, t in chosen]
        kv = _metadata(gguf.kv_entries, file_type, imatrix_info)
        alignment = gguf.alignment
        src_total = dst_total = n_elements = 0
        with AtomicGGUFWriter(path, kv, specs, alignment) as writer, _WriteBehind(writer) as write:
            for i, spec in enumerate(specs):
                info = gguf.tensors[spec.name]
                raw = gguf.raw(spec.name)
                if spec.type_id == info.type_id:
                    data = raw
                else:
                    importance = _importance_for(imatrix, spec.name, info.shape)
                    data = convert(raw, info.type_id, spec.type_id, info.shape[0], importance)
                write(data)
                src_total += info.n_bytes
                dst_total += spec.n_bytes
                n_elements += info.n_elements
                if progress:
                    progress(TensorDone(i + 1, len(specs), spec.name, info.type_id, spec.type_id,
                                        info.n_bytes, spec.n_bytes))
    return Summary(len(specs), n_elements, src_total, dst_total, time.perf_counter() - start,
                   n_fallback, ftype, path)


class _WriteBehind:
    """writer.write_tensor on a background thread, in order, while the next tensor converts (a file
    write releases the GIL).  At most `depth` tensors wait; a write's error is raised in the caller."""

    def __init__(self, writer: AtomicGGUFWriter, depth: int = 2):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="quantize-writer", daemon=True)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_tensor(data)
                except BaseException as e:  # handed to the caller
                    self._error = e

    def __call__(self, data) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def __enter__(self) -> _WriteBehind:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


def _check_requantize(gguf: SourceFile, chosen, allow: bool) -> None:
    if allow:
        return
    for name, new_type in chosen:
        cur = gguf.tensors[name].type_id
        if cur != new_type and QUANT_TYPES[cur].block_size > 1:
            raise RequantizeError(
                f"requantizing from type {type_name(cur)} is disabled (tensor {name}); "
                "pass --allow-requantize to quantize an already quantized model"
            )


def _importance_for(imatrix, name: str, shape) -> np.ndarray | None:
    if not imatrix or name not in imatrix:
        return None
    values = imatrix[name]
    n_expected = shape[0] * (shape[2] if len(shape) > 2 else 1)
    if values.size != n_expected:
        if name == "token_embd.weight":
            return None
        raise ValueError(f"imatrix size {values.size} is different from tensor size {n_expected} for {name}")
    if len(shape) > 2:
        raise ValueError(f"{name}: imatrix weighting of 3-D (expert) tensors is not supported")
    return values


def _metadata(entries, file_type: int, imatrix_info: dict | None) -> list[bytes]:
    """The input's metadata byte for byte, then the keys llama-quantize sets, in its order."""
    kv = [blob for key, blob in entries if key not in _REPLACED_KEYS]
    kv.append(encode_kv("general.quantization_version", QUANTIZATION_VERSION, UINT32))
    kv.append(encode_kv("general.file_type", file_type, UINT32))
    if imatrix_info:
        kv.append(encode_kv("quantize.imatrix.file", imatrix_info["file"], STRING))
        if imatrix_info.get("datasets"):
            kv.append(encode_kv("quantize.imatrix.dataset", imatrix_info["datasets"][0], STRING))
        kv.append(encode_kv("quantize.imatrix.entries_count", imatrix_info["entries"], UINT32))
        if imatrix_info.get("chunks", 0) > 0:
            kv.append(encode_kv("quantize.imatrix.chunks_count", imatrix_info["chunks"], UINT32))
    return kv


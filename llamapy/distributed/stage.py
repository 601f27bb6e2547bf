"""One pipeline stage: a model's layers [a, b) and nothing else, from a GGUF file or from tensors sent to it.

A stage builds the architecture's network as the whole model would (so every layer's arithmetic is the
one the single-process engine does) over a StageGGUF: GGUFFile's interface, where the stage's own
tensors are real (mapped from the file, or the bytes received) and every other tensor is a zero
placeholder of the right shape. Placeholders are calloc'ed pages that are never touched, so they cost
address space, not memory; the stage never reads them, since it runs only its own layers.
"""

from __future__ import annotations

import re

import numpy as np

from ..config import ModelConfig
from ..gguf.reader import TensorInfo
from ..gguf.split import open_gguf
from ..kv_cache import KVCache
from ..models import check_architecture
from ..models.batch import Batch
from ..models.blocks import Weights
from ..validate import ModelFileError, check_tensors

# The large tensors of the main host's part: the embedding and the output head.
MAIN_TENSORS = ("token_embd.weight", "output.weight")
_LAYER = re.compile(r"^blk\.(\d+)\.")


def stage_tensor_names(tensors: dict[str, TensorInfo], layers: range) -> list[str]:
    """The tensors a stage holds: its layers', and the small model-wide ones (norms, RoPE factors)."""
    names = []
    for name in tensors:
        m = _LAYER.match(name)
        if (m and int(m[1]) in layers) or (not m and name not in MAIN_TENSORS):
            names.append(name)
    return names


def layer_bytes(tensors: dict[str, TensorInfo], n_layer: int) -> list[int]:
    """Weight bytes of each layer."""
    out = [0] * n_layer
    for name, info in tensors.items():
        m = _LAYER.match(name)
        if m and int(m[1]) < n_layer:
            out[int(m[1])] += info.n_bytes
    return out


class StageGGUF:
    """A GGUF seen by a stage: real bytes for its own tensors, untouched zero pages for the rest."""

    def __init__(self, path: str, tensors: dict[str, TensorInfo], own: dict[str, np.ndarray]):
        self.path = path
        self.tensors = tensors
        self._own = own

    def raw(self, name: str) -> np.ndarray:
        if name in self._own:
            return self._own[name]
        info = self.tensors[name]
        rows = info.n_elements // info.shape[0]
        return np.zeros((rows, info.n_bytes // rows), dtype=np.uint8)

    def array(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        dtypes = {0: np.float32, 1: np.float16}
        if info.type_id not in dtypes:
            raise ModelFileError(f"{self.path}: tensor {name} is {info.type_name}, expected F32 or F16")
        shape = tuple(reversed(info.shape))
        if name not in self._own:
            return np.zeros(shape, dtype=dtypes[info.type_id])
        return np.ascontiguousarray(self._own[name]).view(dtypes[info.type_id]).reshape(shape)


class Stage:
    """Layers [a, b) of a model, with the KV caches of the sequences that run through them."""

    def __init__(self, net, layers: range, source: str):
        self.net = net
        self.layers = layers
        self.source = source  # "file PATH" or "received"
        self.config: ModelConfig = net.config

    def configure(self, engine: dict) -> None:
        """The main host's settings that change the arithmetic: KV cache types (-ctk/-ctv), -fa."""
        if "cache_types" in engine:
            self.net.cache_types = tuple(engine["cache_types"])
        if "flash_attn" in engine:
            self.net.flash_attn = bool(engine["flash_attn"])

    def new_cache(self, n_ctx: int) -> KVCache:
        return self.net.new_cache(n_ctx, layers=self.layers)

    def run(self, x: np.ndarray, cache: KVCache, n_past: int) -> np.ndarray:
        """Hidden states after this stage's layers for tokens at positions n_past.. of the cache."""
        cache.n_past = n_past
        x = np.ascontiguousarray(x, dtype=np.float32)
        batch = Batch.single(cache, len(x))
        y = self.net.run_layers(x, batch, self.layers)
        batch.commit()
        return y


def stage_from_file(path: str, layers: range) -> Stage:
    """Open a GGUF (validated in full, as Model does) and keep only the stage's tensors."""
    gguf = open_gguf(path)
    architecture = check_architecture(gguf.kv.get("general.architecture"))
    config = ModelConfig.from_gguf(gguf.kv)
    check_tensors(str(path), gguf.tensors, config, architecture.tensor_specs(config))
    _check_layers(config, layers)
    own = {name: gguf.raw(name) for name in stage_tensor_names(gguf.tensors, layers)}
    part = StageGGUF(str(path), dict(gguf.tensors), own)
    return Stage(architecture(Weights(part), config), layers, f"file {path}")


def stage_from_tensors(name: str, config: ModelConfig, tensors: dict[str, TensorInfo],
                       own: dict[str, np.ndarray], layers: range) -> Stage:
    """A stage from the tensors the main host sent: each checked against its declared shape and size."""
    architecture = check_architecture(config.arch)
    _check_layers(config, layers)
    missing = [t for t in stage_tensor_names(tensors, layers) if t not in own]
    if missing:
        raise ModelFileError(f"{name}: tensor {missing[0]} of this stage was not received")
    for t, raw in own.items():
        info = tensors.get(t)
        rows = info.n_elements // info.shape[0] if info else 0
        if info is None or raw.dtype != np.uint8 or raw.shape != (rows, info.n_bytes // rows):
            raise ModelFileError(f"{name}: received tensor {t} does not have its declared shape and size")
    part = StageGGUF(name, dict(tensors), {t: np.ascontiguousarray(raw) for t, raw in own.items()})
    return Stage(architecture(Weights(part), config), layers, "received")


def _check_layers(config: ModelConfig, layers: range) -> None:
    if not (0 <= layers.start < layers.stop <= config.n_layer):
        raise ValueError(f"layers {layers.start}-{layers.stop - 1} are not inside the model's {config.n_layer}")

"""The wall between a file from a stranger and the kernels.

The reader guarantees that every tensor lies inside the file with whole blocks per row; config.py that
every hyperparameter has a sane type and range. This module checks that the two agree: every tensor an
architecture reads exists with exactly the shape its config implies and a type its kernels run, nothing
is left over, and the tokenizer metadata has the types and lengths the tokenizer indexes by. After it,
no numba kernel (which does no bounds checks) can be handed arrays that disagree. It also sizes the
KV cache before it is allocated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .config import ConfigError, ModelConfig
from .quants.types import F16, F32, type_name

VECTOR_TYPES = (F32, F16)  # norms and biases are read as float arrays
_LAYER = re.compile(r"blk\.(\d+)\.")


class ModelFileError(ConfigError):
    """The tensors disagree with the hyperparameters, or the tokenizer metadata is malformed."""


class ContextTooLarge(ValueError):
    """The KV cache for the asked context would not fit in memory."""


@dataclass(frozen=True)
class Dim:
    """One expected tensor dimension and the metadata it comes from (for the error message)."""
    size: int
    source: str


@dataclass(frozen=True)
class TensorSpec:
    dims: tuple[Dim, ...]  # GGUF order, innermost first
    required: bool = True

    @property
    def is_vector(self) -> bool:
        return len(self.dims) == 1


def check_tensors(path: str, tensors: dict, config: ModelConfig, specs: dict[str, TensorSpec]) -> None:
    """Every spec'd tensor present (unless optional) with its shape and a usable type; no stray ones."""
    for name in tensors:
        if name not in specs:
            raise ModelFileError(_stray(path, name, config))
    for name, spec in specs.items():
        info = tensors.get(name)
        if info is None:
            if spec.required:
                raise ModelFileError(f"{path}: tensor {name} is missing (a {config.arch} model needs it)")
            continue
        _check_shape(path, name, info.shape, spec)
        if spec.is_vector and info.type_id not in VECTOR_TYPES:
            raise ModelFileError(f"{path}: tensor {name} is {type_name(info.type_id)}; "
                                 "norm weights must be F32 or F16")


def _stray(path: str, name: str, config: ModelConfig) -> str:
    layer = _LAYER.match(name)
    if layer and int(layer.group(1)) >= config.n_layer:
        return (f"{path}: tensor {name} belongs to layer {layer.group(1)}, but {config.arch}.block_count "
                f"is {config.n_layer}")
    return f"{path}: tensor {name} is not part of a {config.arch} model"


def _check_shape(path: str, name: str, shape: tuple[int, ...], spec: TensorSpec) -> None:
    # Trailing dimensions of 1 carry no meaning in ggml.
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != len(spec.dims):
        want = [d.size for d in spec.dims]
        raise ModelFileError(f"{path}: tensor {name} has shape {list(shape)}, expected {want}")
    for axis, (actual, dim) in enumerate(zip(shape, spec.dims, strict=True)):
        if actual != dim.size:
            raise ModelFileError(f"{path}: tensor {name} has {actual} in dimension {axis}, but {dim.source} "
                                 f"gives {dim.size}")


# --- tokenizer metadata -------------------------------------------------------------------------

_TOKENIZER_ARRAYS = {
    "tokenizer.ggml.tokens": "strings",
    "tokenizer.ggml.merges": "strings",
    "tokenizer.ggml.token_type": "integers",
    "tokenizer.ggml.scores": "numbers",
}
_TOKENIZER_IDS = ("bos", "eos", "eot", "eom", "unknown", "padding", "seperator", "sep", "cls", "mask",
                  "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")


def check_tokenizer_metadata(path: str, kv: dict) -> None:
    """The tokenizer keys with the element types and lengths the tokenizer relies on."""
    for key, kind in _TOKENIZER_ARRAYS.items():
        value = kv.get(key)
        if value is not None and not _is_array_of(value, kind):
            raise ModelFileError(f"{path}: {key} must be an array of {kind}")
    tokens = kv.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFileError(f"{path}: tokenizer.ggml.tokens is missing or empty: the model carries no vocabulary")
    n_vocab = len(tokens)
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        value = kv.get(key)
        if value is not None and len(value) < n_vocab:
            raise ModelFileError(f"{path}: {key} has {len(value)} entries for {n_vocab} tokens")
    for merge in kv.get("tokenizer.ggml.merges") or ():
        if " " not in merge[1:]:
            raise ModelFileError(f"{path}: tokenizer.ggml.merges entry {merge[:40]!r} is not two tokens "
                                 "separated by a space")
    for name in _TOKENIZER_IDS:
        key = f"tokenizer.ggml.{name}_token_id"
        value = kv.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ModelFileError(f"{path}: {key} must be an integer, got {type(value).__name__}")
        if not 0 <= int(value) < n_vocab and int(value) != -1 and int(value) != 0xFFFFFFFF:
            raise ModelFileError(f"{path}: {key} = {int(value)} lies outside the vocabulary of {n_vocab} tokens")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        if key in kv and not isinstance(kv[key], str):
            raise ModelFileError(f"{path}: {key} must be a string")


def _is_array_of(value, kind: str) -> bool:
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(s, str) for s in value)
    if not isinstance(value, np.ndarray):
        return False
    if kind == "integers":
        return np.issubdtype(value.dtype, np.integer)
    return np.issubdtype(value.dtype, np.number) and bool(np.isfinite(value).all())


# --- memory -------------------------------------------------------------------------------------

def context_bytes(config: ModelConfig, n_ctx: int, bytes_per_value: float = 2, n_layer: int | None = None) -> int:
    """KV cache (of every layer, or n_layer of them) plus RoPE tables for n_ctx positions."""
    c = config
    layers = c.n_layer if n_layer is None else n_layer
    kv = layers * n_ctx * c.n_head_kv * (c.head_dim + c.head_dim_v) * bytes_per_value
    rope = 2 * 2 * n_ctx * (c.rope_dim // 2) * 4  # cos and sin, up to two bases
    return int(kv) + rope


def available_memory() -> int:
    """Bytes the machine can hand out now (MemAvailable), or its physical size where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 62


def check_context_memory(config: ModelConfig, n_ctx: int, n_layer: int | None = None,
                         bytes_per_value: float = 2) -> None:
    if n_ctx <= 0:
        raise ContextTooLarge(f"context size must be positive, got {n_ctx} (-c)")
    need, have = context_bytes(config, n_ctx, bytes_per_value, n_layer=n_layer), available_memory()
    if need > have:
        raise ContextTooLarge(
            f"a context of {n_ctx} tokens (-c) needs {_gib(need)} for the KV cache, more than the {_gib(have)} "
            f"this machine has free; use a smaller -c (the model was trained for {config.n_ctx_train})"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


__all__ = ["ContextTooLarge", "Dim", "ModelFileError", "TensorSpec", "check_context_memory",
           "check_tensors", "check_tokenizer_metadata", "context_bytes"]

"""The model's hyperparameters, read once from the `{arch}.*` GGUF keys into a frozen dataclass.

Every number is checked here for its type and range before anything is sized by it; that it agrees
with the tensors is checked in validate.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class ConfigError(ValueError):
    """A required hyperparameter is missing, out of range or inconsistent."""


# Generous bounds: far beyond any real model, small enough that nothing sized by them can run away.
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20
MAX_HEADS = 4096
MAX_HEAD_DIM = 4096
MAX_CONTEXT = 1 << 24


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    name: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    rms_eps: float
    rope_base: float
    rope_dim: int
    rope_base_swa: float = 10000.0
    sliding_window: int = 0
    # layer i uses the sliding window when layer_is_swa[i]
    layer_is_swa: tuple[bool, ...] = field(default_factory=tuple)
    final_logit_softcap: float = 0.0
    file_type: int = -1
    size_label: str = ""
    # rope.scaling.attn_factor: the magnitude ggml_rope_ext scales cos/sin by (Phi-3's longrope)
    rope_attn_factor: float = 1.0
    # rope.scaling.original_context_length: the context the model was pre-trained for (longrope's switch)
    n_ctx_orig: int = 0

    @property
    def gqa_ratio(self) -> int:
        return self.n_head // self.n_head_kv

    @classmethod
    def from_gguf(cls, kv: dict, n_vocab_fallback: int | None = None) -> ModelConfig:
        arch = kv.get("general.architecture")
        if not isinstance(arch, str):
            raise ConfigError("general.architecture is missing: not a model GGUF")
        keys = _Keys(kv, arch)
        n_layer = keys.integer("block_count", lo=1, hi=MAX_LAYERS)
        n_embd = keys.integer("embedding_length", lo=1, hi=MAX_WIDTH)
        n_head = keys.per_layer("attention.head_count", n_layer, lo=1, hi=MAX_HEADS)
        n_head_kv = keys.per_layer("attention.head_count_kv", n_layer, lo=1, hi=n_head, default=n_head)
        if n_head % n_head_kv:
            raise ConfigError(f"{arch}.attention.head_count {n_head} is not a multiple of "
                              f"{arch}.attention.head_count_kv {n_head_kv}")
        if kv.get(f"{arch}.attention.key_length") is None and n_embd % n_head:
            raise ConfigError(f"{arch}.embedding_length {n_embd} is not a multiple of {arch}.attention.head_count "
                              f"{n_head}, and no {arch}.attention.key_length gives the head size")
        head_dim = keys.integer("attention.key_length", lo=1, hi=MAX_HEAD_DIM, default=n_embd // n_head)
        n_vocab = _vocab_size(kv, keys, n_vocab_fallback)
        return cls(
            arch=arch,
            name=str(kv.get("general.name", arch)),
            n_vocab=n_vocab,
            n_ctx_train=keys.integer("context_length", lo=1, hi=MAX_CONTEXT, default=2048),
            n_embd=n_embd,
            n_layer=n_layer,
            n_ff=keys.per_layer("feed_forward_length", n_layer, lo=1, hi=MAX_WIDTH),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=keys.integer("attention.value_length", lo=1, hi=MAX_HEAD_DIM, default=head_dim),
            rms_eps=keys.real("attention.layer_norm_rms_epsilon", 1e-5, positive=True, below=1.0),
            rope_base=keys.real("rope.freq_base", 10000.0, positive=True),
            rope_dim=_rope_dim(keys, head_dim),
            rope_base_swa=keys.real("rope.freq_base_swa", 10000.0, positive=True),
            sliding_window=keys.integer("attention.sliding_window", lo=0, hi=MAX_CONTEXT, default=0),
            layer_is_swa=(False,) * n_layer,
            final_logit_softcap=keys.real("final_logit_softcapping", 0.0),
            file_type=_int_or(kv.get("general.file_type"), -1),
            size_label=str(kv.get("general.size_label", "")),
            rope_attn_factor=keys.real("rope.scaling.attn_factor", 1.0, positive=True, below=1e3),
            n_ctx_orig=keys.integer("rope.scaling.original_context_length", lo=1, hi=MAX_CONTEXT,
                                    default=keys.integer("context_length", lo=1, hi=MAX_CONTEXT, default=2048)),
        )


class _Keys:
    """Typed, range-checked reads of `{arch}.*` keys; each failure names the key and the value."""

    def __init__(self, kv: dict, arch: str):
        self.kv = kv
        self.arch = arch

    def raw(self, key: str, default):
        value = self.kv.get(f"{self.arch}.{key}", default)
        if value is None:
            raise ConfigError(f"missing hyperparameter {self.arch}.{key}")
        return value

    def integer(self, key: str, lo: int, hi: int, default=None) -> int:
        return self._in_range(key, self.raw(key, default), lo, hi)

    def per_layer(self, key: str, n_layer: int, lo: int, hi: int, default=None) -> int:
        """GGUF lets some counts be one number or one per layer; llamapy runs the uniform case."""
        value = self.raw(key, default)
        if isinstance(value, np.ndarray | list):
            if len(value) != n_layer:
                raise ConfigError(f"{self.arch}.{key} has {len(value)} entries for {n_layer} layers")
            values = {self._in_range(key, v, lo, hi) for v in value}
            if len(values) != 1:
                raise ConfigError(f"{self.arch}.{key} differs between layers ({sorted(values)}), "
                                  "which llamapy does not run")
            return values.pop()
        return self._in_range(key, value, lo, hi)

    def real(self, key: str, default: float, positive: bool = False, below: float = math.inf) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ConfigError(f"{self.arch}.{key} must be a number, got {_show(value)}")
        value = float(value)
        bad = not math.isfinite(value) or value < 0 or (positive and value == 0) or value >= below
        if bad:
            want = "a finite positive number" if positive else "a finite number ≥ 0"
            raise ConfigError(f"{self.arch}.{key} = {value} is out of range (must be {want}"
                              + (f" below {below})" if below != math.inf else ")"))
        return value

    def _in_range(self, key: str, value, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ConfigError(f"{self.arch}.{key} must be an integer, got {_show(value)}")
        if not lo <= int(value) <= hi:
            raise ConfigError(f"{self.arch}.{key} = {int(value)} is out of range ({lo}..{hi})")
        return int(value)


def _vocab_size(kv: dict, keys: _Keys, fallback: int | None) -> int:
    tokens = kv.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and tokens:
        return len(tokens)
    if kv.get(f"{keys.arch}.vocab_size") is not None:
        return keys.integer("vocab_size", lo=1, hi=1 << 26)
    if fallback is None:
        raise ConfigError("the file has no vocabulary (tokenizer.ggml.tokens is missing or empty)")
    return fallback


def _rope_dim(keys: _Keys, head_dim: int) -> int:
    rope_dim = keys.integer("rope.dimension_count", lo=0, hi=MAX_HEAD_DIM, default=head_dim)
    if rope_dim > head_dim or rope_dim % 2 or rope_dim == 0:
        raise ConfigError(f"{keys.arch}.rope.dimension_count = {rope_dim} must be even, positive and at most "
                          f"the head size {head_dim}")
    return rope_dim


def _int_or(value, default: int) -> int:
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else default


def _show(value) -> str:
    text = repr(value if not isinstance(value, np.ndarray) else f"an array of {len(value)}")
    return text if len(text) <= 40 else text[:37] + "..."

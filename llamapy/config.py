"""The model's hyperparameters, read once from the `{arch}.*` GGUF keys into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ConfigError(ValueError):
    """A required hyperparameter is missing or inconsistent."""


def _per_layer(value, n_layer: int, name: str) -> tuple[int, ...]:
    """GGUF lets some counts be one number or one per layer (e.g. head_count_kv)."""
    if isinstance(value, np.ndarray):
        if len(value) != n_layer:
            raise ConfigError(f"{name} has {len(value)} entries for {n_layer} layers")
        return tuple(int(v) for v in value)
    return (int(value),) * n_layer


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

    @property
    def gqa_ratio(self) -> int:
        return self.n_head // self.n_head_kv

    @classmethod
    def from_gguf(cls, kv: dict, n_vocab_fallback: int | None = None) -> ModelConfig:
        arch = kv.get("general.architecture")
        if not isinstance(arch, str):
            raise ConfigError("general.architecture is missing: not a model GGUF")

        def get(key: str, default=None, required: bool = True):
            value = kv.get(f"{arch}.{key}", default)
            if value is None and required:
                raise ConfigError(f"missing hyperparameter {arch}.{key}")
            return value

        n_layer = int(get("block_count"))
        n_embd = int(get("embedding_length"))
        n_head = _per_layer(get("attention.head_count"), n_layer, "head_count")[0]
        n_head_kv = _per_layer(get("attention.head_count_kv", n_head), n_layer, "head_count_kv")[0]
        head_dim = int(get("attention.key_length", n_embd // n_head))
        n_ff = _per_layer(get("feed_forward_length"), n_layer, "feed_forward_length")[0]
        n_vocab = get("vocab_size", None, required=False)
        if n_vocab is None:
            tokens = kv.get("tokenizer.ggml.tokens")
            n_vocab = len(tokens) if tokens is not None else n_vocab_fallback
        if n_head % n_head_kv:
            raise ConfigError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        sliding_window = int(get("attention.sliding_window", 0))
        return cls(
            arch=arch,
            name=str(kv.get("general.name", arch)),
            n_vocab=int(n_vocab),
            n_ctx_train=int(get("context_length", 2048)),
            n_embd=n_embd,
            n_layer=n_layer,
            n_ff=n_ff,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=int(get("attention.value_length", head_dim)),
            rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(get("rope.freq_base", 10000.0)),
            rope_dim=int(get("rope.dimension_count", head_dim)),
            rope_base_swa=float(get("rope.freq_base_swa", 10000.0)),
            sliding_window=sliding_window,
            layer_is_swa=(False,) * n_layer,
            final_logit_softcap=float(get("final_logit_softcapping", 0.0)),
            file_type=int(kv.get("general.file_type", -1)),
            size_label=str(kv.get("general.size_label", "")),
        )

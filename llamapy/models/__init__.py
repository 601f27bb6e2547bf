"""Architectures by `general.architecture`."""

from __future__ import annotations

from ..config import ModelConfig
from .base import DecoderModel
from .blocks import Weights
from .gemma3 import Gemma3
from .glm4 import Glm4
from .llama import Llama
from .phi3 import Phi3
from .qwen2 import Qwen2
from .qwen3 import Qwen3

ARCHITECTURES: dict[str, type[DecoderModel]] = {
    "llama": Llama,
    "gemma3": Gemma3,
    "qwen2": Qwen2,
    "qwen3": Qwen3,
    "phi3": Phi3,
    "glm4": Glm4,
}


class UnknownArchitecture(ValueError):
    pass


def check_architecture(arch: object) -> type[DecoderModel]:
    cls = ARCHITECTURES.get(arch) if isinstance(arch, str) else None
    if cls is None:
        raise UnknownArchitecture(
            f"unknown model architecture '{arch}' (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return cls


def build_model(weights: Weights, config: ModelConfig) -> DecoderModel:
    return check_architecture(config.arch)(weights, config)

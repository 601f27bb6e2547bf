"""Llama (and SmolLM, Mistral-style) decoder: pre-norm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

from ..config import ModelConfig
from .base import PreNormDecoder, attention_specs, feed_forward_specs, rope_factor_specs
from .blocks import Weights


class Llama(PreNormDecoder):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        if weights.has("rope_freqs.weight"):  # Llama 3.1's long-context frequency divisors
            self.rope_freq_factors = weights.vector("rope_freqs.weight")

    @classmethod
    def tensor_specs(cls, config):
        return {**super().tensor_specs(config), **rope_factor_specs(config, "rope_freqs.weight")}

    @classmethod
    def layer_specs(cls, config):
        return {**attention_specs(config), **feed_forward_specs(config)}

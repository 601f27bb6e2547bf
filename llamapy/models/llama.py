"""Llama (and SmolLM, Mistral-style) decoder: pre-norm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NORMAL
from .base import (
    DecoderModel,
    attention_specs,
    feed_forward_specs,
    layer_attention,
    layer_feed_forward,
    layer_vector,
    rope_factor_specs,
)
from .blocks import Weights, norm


class Llama(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)
        if weights.has("rope_freqs.weight"):  # Llama 3.1's long-context frequency divisors
            self.rope_freq_factors = weights.vector("rope_freqs.weight")

    @classmethod
    def tensor_specs(cls, config):
        return {**super().tensor_specs(config), **rope_factor_specs(config, "rope_freqs.weight")}

    @classmethod
    def layer_specs(cls, config):
        return {**attention_specs(config), **feed_forward_specs(config)}

    def _load_layer(self, i: int) -> dict:
        w = self.weights
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": layer_attention(w, self.config, i, ROPE_NORMAL),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": layer_feed_forward(w, i, "silu"),
        }

    def layer_forward(self, x, layer, cache, pos0, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = rope.slice(self.config.rope_base, pos0, x.shape[0])
        x = x + p["attn"](norm(x, p["attn_norm"], eps), cache, layer, pos0, tables, self.attn_scale)
        return x + p["ffn"](norm(x, p["ffn_norm"], eps))

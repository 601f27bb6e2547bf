"""Qwen2 (and Qwen2.5): Llama's layer with biases on the q/k/v projections and NeoX-order RoPE."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NEOX
from .base import (
    DecoderModel,
    attention_specs,
    feed_forward_specs,
    layer_attention,
    layer_feed_forward,
    layer_qkv_biases,
    layer_vector,
    qkv_bias_specs,
)
from .blocks import Weights, norm


class Qwen2(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)

    @classmethod
    def layer_specs(cls, config):
        return {**attention_specs(config), **qkv_bias_specs(config), **feed_forward_specs(config)}

    def _load_layer(self, i: int) -> dict:
        w = self.weights
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": layer_attention(w, self.config, i, ROPE_NEOX, **layer_qkv_biases(w, i)),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": layer_feed_forward(w, i, "silu"),
        }

    def layer_forward(self, x, layer, cache, pos0, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = rope.slice(self.config.rope_base, pos0, x.shape[0])
        x = x + p["attn"](norm(x, p["attn_norm"], eps), cache, layer, pos0, tables, self.attn_scale)
        return x + p["ffn"](norm(x, p["ffn_norm"], eps))

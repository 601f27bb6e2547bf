"""Qwen3 (dense): Llama's layer with per-head RMS norms on queries and keys, NeoX-order RoPE, no biases."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NEOX
from .base import (
    DecoderModel,
    attention_specs,
    feed_forward_specs,
    head_norm_specs,
    layer_attention,
    layer_feed_forward,
    layer_vector,
)
from .blocks import Weights, norm


class Qwen3(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)

    @classmethod
    def layer_specs(cls, config):
        return {**attention_specs(config), **head_norm_specs(config), **feed_forward_specs(config)}

    def _load_layer(self, i: int) -> dict:
        w, c = self.weights, self.config
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": layer_attention(w, c, i, ROPE_NEOX, q_norm=layer_vector(w, i, "attn_q_norm"),
                                    k_norm=layer_vector(w, i, "attn_k_norm"), norm_eps=c.rms_eps),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": layer_feed_forward(w, i, "silu"),
        }

    def layer_forward(self, x, layer, cache, pos0, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = rope.slice(self.config.rope_base, pos0, x.shape[0])
        x = x + p["attn"](norm(x, p["attn_norm"], eps), cache, layer, pos0, tables, self.attn_scale)
        return x + p["ffn"](norm(x, p["ffn_norm"], eps))

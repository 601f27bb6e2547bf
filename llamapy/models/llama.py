"""Llama (and SmolLM, Mistral-style) decoder: pre-norm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NORMAL
from .base import DecoderModel, layer_linear, layer_vector
from .blocks import AttentionLayer, FeedForward, Weights, norm


class Llama(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)

    def _load_layer(self, i: int) -> dict:
        w, c = self.weights, self.config
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": AttentionLayer(
                layer_linear(w, i, "attn_q"), layer_linear(w, i, "attn_k"), layer_linear(w, i, "attn_v"),
                layer_linear(w, i, "attn_output"), c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, ROPE_NORMAL,
            ),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": FeedForward(layer_linear(w, i, "ffn_gate"), layer_linear(w, i, "ffn_up"),
                               layer_linear(w, i, "ffn_down"), "silu"),
        }

    def layer_forward(self, x, layer, cache, pos0, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = rope.slice(self.config.rope_base, pos0, x.shape[0])
        x = x + p["attn"](norm(x, p["attn_norm"], eps), cache, layer, pos0, tables, self.attn_scale)
        return x + p["ffn"](norm(x, p["ffn_norm"], eps))

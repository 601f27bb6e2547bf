"""Gemma 3: scaled embeddings, q/k norms, post-norms, GeGLU, and 5 sliding-window layers per global one."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NEOX
from ..validate import Dim, TensorSpec
from .base import (
    DecoderModel,
    attention_specs,
    feed_forward_specs,
    head_norm_specs,
    layer_attention,
    layer_feed_forward,
    layer_vector,
)
from .blocks import Weights

SWA_PATTERN = 6  # every 6th layer attends globally, the others through the sliding window


class Gemma3(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.is_swa = [config.sliding_window > 0 and i % SWA_PATTERN < SWA_PATTERN - 1
                       for i in range(config.n_layer)]
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.embd_scale = np.float32(np.sqrt(config.n_embd))
        # Gemma scales the queries before attention rather than the scores inside it.
        self.q_scale = 1.0 / np.sqrt(config.head_dim)

    @classmethod
    def layer_specs(cls, config):
        embd = Dim(config.n_embd, "gemma3.embedding_length")
        post_norms = {name: TensorSpec((embd,)) for name in ("post_attention_norm.weight", "post_ffw_norm.weight")}
        return {**attention_specs(config), **head_norm_specs(config), **feed_forward_specs(config), **post_norms}

    def _load_layer(self, i: int) -> dict:
        w, c = self.weights, self.config
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": layer_attention(
                w, c, i, ROPE_NEOX, q_norm=layer_vector(w, i, "attn_q_norm"), k_norm=layer_vector(w, i, "attn_k_norm"),
                norm_eps=c.rms_eps, window=c.sliding_window if self.is_swa[i] else 0,
            ),
            "attn_post_norm": layer_vector(w, i, "post_attention_norm"),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": layer_feed_forward(w, i, "gelu"),
            "ffn_post_norm": layer_vector(w, i, "post_ffw_norm"),
        }

    def embed(self, tokens):
        return super().embed(tokens) * self.embd_scale

    def layer_forward(self, x, layer, batch, rope):
        p, eps, c = self.layers[layer], self.config.rms_eps, self.config
        base = c.rope_base_swa if self.is_swa[layer] else c.rope_base
        tables = batch.rope(rope, base)
        x = p["attn"].residual(x, (p["attn_norm"], p["attn_post_norm"]), eps, batch, layer, tables, 1.0,
                               q_prescale=self.q_scale)
        return p["ffn"].residual(x, (p["ffn_norm"], p["ffn_post_norm"]), eps, batch)

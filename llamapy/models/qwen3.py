"""Qwen3 (dense): Llama's layer with per-head RMS norms on queries and keys, NeoX-order RoPE, no biases."""

from __future__ import annotations

from ..kernels.rope import ROPE_NEOX
from .base import PreNormDecoder, attention_specs, feed_forward_specs, head_norm_specs, layer_vector


class Qwen3(PreNormDecoder):
    rope_mode = ROPE_NEOX

    @classmethod
    def layer_specs(cls, config):
        return {**attention_specs(config), **head_norm_specs(config), **feed_forward_specs(config)}

    def attention_options(self, layer: int) -> dict:
        w = self.weights
        return {"q_norm": layer_vector(w, layer, "attn_q_norm"), "k_norm": layer_vector(w, layer, "attn_k_norm"),
                "norm_eps": self.config.rms_eps}

"""Qwen2 (and Qwen2.5): Llama's layer with biases on the q/k/v projections and NeoX-order RoPE."""

from __future__ import annotations

from ..kernels.rope import ROPE_NEOX
from .base import PreNormDecoder, attention_specs, feed_forward_specs, layer_qkv_biases, qkv_bias_specs


class Qwen2(PreNormDecoder):
    rope_mode = ROPE_NEOX

    @classmethod
    def layer_specs(cls, config):
        return {**attention_specs(config), **qkv_bias_specs(config), **feed_forward_specs(config)}

    def attention_options(self, layer: int) -> dict:
        return layer_qkv_biases(self.weights, layer)

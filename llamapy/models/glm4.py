"""GLM-4 (transformers' Glm4ForCausalLM, llama.cpp's `glm4`): q/k/v biases, interleaved RoPE on the first
half of each head, fused gate|up, and RMS norms after attention and after the feed-forward too."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NORMAL
from ..validate import Dim, TensorSpec
from .base import DecoderModel, attention_specs, layer_attention, layer_qkv_biases, layer_vector, qkv_bias_specs
from .blocks import FeedForward, Weights


class Glm4(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)

    @classmethod
    def layer_specs(cls, config):
        a, c = config.arch, config
        embd = Dim(c.n_embd, f"{a}.embedding_length")
        ff, ff2 = Dim(c.n_ff, f"{a}.feed_forward_length"), Dim(2 * c.n_ff, f"2 × {a}.feed_forward_length")
        norms = ("post_attention_norm.weight", "ffn_norm.weight", "post_ffw_norm.weight")
        return {
            **attention_specs(config), **qkv_bias_specs(config, required=False),
            **{name: TensorSpec((embd,)) for name in norms},
            "ffn_up.weight": TensorSpec((embd, ff2)),
            "ffn_down.weight": TensorSpec((ff, embd)),
        }

    def _load_layer(self, i: int) -> dict:
        w, c = self.weights, self.config
        biases = layer_qkv_biases(w, i) if w.has(f"blk.{i}.attn_q.bias") else {}
        gate, up = w.split_linear(f"blk.{i}.ffn_up.weight", [c.n_ff, c.n_ff])
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": layer_attention(w, c, i, ROPE_NORMAL, **biases),
            "attn_post_norm": layer_vector(w, i, "post_attention_norm"),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": FeedForward(gate, up, w.linear(f"blk.{i}.ffn_down.weight"), "silu"),
            "ffn_post_norm": layer_vector(w, i, "post_ffw_norm"),
        }

    def layer_forward(self, x, layer, batch, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = batch.rope(rope, self.config.rope_base)
        x = p["attn"].residual(x, (p["attn_norm"], p["attn_post_norm"]), eps, batch, layer, tables, self.attn_scale)
        return p["ffn"].residual(x, (p["ffn_norm"], p["ffn_post_norm"]), eps, batch)

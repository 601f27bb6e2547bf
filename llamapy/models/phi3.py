"""Phi-3: fused q|k|v and gate|up weights, NeoX RoPE with longrope frequency factors, queries scaled first.

llama.cpp picks rope_factors_long when the context exceeds the pre-training context
(rope.scaling.original_context_length), else rope_factors_short, and scales cos/sin by
rope.scaling.attn_factor either way; it runs Phi-3's sliding window as full attention.
"""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NEOX
from ..validate import Dim, TensorSpec
from .base import DecoderModel, layer_vector, rope_factor_specs
from .blocks import AttentionLayer, FeedForward, RopeCache, Weights


class Phi3(DecoderModel):
    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.q_scale = 1.0 / np.sqrt(config.head_dim)
        self.rope_mscale = config.rope_attn_factor
        self.factors = {kind: weights.vector(f"rope_factors_{kind}.weight")
                        for kind in ("long", "short") if weights.has(f"rope_factors_{kind}.weight")}

    @classmethod
    def tensor_specs(cls, config):
        return {**super().tensor_specs(config),
                **rope_factor_specs(config, "rope_factors_long.weight", "rope_factors_short.weight")}

    @classmethod
    def layer_specs(cls, config):
        a, c = config.arch, config
        embd = Dim(c.n_embd, f"{a}.embedding_length")
        qkv = Dim(c.n_head * c.head_dim + 2 * c.n_head_kv * c.head_dim,
                  f"{a}: head_count × key_length + 2 × head_count_kv × key_length")
        o = Dim(c.n_head * c.head_dim, f"{a}.attention.head_count × key_length")
        ff, ff2 = Dim(c.n_ff, f"{a}.feed_forward_length"), Dim(2 * c.n_ff, f"2 × {a}.feed_forward_length")
        return {
            "attn_norm.weight": TensorSpec((embd,)),
            "attn_qkv.weight": TensorSpec((embd, qkv)),
            "attn_output.weight": TensorSpec((o, embd)),
            "ffn_norm.weight": TensorSpec((embd,)),
            "ffn_up.weight": TensorSpec((embd, ff2)),
            "ffn_down.weight": TensorSpec((ff, embd)),
        }

    def _load_layer(self, i: int) -> dict:
        w, c = self.weights, self.config
        q, k, v = w.split_linear(f"blk.{i}.attn_qkv.weight",
                                 [c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim])
        gate, up = w.split_linear(f"blk.{i}.ffn_up.weight", [c.n_ff, c.n_ff])
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": AttentionLayer(q, k, v, w.linear(f"blk.{i}.attn_output.weight"), c.n_head, c.n_head_kv,
                                   c.head_dim, c.head_dim, ROPE_NEOX),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": FeedForward(gate, up, w.linear(f"blk.{i}.ffn_down.weight"), "silu"),
        }

    def rope(self, n_ctx: int) -> RopeCache:
        kind = "long" if n_ctx > self.config.n_ctx_orig else "short"
        factors = self.factors.get(kind)
        if self._rope is not None and self._rope.freq_factors is not factors:
            self._rope = None  # the context crossed the pre-training length: the other factors apply
        self.rope_freq_factors = factors
        return super().rope(n_ctx)

    def layer_forward(self, x, layer, batch, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = batch.rope(rope, self.config.rope_base)
        x = p["attn"].residual(x, (p["attn_norm"], None), eps, batch, layer, tables, 1.0, q_prescale=self.q_scale)
        return p["ffn"].residual(x, (p["ffn_norm"], None), eps, batch)

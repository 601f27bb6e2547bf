"""What every architecture shares: embedding, a stack of layers, final norm and output head."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kernels.rope import ROPE_NORMAL
from ..kv_cache import KVCache, cache_type
from ..validate import Dim, TensorSpec, check_context_memory
from .batch import Batch
from .blocks import AttentionLayer, FeedForward, Linear, RopeCache, Weights, norm


class DecoderModel:
    """A decoder-only transformer; an architecture fills in `layer_forward` and its tensors."""

    def __init__(self, weights: Weights, config: ModelConfig):
        self.config = config
        self.weights = weights
        self.tok_embd = weights.linear("token_embd.weight")
        self.output_norm = weights.vector("output_norm.weight")
        # Tied embeddings: most small models reuse token_embd as the output head.
        self.output = weights.linear("output.weight") if weights.has("output.weight") else self.tok_embd
        self._rope: RopeCache | None = None
        # ggml_rope_ext's per-frequency divisors and magnitude (rope_freqs, longrope): none by default.
        self.rope_freq_factors: np.ndarray | None = None
        self.rope_mscale = 1.0

    @classmethod
    def tensor_specs(cls, config: ModelConfig) -> dict[str, TensorSpec]:
        """Every tensor the architecture reads, with the shape its config implies."""
        specs = model_tensor_specs(config)
        per_layer = cls.layer_specs(config)
        for layer in range(config.n_layer):
            specs.update({f"blk.{layer}.{name}": spec for name, spec in per_layer.items()})
        return specs

    @classmethod
    def layer_specs(cls, config: ModelConfig) -> dict[str, TensorSpec]:
        raise NotImplementedError

    # KV cache storage types of keys and values (-ctk / -ctv): llama.cpp's default, f16.
    cache_types: tuple[str, str] = ("f16", "f16")
    flash_attn = True  # -fa: our attention kernels are flash attention's; off takes the plain graph

    def new_cache(self, n_ctx: int, layers: range | None = None) -> KVCache:
        """A cache of n_ctx positions for every layer, or for a pipeline stage's `layers` only."""
        c = self.config
        layers = layers if layers is not None else range(c.n_layer)
        type_k, type_v = (cache_type(t) for t in self.cache_types)
        check_context_memory(c, n_ctx, n_layer=len(layers),
                             bytes_per_value=(type_k.bytes_per_value() + type_v.bytes_per_value()) / 2)
        return KVCache(len(layers), n_ctx, c.n_head_kv, c.head_dim, c.head_dim_v, first_layer=layers.start,
                       type_k=type_k.name, type_v=type_v.name, flash_attn=self.flash_attn)

    def new_caches(self, n_seq: int, n_ctx: int) -> list[KVCache]:
        """n_seq caches of n_ctx positions in one pool (KVCache.pooled): the slots of a server, whose
        decode steps then reach every sequence's cache in one call per block."""
        c = self.config
        type_k, type_v = (cache_type(t) for t in self.cache_types)
        check_context_memory(c, n_ctx * n_seq,
                             bytes_per_value=(type_k.bytes_per_value() + type_v.bytes_per_value()) / 2)
        return KVCache.pooled(n_seq, c.n_layer, n_ctx, c.n_head_kv, c.head_dim, c.head_dim_v, type_k=type_k.name,
                              type_v=type_v.name, flash_attn=self.flash_attn)

    def rope(self, n_ctx: int) -> RopeCache:
        if self._rope is None or self._rope.n_ctx < n_ctx:
            self._rope = RopeCache(max(n_ctx, 512), self.config.rope_dim, self.rope_freq_factors, self.rope_mscale)
        return self._rope

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.tok_embd.rows_f32(tokens)

    def forward(self, tokens: np.ndarray, cache: KVCache, all_logits: bool = False,
                logits_from: int | None = None) -> np.ndarray:
        """Run tokens at positions cache.n_past.., extend the cache; logits of the last token, of every
        token (all_logits), or of tokens[logits_from:] (the output head is the largest matrix)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        batch = Batch.single(cache, len(tokens))
        x = self.run_layers(self.embed(tokens), batch)
        batch.commit()
        if logits_from is not None:
            x = x[logits_from:]
        elif not all_logits:
            x = x[-1:]
        return self.head(x)

    def forward_batch(self, tokens: list[np.ndarray], caches: list[KVCache]) -> np.ndarray:
        """Several sequences in one pass, each extending its own cache: the logits after each
        sequence's last token, [len(caches), n_vocab]. Each row equals what `forward` gives alone."""
        tokens = [np.asarray(t, dtype=np.int64) for t in tokens]
        batch = Batch(caches, [len(t) for t in tokens])
        x = self.run_layers(self.embed(np.concatenate(tokens)), batch)
        batch.commit()
        return self.head(np.ascontiguousarray(x[batch.last_rows()]))

    def run_layers(self, x: np.ndarray, batch: Batch, layers: range | None = None) -> np.ndarray:
        """Hidden states after `layers` (default all): a pipeline stage runs only its own range.
        The caches are not committed: the caller does that once every stage has run."""
        layers = layers if layers is not None else range(self.config.n_layer)
        rope = self.rope(batch.n_ctx())
        for layer in layers:
            x = self.layer_forward(x, layer, batch, rope)
        return x

    def head(self, x: np.ndarray) -> np.ndarray:
        logits = self.output(norm(x, self.output_norm, self.config.rms_eps))
        cap = self.config.final_logit_softcap
        if cap:
            logits = np.tanh(logits / cap) * cap
        return logits

    def layer_forward(self, x: np.ndarray, layer: int, batch: Batch, rope: RopeCache) -> np.ndarray:
        raise NotImplementedError



class PreNormDecoder(DecoderModel):
    """Llama's layer: x + attention(norm(x)), then x + SwiGLU(norm(x)). Llama, Qwen2 and Qwen3 differ only
    in their RoPE order and what their attention carries (biases, q/k norms)."""

    rope_mode = ROPE_NORMAL

    def __init__(self, weights: Weights, config: ModelConfig):
        super().__init__(weights, config)
        self.layers = [self._load_layer(i) for i in range(config.n_layer)]
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)

    def attention_options(self, layer: int) -> dict:
        """Extra AttentionLayer fields of one layer (q/k/v biases, q/k norms)."""
        return {}

    def _load_layer(self, i: int) -> dict:
        w = self.weights
        return {
            "attn_norm": layer_vector(w, i, "attn_norm"),
            "attn": layer_attention(w, self.config, i, self.rope_mode, **self.attention_options(i)),
            "ffn_norm": layer_vector(w, i, "ffn_norm"),
            "ffn": layer_feed_forward(w, i, "silu"),
        }

    def layer_forward(self, x, layer, batch, rope):
        p, eps = self.layers[layer], self.config.rms_eps
        tables = batch.rope(rope, self.config.rope_base)
        x = p["attn"].residual(x, (p["attn_norm"], None), eps, batch, layer, tables, self.attn_scale)
        return p["ffn"].residual(x, (p["ffn_norm"], None), eps, batch)


def layer_attention(weights: Weights, config: ModelConfig, layer: int, rope_mode: int, **options) -> AttentionLayer:
    """The standard blk.N.attn_{q,k,v,output} self-attention of one layer (options: q/k norms, window)."""
    c = config
    return AttentionLayer(
        layer_linear(weights, layer, "attn_q"), layer_linear(weights, layer, "attn_k"),
        layer_linear(weights, layer, "attn_v"), layer_linear(weights, layer, "attn_output"),
        c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, rope_mode, **options,
    )


def layer_feed_forward(weights: Weights, layer: int, activation: str) -> FeedForward:
    """The gated blk.N.ffn_{gate,up,down} feed-forward of one layer."""
    return FeedForward(layer_linear(weights, layer, "ffn_gate"), layer_linear(weights, layer, "ffn_up"),
                       layer_linear(weights, layer, "ffn_down"), activation)


def layer_linear(weights: Weights, layer: int, name: str) -> Linear:
    return weights.linear(f"blk.{layer}.{name}.weight")


def layer_vector(weights: Weights, layer: int, name: str) -> np.ndarray:
    return weights.vector(f"blk.{layer}.{name}.weight")


def layer_qkv_biases(weights: Weights, layer: int) -> dict[str, np.ndarray]:
    """blk.N.attn_{q,k,v}.bias as AttentionLayer options (Qwen2)."""
    return {f"{x}_bias": weights.vector(f"blk.{layer}.attn_{x}.bias") for x in "qkv"}


# --- the tensors of a standard decoder, as validate.py checks them ------------------------------

def model_tensor_specs(c: ModelConfig) -> dict[str, TensorSpec]:
    embd, vocab = Dim(c.n_embd, f"{c.arch}.embedding_length"), Dim(c.n_vocab, "the vocabulary size")
    return {
        "token_embd.weight": TensorSpec((embd, vocab)),
        "output_norm.weight": TensorSpec((embd,)),
        "output.weight": TensorSpec((embd, vocab), required=False),
    }


def attention_specs(c: ModelConfig) -> dict[str, TensorSpec]:
    a = c.arch
    embd = Dim(c.n_embd, f"{a}.embedding_length")
    q = Dim(c.n_head * c.head_dim, f"{a}.attention.head_count × key_length ({c.n_head} × {c.head_dim})")
    k = Dim(c.n_head_kv * c.head_dim, f"{a}.attention.head_count_kv × key_length ({c.n_head_kv} × {c.head_dim})")
    v = Dim(c.n_head_kv * c.head_dim_v,
            f"{a}.attention.head_count_kv × value_length ({c.n_head_kv} × {c.head_dim_v})")
    o = Dim(c.n_head * c.head_dim_v, f"{a}.attention.head_count × value_length ({c.n_head} × {c.head_dim_v})")
    return {
        "attn_norm.weight": TensorSpec((embd,)),
        "attn_q.weight": TensorSpec((embd, q)),
        "attn_k.weight": TensorSpec((embd, k)),
        "attn_v.weight": TensorSpec((embd, v)),
        "attn_output.weight": TensorSpec((o, embd)),
    }


def feed_forward_specs(c: ModelConfig) -> dict[str, TensorSpec]:
    embd, ff = Dim(c.n_embd, f"{c.arch}.embedding_length"), Dim(c.n_ff, f"{c.arch}.feed_forward_length")
    return {
        "ffn_norm.weight": TensorSpec((embd,)),
        "ffn_gate.weight": TensorSpec((embd, ff)),
        "ffn_up.weight": TensorSpec((embd, ff)),
        "ffn_down.weight": TensorSpec((ff, embd)),
    }


def rope_factor_specs(c: ModelConfig, *names: str, required: bool = False) -> dict[str, TensorSpec]:
    """One divisor per rotated frequency (rope_freqs.weight, rope_factors_long/short.weight)."""
    half = Dim(c.rope_dim // 2, f"{c.arch}.rope.dimension_count / 2")
    return {name: TensorSpec((half,), required=required) for name in names}


def qkv_bias_specs(c: ModelConfig, required: bool = True) -> dict[str, TensorSpec]:
    a = c.arch
    q = Dim(c.n_head * c.head_dim, f"{a}.attention.head_count × key_length")
    k = Dim(c.n_head_kv * c.head_dim, f"{a}.attention.head_count_kv × key_length")
    v = Dim(c.n_head_kv * c.head_dim_v, f"{a}.attention.head_count_kv × value_length")
    return {name: TensorSpec((dim,), required=required)
            for name, dim in (("attn_q.bias", q), ("attn_k.bias", k), ("attn_v.bias", v))}


def head_norm_specs(c: ModelConfig) -> dict[str, TensorSpec]:
    """Per-head RMS norms of queries and keys (Gemma 3, Qwen 3)."""
    head = Dim(c.head_dim, f"{c.arch}.attention.key_length")
    return {"attn_q_norm.weight": TensorSpec((head,)), "attn_k_norm.weight": TensorSpec((head,))}

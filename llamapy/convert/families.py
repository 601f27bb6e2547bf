"""What each model family adds to the common conversion: its GGUF architecture, hyperparameter keys,
tokenizer, tensor rewrites (llama's Q/K row order, Gemma's norm offset) and generated tensors.

One `Family` subclass per llama.cpp converter class we follow; `FAMILIES` maps the Hugging Face
`architectures` names to them.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import gguf
import numpy as np

from . import vocab
from .vocab import TokenizerError, VocabNotes


class UnsupportedModel(ValueError):
    """config.json names an architecture llamapy does not convert."""


def find(hp: dict, *keys: str, default=None):
    return next((hp[k] for k in keys if k in hp), default)


def rope_parameters(hp: dict) -> dict:
    """The rope settings, wherever the config keeps them (rope_parameters, rope_scaling, rope_theta)."""
    rope = dict(hp.get("rope_parameters", hp.get("rope_scaling")) or {})
    if "full_attention" not in rope and "sliding_attention" not in rope:
        local = find(hp, "local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                     "rope_local_base_freq")
        if local is not None:
            rope["sliding_attention"] = {"rope_theta": local}
        theta = find(hp, "global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                     "rotary_emb_base")
        if "rope_theta" not in rope and theta is not None:
            rope["rope_theta"] = theta
        if "rope_type" not in rope and rope.get("type") is not None:
            rope["rope_type"] = rope["type"]
        for key, names in (("partial_rotary_factor", ("partial_rotary_factor", "rope_pct", "rope_percent")),
                           ("original_max_position_embeddings", ("original_max_position_embeddings",))):
            value = find(hp, *names)
            if key not in rope and value is not None:
                rope[key] = value
    return rope


class Family:
    arch: gguf.MODEL_ARCH

    def __init__(self, folder: Path, hp: dict):
        self.folder, self.hp = folder, hp
        self.rope = rope_parameters(hp)
        self.n_layer = find(hp, "n_layers", "num_hidden_layers", "n_layer", "num_layers")
        self.notes = VocabNotes()

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    # --- hyperparameters ------------------------------------------------------------------------

    def add_params(self, gw: gguf.GGUFWriter, ftype: int) -> None:
        """llama.cpp's common text-model keys, in its order."""
        hp = self.hp
        gw.add_block_count(self.n_layer)
        for add, keys in (
            (gw.add_context_length, ("max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                     "max_sequence_length", "model_max_length")),
            (gw.add_embedding_length, ("hidden_size", "n_embd", "dim")),
            (gw.add_feed_forward_length, ("prefix_dense_intermediate_size", "dense_intermediate_size",
                                          "intermediate_size", "n_inner", "hidden_dim")),
            (gw.add_head_count, ("num_attention_heads", "n_head", "n_heads")),
            (gw.add_head_count_kv, ("num_key_value_heads", "n_kv_heads")),
        ):
            value = find(hp, *keys)
            if value is not None:
                add(value)
        if hp.get("is_causal") is False:
            gw.add_causal_attention(False)
        rope = self.rope.get("full_attention", self.rope)
        kind, factor = rope.get("rope_type"), rope.get("factor")
        if kind == "linear" and factor is not None:
            gw.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            gw.add_rope_scaling_factor(factor)
        elif kind == "yarn" and factor is not None:
            raise UnsupportedModel("YaRN rope scaling is not supported by llamapy's engine")
        elif kind in ("su", "longrope"):
            gw.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        if rope.get("rope_theta") is not None:
            gw.add_rope_freq_base(rope["rope_theta"])
        local = self.rope.get("sliding_attention", {}).get("rope_theta")
        if local is not None:
            gw.add_rope_freq_base_swa(local)
        if (eps := find(hp, "rms_norm_eps", "norm_eps")) is not None:
            gw.add_layer_norm_rms_eps(eps)
        if (eps := find(hp, "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
            gw.add_layer_norm_eps(eps)
        if find(hp, "num_local_experts", "num_experts", "n_routed_experts") is not None:
            raise UnsupportedModel("mixture-of-experts checkpoints are not supported")
        if (head_dim := hp.get("head_dim")) is not None:
            gw.add_key_length(head_dim)
            gw.add_value_length(head_dim)
        gw.add_file_type(ftype)

    def head_dim(self) -> int:
        return self.hp.get("head_dim") or self.hp["hidden_size"] // self.hp["num_attention_heads"]

    # --- tokenizer ------------------------------------------------------------------------------

    def add_vocab(self, gw: gguf.GGUFWriter) -> None:
        """SentencePiece when there is a tokenizer.model, else byte-level BPE from tokenizer.json."""
        if vocab.has_sentencepiece(self.folder):
            self.notes.kind = "SPM (tokenizer.model)"
            vocab.add_sentencepiece(gw, self.folder, self.hp.get("vocab_size"))
        elif vocab.has_bpe(self.folder):
            self.notes.kind = "BPE (tokenizer.json)"
            vocab.add_bpe(gw, self.folder, self.hp.get("vocab_size"), self.notes)
        else:
            raise TokenizerError(f"{self.folder}: no tokenizer (neither tokenizer.model nor tokenizer.json)")

    # --- tensors --------------------------------------------------------------------------------

    def rewrite(self, hf_name: str, data: np.ndarray) -> np.ndarray:
        """The tensor as the GGUF holds it (same shape unless `shape_of` says otherwise)."""
        return data

    def shape_of(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def extra_tensors(self, gw: gguf.GGUFWriter) -> list[tuple[str, np.ndarray]]:
        """Tensors llama.cpp generates from the config (rope factors), written first."""
        return []

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq"))


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half layout of Q/K rows → GGUF's interleaved pairs (llama's `ROPE_NORMAL`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Llama(Family):
    arch = gguf.MODEL_ARCH.LLAMA

    def add_params(self, gw, ftype):
        super().add_params(gw, ftype)
        gw.add_vocab_size(self.hp["vocab_size"])
        gw.add_rope_dimension_count(self.head_dim())

    def add_vocab(self, gw):
        config = vocab._json(self.folder / "tokenizer_config.json") or {}
        if config.get("add_prefix_space") is not None:
            gw.add_add_space_prefix(config["add_prefix_space"])
        super().add_vocab(gw)

    def rewrite(self, hf_name, data):
        n_head = self.hp["num_attention_heads"]
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_rope_rows(data, n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_rope_rows(data, self.hp.get("num_key_value_heads", n_head))
        return data

    def extra_tensors(self, gw):
        rope = self.rope.get("full_attention", self.rope)
        if str(rope.get("rope_type", "")).lower() != "llama3":
            return []
        return [("rope_freqs.weight", llama3_rope_factors(rope, self.head_dim()))]


def llama3_rope_factors(rope: dict, dim: int) -> np.ndarray:
    """Llama 3.1's per-frequency divisors: 1 for short wavelengths, `factor` for long ones, blended between
    (all in float32, as llama.cpp's converter computes them with torch)."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs.astype(np.float32):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


class Qwen2(Family):
    arch = gguf.MODEL_ARCH.QWEN2


class Qwen3(Family):
    arch = gguf.MODEL_ARCH.QWEN3


class Gemma3(Family):
    arch = gguf.MODEL_ARCH.GEMMA3

    def add_params(self, gw, ftype):
        super().add_params(gw, ftype)
        hp = self.hp
        gw.add_context_length(hp.get("max_position_embeddings", 131072))
        gw.add_head_count(hp.get("num_attention_heads", 8))
        gw.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
        gw.add_key_length(hp.get("head_dim", 256))
        gw.add_value_length(hp.get("head_dim", 256))
        gw.add_rope_freq_base(self.rope.get("full_attention", self.rope).get("rope_theta", 1_000_000.0))
        if hp.get("attn_logit_softcapping") is not None:
            raise UnsupportedModel("Gemma 3 has no attention soft-capping; this config sets one")
        if hp.get("final_logit_softcapping"):
            gw.add_final_logit_softcapping(hp["final_logit_softcapping"])
        if hp.get("sliding_window_pattern") != 1:
            gw.add_sliding_window(hp["sliding_window"])
        gw.add_head_count_kv(hp.get("num_key_value_heads", 4))

    def add_vocab(self, gw):
        super().add_vocab(gw)
        if vocab.has_sentencepiece(self.folder):
            gw.add_add_space_prefix(False)

    @functools.cached_property
    def _vocab_rows(self) -> int:
        if vocab.has_sentencepiece(self.folder):
            return len(vocab.sentencepiece_vocab(self.folder, self.hp.get("vocab_size"))[0])
        spec = vocab._json(self.folder / "tokenizer.json")
        return len(spec["model"]["vocab"]) + len(spec["added_tokens"])

    def shape_of(self, hf_name, shape):
        if "embed_tokens.weight" in hf_name:  # rows past the tokenizer's vocabulary are dropped
            return (min(shape[0], self._vocab_rows), *shape[1:])
        return shape

    def rewrite(self, hf_name, data):
        if "embed_tokens.weight" in hf_name:
            data = data[:self._vocab_rows]
        if hf_name.endswith("norm.weight"):  # Gemma3RMSNorm scales by (1 + weight)
            data = data + data.dtype.type(1.0)
        return data


class Phi3(Family):
    """Phi-3 keeps its fused qkv_proj / gate_up_proj (attn_qkv, ffn_up); longrope factors are tensors."""
    arch = gguf.MODEL_ARCH.PHI3

    def _rope_dims(self) -> int:
        hp = self.hp
        n_embd, n_head = find(hp, "hidden_size", "n_embd"), find(hp, "num_attention_heads", "n_head")
        return int(self.rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head

    def add_params(self, gw, ftype):
        hp = self.hp
        gw.add_context_length(find(hp, "n_positions", "max_position_embeddings"))
        gw.add_rope_scaling_orig_ctx_len(self.rope["original_max_position_embeddings"])
        gw.add_embedding_length(find(hp, "hidden_size", "n_embd"))
        gw.add_feed_forward_length(hp["intermediate_size"])
        gw.add_block_count(self.n_layer)
        gw.add_head_count(find(hp, "num_attention_heads", "n_head"))
        gw.add_head_count_kv(find(hp, "num_key_value_heads", "n_head_kv"))
        gw.add_layer_norm_rms_eps(hp["rms_norm_eps"])
        gw.add_rope_dimension_count(self._rope_dims())
        gw.add_rope_freq_base(self.rope.get("full_attention", self.rope)["rope_theta"])
        gw.add_file_type(ftype)
        gw.add_sliding_window(hp.get("sliding_window") or 0)

    def add_vocab(self, gw):
        config = vocab._json(self.folder / "tokenizer_config.json")
        if config is not None and config.get("tokenizer_class") == "GPT2Tokenizer":  # Phi-4
            self.notes.kind = "BPE (tokenizer.json)"
            vocab.add_bpe(gw, self.folder, self.hp.get("vocab_size"), self.notes)
            return
        if not vocab.has_sentencepiece(self.folder):
            raise TokenizerError(f"{self.folder}: no tokenizer.model (Phi-3 uses a SentencePiece tokenizer)")
        self.notes.kind = "SPM (tokenizer.model)"
        vocab.add_sentencepiece(gw, self.folder, self.hp.get("vocab_size"), phi3_rules=True)

    def extra_tensors(self, gw):
        long, short = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long:
            return []
        hp = self.hp
        orig = self.rope["original_max_position_embeddings"]
        scale = find(hp, "n_positions", "max_position_embeddings") / orig
        kind = str(self.rope.get("rope_type", "")).lower()
        if kind in ("su", "longrope"):
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        else:
            raise UnsupportedModel(f"Phi-3 rope scaling {kind or 'without a type'} is not supported")
        gw.add_rope_scaling_attn_factors(attn_factor)
        if short is None or len(long) != len(short) or len(long) != self._rope_dims() / 2:
            raise UnsupportedModel(f"Phi-3 rope long/short factors must both have {self._rope_dims() // 2} values")
        return [("rope_factors_long.weight", np.array(long, dtype=np.float32)),
                ("rope_factors_short.weight", np.array(short, dtype=np.float32))]


class Glm4(Family):
    """transformers' Glm4ForCausalLM as llama.cpp's `glm4`: rope on the first partial_rotary_factor of each head."""
    arch = gguf.MODEL_ARCH.GLM4

    def add_params(self, gw, ftype):
        super().add_params(gw, ftype)
        gw.add_rope_dimension_count(int(self.head_dim() * self.rope.get("partial_rotary_factor", 0.5)))

    def add_vocab(self, gw):
        if "mrope_section" in self.rope:
            raise UnsupportedModel("GLM-4V (M-RoPE) checkpoints are not supported")
        if not vocab.has_bpe(self.folder):
            raise TokenizerError(f"{self.folder}: no tokenizer.json (GLM-4 uses a BPE tokenizer)")
        self.notes.kind = "BPE (tokenizer.json)"
        specials = {"eos": "<|endoftext|>", "eot": "<|user|>", "unk": "<|endoftext|>", "bos": "<|endoftext|>"}
        vocab.add_bpe(gw, self.folder, self.hp.get("vocab_size"), self.notes, specials, {"llama-bpe": "glm4"})


FAMILIES: dict[str, type[Family]] = {
    **dict.fromkeys(["LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM"], Llama),
    "Qwen2ForCausalLM": Qwen2,
    "Qwen3ForCausalLM": Qwen3,
    "Gemma3ForCausalLM": Gemma3,
    "Phi3ForCausalLM": Phi3,
    "Glm4ForCausalLM": Glm4,
}


def family_for(folder: Path, hp: dict) -> Family:
    archs = hp.get("architectures") or []
    for name in archs:
        if name in FAMILIES:
            return FAMILIES[name](folder, hp)
    shown = ", ".join(archs) if archs else "none given"
    raise UnsupportedModel(f"architecture {shown} in config.json is not supported "
                           f"(supported: {', '.join(sorted(FAMILIES))})")

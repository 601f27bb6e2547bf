"""llama-quantize's file types (mixes) and its choice of a type for every tensor.

A file type names a default tensor type; the mix rules then give chosen layers more bits
(`use_more_bits`: the first and last eighth and every third layer between), treat the output
and embedding matrices apart, and fall back to a 32-block type where a row is not a multiple
of 256.  The rules follow llama.cpp's llama-quant.cpp for the mixes listed in FILE_TYPES.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..quants.types import (
    BF16,
    F16,
    F32,
    IQ4_NL,
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    QUANT_TYPES,
)


class FileType(NamedTuple):
    name: str
    file_type: int  # general.file_type (llama_ftype)
    default_type: int
    help: str  # llama-quantize's note (its ppl figures are for Llama-3-8B / Mistral-7B)


FILE_TYPES: dict[str, FileType] = {
    f.name: f
    for f in (
        FileType("Q4_0", 2, Q4_0, "+0.4685 ppl @ Llama-3-8B"),
        FileType("Q4_1", 3, Q4_1, "+0.4511 ppl @ Llama-3-8B"),
        FileType("Q5_0", 8, Q5_0, "+0.1316 ppl @ Llama-3-8B"),
        FileType("Q5_1", 9, Q5_1, "+0.1062 ppl @ Llama-3-8B"),
        FileType("IQ4_NL", 25, IQ4_NL, "non-linear 4-bit levels"),
        FileType("Q2_K", 10, Q2_K, "K mix, +3.5199 ppl @ Llama-3-8B"),
        FileType("Q3_K_S", 11, Q3_K, "K mix, +1.6321 ppl @ Llama-3-8B"),
        FileType("Q3_K_M", 12, Q3_K, "K mix, more bits for attn_v/ffn_down, +0.6569 ppl @ Llama-3-8B"),
        FileType("Q3_K_L", 13, Q3_K, "K mix, Q5_K attn_v/ffn_down, +0.5562 ppl @ Llama-3-8B"),
        FileType("Q4_K_S", 14, Q4_K, "K mix, +0.2689 ppl @ Llama-3-8B"),
        FileType("Q4_K_M", 15, Q4_K, "K mix, Q6_K for half of attn_v/ffn_down, +0.1754 ppl @ Llama-3-8B"),
        FileType("Q5_K_S", 16, Q5_K, "K mix, +0.1049 ppl @ Llama-3-8B"),
        FileType("Q5_K_M", 17, Q5_K, "K mix, Q6_K for half of attn_v/ffn_down, +0.0569 ppl @ Llama-3-8B"),
        FileType("Q6_K", 18, Q6_K, "+0.0217 ppl @ Llama-3-8B"),
        FileType("Q8_0", 7, Q8_0, "+0.0026 ppl @ Llama-3-8B"),
        FileType("F16", 1, F16, "+0.0020 ppl @ Mistral-7B"),
        FileType("BF16", 32, BF16, "-0.0050 ppl @ Mistral-7B"),
        FileType("F32", 0, F32, ""),
        FileType("COPY", 0, F32, "only copy tensors, no quantizing"),
    )
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def file_type_named(name: str) -> FileType:
    """The file type for a llama-quantize type name (case-insensitive, aliases allowed)."""
    key = ALIASES.get(name.upper(), name.upper())
    if key not in FILE_TYPES:
        valid = ", ".join([*FILE_TYPES, *ALIASES])
        raise ValueError(f"unknown quantization type {name!r}; valid types: {valid}")
    return FILE_TYPES[key]


@dataclass
class ModelShape:
    """The hyper-parameters the mix rules read."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @classmethod
    def from_kv(cls, kv: dict) -> ModelShape:
        arch = str(kv.get("general.architecture", ""))

        def get(key, default):
            v = kv.get(f"{arch}.{key}", default)
            return int(v[0] if isinstance(v, list | tuple) and v else v)

        n_head = get("attention.head_count", 1)
        return cls(arch, get("block_count", 0), n_head, get("attention.head_count_kv", n_head), get("expert_count", 0))

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 1

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass
class Options:
    """llama-quantize's flags that change the chosen types."""

    pure: bool = False
    leave_output_tensor: bool = False
    output_tensor_type: int | None = None
    token_embedding_type: int | None = None
    has_imatrix: bool = False


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return "attn_qkv" if key == "attn_qkv.weight" else cat
    return "other"


_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d",
    "shortconv.conv.weight", "time_mix_", "attn_rel_b.weight", ".position_embd", ".rel_pos", ".patch_embd",
)


def allows_quantization(name: str, n_dims: int, opts: Options) -> bool:
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if any(part in name for part in _NEVER_QUANTIZED):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not (opts.leave_output_tensor and name == "output.weight")


@dataclass
class TypeChooser:
    """Walks the tensors in file order, as llama_tensor_get_type does, counting layers."""

    shape: ModelShape
    ftype: FileType
    opts: Options
    names: list[str]
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn: dict = field(default_factory=lambda: {"ffn_down": 0, "ffn_gate": 0, "ffn_up": 0})
    n_fallback: int = 0
    tied_embeddings: bool = True

    def __post_init__(self):
        cats = [category(n) for n in self.names]
        self.n_attention_wv = sum(c in ("attn_v", "attn_qkv") for c in cats)
        self.tied_embeddings = "output" not in cats

    def choose(self, name: str, shape: tuple[int, ...], cur_type: int) -> int:
        """The type `name` (GGUF shape `shape`, now `cur_type`) is written as."""
        opts = self.opts
        if self.ftype.name == "COPY" or not allows_quantization(name, len(shape), opts):
            return cur_type
        cat = category(name)
        if opts.token_embedding_type is not None and cat == "token_embd":
            return opts.token_embedding_type
        if opts.output_tensor_type is not None and cat == "output":
            return opts.output_tensor_type
        new_type = self.ftype.default_type
        if QUANT_TYPES[new_type].block_size == 1:  # F32/F16/BF16 files: no mix
            return new_type
        if not opts.pure:
            new_type = self._mix(name, shape, new_type, cat)
        return self._fallback(shape, new_type)

    def _layer(self, cat: str) -> tuple[int, int]:
        i = self.i_ffn[cat]
        self.i_ffn[cat] += 1
        return i, self.shape.n_layer

    def _mix(self, name, shape, new_type, cat):  # noqa: C901 - one branch per llama.cpp rule
        ft, s = self.ftype.name, self.shape
        if cat == "output" or (self.tied_embeddings and cat == "token_embd"):
            if self.opts.output_tensor_type is not None:
                return self.opts.output_tensor_type
            if s.arch == "falcon" or shape[0] % QUANT_TYPES[new_type].block_size:
                return Q8_0
            return new_type if new_type == Q8_0 else Q6_K
        if cat == "token_embd":
            return new_type if self.opts.token_embedding_type is None else self.opts.token_embedding_type
        if cat in ("attn_v", "attn_qkv"):  # llama.cpp's attn_v rules catch fused QKV first
            new_type = self._attn_v(ft, s, new_type)
            self.i_attention_wv += 1
            return new_type
        if cat == "ffn_down":
            i_layer, n_layer = self._layer(cat)
            if ft == "Q2_K":
                return Q3_K
            if ft == "Q3_K_M":
                if i_layer < n_layer // 16:
                    return Q5_K
                return Q4_K if s.arch != "falcon" or use_more_bits(i_layer, n_layer) else Q3_K
            if ft == "Q3_K_L":
                return Q4_K if s.arch == "falcon" else Q5_K
            if ft == "Q4_K_M":
                if s.arch == "falcon":
                    return Q6_K if i_layer < n_layer // 16 else Q5_K if use_more_bits(i_layer, n_layer) else Q4_K
                return Q6_K if use_more_bits(i_layer, n_layer) else new_type
            if i_layer < n_layer // 8 and ft == "IQ4_NL" and not self.opts.has_imatrix:
                return Q5_K
            if ft == "Q5_K_M" and use_more_bits(i_layer, n_layer):
                return Q6_K
            if ft == "Q4_K_S" and s.arch != "falcon" and i_layer < n_layer // 8:
                return Q5_K
            if ft in ("Q4_0", "Q5_0") and self.opts.has_imatrix and i_layer < n_layer // 8:
                return Q4_1 if ft == "Q4_0" else Q5_1
            return new_type
        if cat == "attn_output":
            if s.arch != "falcon":
                if s.n_expert == 8:
                    if ft in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M"):
                        return Q5_K
                    return new_type
                return {"Q2_K": Q3_K, "Q3_K_M": Q4_K, "Q3_K_L": Q5_K}.get(ft, new_type)
            return Q4_K if ft == "Q3_K_L" else new_type
        if cat in ("ffn_gate", "ffn_up"):
            self._layer(cat)
        if cat == "attn_k" and s.n_expert == 8:
            return Q8_0
        return new_type

    def _attn_v(self, ft, s, new_type):
        i, n = self.i_attention_wv, self.n_attention_wv
        if ft == "Q2_K":
            new_type = Q4_K if s.n_gqa >= 4 else Q3_K
        elif ft == "Q3_K_M":
            new_type = Q5_K if i < 2 else Q4_K
        elif ft == "Q3_K_L":
            new_type = Q5_K
        elif ft == "IQ4_NL" and s.n_gqa >= 4:
            new_type = Q5_K
        elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new_type = Q6_K
        elif ft == "Q4_K_S" and i < 4:
            new_type = Q5_K
        if s.is_70b and new_type in (Q3_K, Q4_K):
            new_type = Q5_K
        if s.n_expert == 8:
            new_type = Q8_0
        return new_type

    def _fallback(self, shape, new_type):
        n_cols = shape[0]
        block = QUANT_TYPES[new_type].block_size
        if n_cols % block == 0:
            return new_type
        self.n_fallback += 1
        fallback = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}.get(new_type, new_type)
        if n_cols % QUANT_TYPES[fallback].block_size:
            fallback = F16
        return fallback


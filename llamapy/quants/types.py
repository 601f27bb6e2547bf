"""The quant registry: every ggml tensor type llamapy knows, described in one table.

A row of `n_cols` values of a quantized type is stored as `n_cols / block_size`
blocks of `type_size` bytes each; rows are packed back to back in the GGUF data.

Each `QuantType` entry says everything the other modules look up: geometry, name, the
activation format of its products (`vec_dot_type`), which bit-exact product family runs it
(`exact`: "q32" for Q8_0/Q8_1 blocks, "k" for Q8_K super-blocks, None for the generic
fake-quantized path) and from what batch the tiled kernel takes over, whether its products
carry the Q8_1 min correction, the file type it names, and whether `llamapy quantize` can
produce it.  The decoder and quantizer kernels dispatch on `type_id` inside numba
(quants/_kernels.py `decode_row`, quantize/_kernels.py `quantize_row`): adding a type is one
entry here plus its kernels there.
"""

from __future__ import annotations

from typing import NamedTuple

F32 = 0
F16 = 1
Q4_0 = 2
Q4_1 = 3
Q5_0 = 6
Q5_1 = 7
Q8_0 = 8
Q8_1 = 9
Q2_K = 10
Q3_K = 11
Q4_K = 12
Q5_K = 13
Q6_K = 14
Q8_K = 15
IQ4_NL = 20
BF16 = 30

QK_K = 256


class UnsupportedQuantType(ValueError):
    """A tensor type that llamapy cannot decode."""


class QuantType(NamedTuple):
    name: str
    type_id: int
    block_size: int
    type_size: int
    # The type llama.cpp converts the activations to before the dot product.
    vec_dot_type: int
    # Bit-exact product family (products.py): "q32", "k", or None for the generic path.
    exact: str | None = None
    # Batches of at least this many tokens take ggml's tiled arithmetic (None: never).
    tiled_min_batch: int | None = None
    # ggml's repacked gemm takes tokens in groups of this many; the last n % group go through its
    # gemv, whose arithmetic differs (None: no such split).
    gemm_group: int | None = None
    # Products add min * s, the rounded Q8_1 block sums (Q4_1, Q5_1).
    min_correction: bool = False
    # general.file_type of a file made mostly of this type (llama.cpp names such files after it).
    file_type: int | None = None
    # `llamapy quantize` can write it (quantize/_kernels.py has its quantizer).
    quantizable: bool = True

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def super_blocks(self) -> bool:
        """Activations as Q8_K (256-value super-blocks) rather than Q8_0/Q8_1."""
        return self.vec_dot_type == Q8_K


QUANT_TYPES: dict[int, QuantType] = {
    t.type_id: t
    for t in (
        QuantType("F32", F32, 1, 4, F32, file_type=0),
        QuantType("F16", F16, 1, 2, F16, file_type=1),
        QuantType("Q4_0", Q4_0, 32, 18, Q8_0, exact="q32", file_type=2),
        QuantType("Q4_1", Q4_1, 32, 20, Q8_1, exact="q32", min_correction=True, file_type=3),
        QuantType("Q5_0", Q5_0, 32, 22, Q8_0, exact="q32", file_type=8),
        QuantType("Q5_1", Q5_1, 32, 24, Q8_1, exact="q32", min_correction=True, file_type=9),
        QuantType("Q8_0", Q8_0, 32, 34, Q8_0, exact="q32", file_type=7),
        QuantType("Q2_K", Q2_K, QK_K, 84, Q8_K, file_type=10),
        QuantType("Q3_K", Q3_K, QK_K, 110, Q8_K, file_type=12),
        QuantType("Q4_K", Q4_K, QK_K, 144, Q8_K, exact="k", gemm_group=4, file_type=15),
        QuantType("Q5_K", Q5_K, QK_K, 176, Q8_K, file_type=17),
        QuantType("Q6_K", Q6_K, QK_K, 210, Q8_K, exact="k", tiled_min_batch=8, file_type=18),
        QuantType("IQ4_NL", IQ4_NL, 32, 18, Q8_0, file_type=25),
        QuantType("BF16", BF16, 1, 2, BF16, file_type=32),
    )
}

# general.file_type -> the name llama.cpp prints (llama_ftype_name); gaps are types llama.cpp removed.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K - Medium", 11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large",
    14: "Q4_K - Small", 15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K",
    19: "IQ2_XXS - 2.0625 bpw", 20: "IQ2_XS - 2.3125 bpw", 21: "Q2_K - Small", 22: "IQ3_XS - 3.3 bpw",
    23: "IQ3_XXS - 3.0625 bpw", 24: "IQ1_S - 1.5625 bpw", 25: "IQ4_NL - 4.5 bpw", 26: "IQ3_S - 3.4375 bpw",
    27: "IQ3_S mix - 3.66 bpw", 28: "IQ2_S - 2.5 bpw", 29: "IQ2_M - 2.7 bpw", 30: "IQ4_XS - 4.25 bpw",
    31: "IQ1_M - 1.75 bpw", 32: "BF16", 36: "TQ1_0 - 1.69 bpw ternary", 37: "TQ2_0 - 2.06 bpw ternary",
    38: "MXFP4 MoE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}


def quant_type_named(name: str) -> QuantType:
    """The entry whose ggml name is `name` (case-insensitive), or UnsupportedQuantType."""
    for qt in QUANT_TYPES.values():
        if qt.name == name.upper():
            return qt
    valid = ", ".join(t.name for t in QUANT_TYPES.values())
    raise UnsupportedQuantType(f"unknown tensor type {name!r}; valid: {valid}")


# Activation formats: quantize_activations() accepts these as targets.
ACTIVATION_TYPES: dict[int, str] = {
    F32: "F32",
    F16: "F16",
    BF16: "BF16",
    Q8_0: "Q8_0",
    Q8_1: "Q8_1",
    Q8_K: "Q8_K",
}


def type_name(type_id: int) -> str:
    """The ggml name of a type id, also for ids llamapy does not support."""
    if int(type_id) in QUANT_TYPES:
        return QUANT_TYPES[int(type_id)].name
    import gguf  # gguf-py's table, for ids we do not know; importing it costs 0.1 s of start-up

    try:
        return gguf.GGMLQuantizationType(int(type_id)).name
    except ValueError:
        return f"unknown ggml type {int(type_id)}"


def _unsupported(type_id: int, what: str, supported: dict) -> UnsupportedQuantType:
    names = ", ".join(f"{v if isinstance(v, str) else v.name}({k})" for k, v in supported.items())
    return UnsupportedQuantType(f"{what} {type_name(type_id)} (id {int(type_id)}) is not supported; supported: {names}")


def quant_type(type_id: int) -> QuantType:
    """The table entry for `type_id`, or UnsupportedQuantType."""
    qt = QUANT_TYPES.get(int(type_id))
    if qt is None:
        raise _unsupported(type_id, "tensor type", QUANT_TYPES)
    return qt


def check_activation_type(vec_dot_type: int) -> int:
    if int(vec_dot_type) not in ACTIVATION_TYPES:
        raise _unsupported(vec_dot_type, "activation type", ACTIVATION_TYPES)
    return int(vec_dot_type)


def row_bytes(type_id: int, n_cols: int) -> int:
    """Bytes taken by one row of `n_cols` values of `type_id`."""
    qt = quant_type(type_id)
    if n_cols % qt.block_size:
        raise ValueError(f"{qt.name} rows need a multiple of {qt.block_size} columns, got {n_cols}")
    return n_cols // qt.block_size * qt.type_size

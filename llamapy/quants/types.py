"""The ggml tensor types llamapy can read, with their block geometry.

A row of `n_cols` values of a quantized type is stored as `n_cols / block_size`
blocks of `type_size` bytes each; rows are packed back to back in the GGUF data.
"""

from __future__ import annotations

from typing import NamedTuple

import gguf

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


def _qt(name: str, type_id: int, block_size: int, type_size: int, vec_dot_type: int) -> QuantType:
    return QuantType(name, type_id, block_size, type_size, vec_dot_type)


QUANT_TYPES: dict[int, QuantType] = {
    t.type_id: t
    for t in (
        _qt("F32", F32, 1, 4, F32),
        _qt("F16", F16, 1, 2, F16),
        _qt("Q4_0", Q4_0, 32, 18, Q8_0),
        _qt("Q4_1", Q4_1, 32, 20, Q8_1),
        _qt("Q5_0", Q5_0, 32, 22, Q8_0),
        _qt("Q5_1", Q5_1, 32, 24, Q8_1),
        _qt("Q8_0", Q8_0, 32, 34, Q8_0),
        _qt("Q2_K", Q2_K, QK_K, 84, Q8_K),
        _qt("Q3_K", Q3_K, QK_K, 110, Q8_K),
        _qt("Q4_K", Q4_K, QK_K, 144, Q8_K),
        _qt("Q5_K", Q5_K, QK_K, 176, Q8_K),
        _qt("Q6_K", Q6_K, QK_K, 210, Q8_K),
        _qt("BF16", BF16, 1, 2, BF16),
    )
}

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

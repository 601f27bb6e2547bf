"""Rotary position embeddings: cos/sin tables built as ggml builds them, applied in place."""

import numpy as np
from numba import njit

from ..quants._bits import fma32

ROPE_NORMAL = 0  # rotates adjacent pairs (x[2i], x[2i+1]): llama's GGUF layout
ROPE_NEOX = 2  # rotates (x[i], x[i + d/2]): gemma, qwen, neox


def rope_tables(positions: np.ndarray, rope_dim: int, base: float, freq_factors: np.ndarray | None = None,
                mscale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [len(positions), rope_dim/2], the angles exactly as ggml makes them.

    freq_factors (rope_freqs / rope_factors_*: one divisor per frequency) and mscale (the magnitude
    both tables are scaled by) are ggml_rope_ext's; without them the tables are plain RoPE's."""
    theta_scale = np.float32(base) ** np.float32(-2.0 / rope_dim)
    cos = np.empty((len(positions), rope_dim // 2), dtype=np.float32)
    sin = np.empty_like(cos)
    if freq_factors is None and mscale == 1.0:
        _fill_tables(positions.astype(np.float32), theta_scale, cos, sin)
    else:
        factors = np.ones(rope_dim // 2, np.float32) if freq_factors is None else freq_factors
        _fill_scaled_tables(positions.astype(np.float32), theta_scale,
                            np.ascontiguousarray(factors[: rope_dim // 2], dtype=np.float32), np.float32(mscale),
                            cos, sin)
    return cos, sin


@njit(cache=True)
def _fill_tables(positions, theta_scale, cos, sin):
    """ggml multiplies theta by base^(-2/d) step by step in float32 rather than taking powers, and
    takes libm's cosf/sinf (which numba calls for float32): both matter at the last bit."""
    for t in range(positions.shape[0]):
        theta = positions[t]
        for i in range(cos.shape[1]):
            cos[t, i] = np.cos(theta)
            sin[t, i] = np.sin(theta)
            theta = theta * theta_scale


@njit(cache=True)
def _fill_scaled_tables(positions, theta_scale, factors, mscale, cos, sin):
    """ggml_rope_cache_init with freq_factors and no YaRN ramp: cosf(theta / ff) * mscale."""
    for t in range(positions.shape[0]):
        theta = positions[t]
        for i in range(cos.shape[1]):
            angle = theta / factors[i]
            cos[t, i] = np.cos(angle) * mscale
            sin[t, i] = np.sin(angle) * mscale
            theta = theta * theta_scale


@njit(cache=True)
def apply_rope(x, cos, sin, mode):
    """Rotate x [n_tokens, n_heads, head_dim] in place; token t uses row t of the tables."""
    n, n_heads, _ = x.shape
    half = cos.shape[1]
    for t in range(n):
        for h in range(n_heads):
            for i in range(half):
                if mode == ROPE_NEOX:
                    a, b = i, i + half
                else:
                    a, b = 2 * i, 2 * i + 1
                x0 = x[t, h, a]
                x1 = x[t, h, b]
                x[t, h, a] = fma32(x0, cos[t, i], -(x1 * sin[t, i]))
                x[t, h, b] = fma32(x0, sin[t, i], x1 * cos[t, i])
    return x

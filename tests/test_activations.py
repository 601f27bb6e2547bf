"""swiglu's vectorised loop against ggml_expf element by element.

ggml_expf is ggml_v_expf's arithmetic one value at a time (test_reference_logits holds it to
llama.cpp's logits); swiglu runs its main path over a whole row and redoes a row whose values leave
that path. Both routes must give the same bits, in every regime: the main path, underflow and
overflow (|x| > 87), infinities, NaN, and the tail past the last group of eight.
"""

import numpy as np
import pytest
from numba import njit

from llamapy.kernels.activations import ggml_expf, libm_expf_main, swiglu
from llamapy.quants._bits import u32_as_f32


@njit(cache=False)
def _swiglu_by_element(gate, up):
    out = np.empty_like(gate)
    d = gate.shape[1]
    for t in range(gate.shape[0]):
        for i in range(d):
            x = gate[t, i]
            e = ggml_expf(-x) if i < d - d % 8 else np.float32(np.exp(-x))
            out[t, i] = x / (np.float32(1.0) + e) * up[t, i]
    return out


def _same_bits(a, b):
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("d", [64, 1536, 1539])
def test_swiglu_main_path_matches_ggml_expf(d):
    rng = np.random.default_rng(d)
    gate = (rng.standard_normal((4, d)) * 6).astype(np.float32)
    up = rng.standard_normal((4, d)).astype(np.float32)
    _same_bits(swiglu(gate, up), _swiglu_by_element(gate, up))


def test_swiglu_rows_off_the_main_path():
    rng = np.random.default_rng(7)
    gate = (rng.standard_normal((3, 40)) * 4).astype(np.float32)
    up = rng.standard_normal((3, 40)).astype(np.float32)
    gate[0, 5], gate[0, 38] = 95.0, -120.0   # exp(-x) past float32's range / the tail's libm expf
    gate[1, 9], gate[1, 17] = -89.0, 200.0   # ggml_expf's scaled and saturated branches
    gate[2, 3], gate[2, 4] = np.inf, np.nan
    out = swiglu(gate, up)
    _same_bits(out, _swiglu_by_element(gate, up))
    assert out[1, 9] == 0.0 and out[1, 17] == np.float32(200.0) * up[1, 17]  # silu's two limits


@njit(cache=False)
def _libm_mismatches(bits):
    """Inputs (as bits) where libm_expf_main claims its main path but differs from libm's expf,
    and how many claimed it."""
    bad, claimed = 0, 0
    for b in bits:
        x = np.uint32(b)
        value, in_range = libm_expf_main(u32_as_f32(x))
        if in_range:
            claimed += 1
            bad += value != np.float32(np.exp(u32_as_f32(x)))
    return bad, claimed


def test_libm_expf_main_is_the_librarys_expf():
    """One-query attention's softmax takes libm_expf_main for the library's expf that ggml calls:
    every float32 checked once this way when it was written (2.2e9 on its path, none different);
    here a spread of 2^20 of them, every exponent, and the edges of the path."""
    spread = np.arange(0, 1 << 32, 4093, dtype=np.uint64)
    edges = np.array([0, 0x80000000, 0x3F800000, 0xBF800000, 0x42AFFFFF, 0xC2AFFFFF, 0x42B00000, 0xC2CFF1B5,
                      0x7F800000, 0xFF800000, 0x7FC00000, 1, 0x80000001], dtype=np.uint64)
    bad, claimed = _libm_mismatches(np.concatenate([spread, edges]))
    assert bad == 0
    assert claimed > len(spread) // 2  # |x| < 88.7 holds about half of all patterns
    assert not libm_expf_main(np.float32(-np.inf))[1] and not libm_expf_main(np.float32(np.nan))[1]

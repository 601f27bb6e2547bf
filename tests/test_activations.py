"""swiglu's vectorised loop against ggml_expf element by element.

ggml_expf is ggml_v_expf's arithmetic one value at a time (test_reference_logits holds it to
llama.cpp's logits); swiglu runs its main path over a whole row and redoes a row whose values leave
that path. Both routes must give the same bits, in every regime: the main path, underflow and
overflow (|x| > 87), infinities, NaN, and the tail past the last group of eight.
"""

import numpy as np
import pytest
from numba import njit

from llamapy.kernels.activations import ggml_expf, swiglu


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

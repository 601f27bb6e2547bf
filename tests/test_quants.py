"""llamapy.quants against independent references: gguf-py's numpy codecs and
numpy re-implementations of ggml's quantizers and integer dot products."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

import llamapy.quants as Q

WEIGHT_TYPES = [
    Q.F32,
    Q.F16,
    Q.BF16,
    Q.Q4_0,
    Q.Q4_1,
    Q.Q5_0,
    Q.Q5_1,
    Q.Q8_0,
    Q.Q2_K,
    Q.Q3_K,
    Q.Q4_K,
    Q.Q5_K,
    Q.Q6_K,
]

# Byte offsets of the fp16 fields inside one block (ggml-common.h layouts).
HALF_FIELDS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}

N_COLS = 512  # two K super-blocks, sixteen 32-blocks
N_ROWS = 37  # not a multiple of anything the kernels tile by


def random_weights(type_id: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Valid packed rows: random quant bits, finite fp16 scales."""
    rng = np.random.default_rng(seed + type_id)
    if type_id == Q.F32:
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if type_id == Q.F16:
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if type_id == Q.BF16:
        return gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), G.BF16)
    block_size, type_size = gguf.GGML_QUANT_SIZES[G(type_id)]
    blocks = rng.integers(0, 256, (rows, cols // block_size, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[type_id]:
        scales = (rng.standard_normal(blocks.shape[:2]) * 0.05).astype(np.float16)
        blocks[:, :, off : off + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


def gguf_dequant(raw: np.ndarray, type_id: int) -> np.ndarray:
    return gguf.quants.dequantize(raw, G(type_id)).astype(np.float32)


def activations(n: int, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)) * rng.uniform(0.01, 20.0, (n, 1))
    return x.astype(np.float32)


# ------------------------------------------------------------------ type table


def test_table_matches_gguf_sizes():
    for t in WEIGHT_TYPES:
        qt = Q.quant_type(t)
        assert (qt.block_size, qt.type_size) == gguf.GGML_QUANT_SIZES[G(t)]
        assert qt.name == G(t).name
        assert Q.row_bytes(t, 1024) == 1024 // qt.block_size * qt.type_size


def test_vec_dot_types():
    expected = {
        Q.F32: Q.F32,
        Q.F16: Q.F16,
        Q.BF16: Q.BF16,
        Q.Q4_0: Q.Q8_0,
        Q.Q5_0: Q.Q8_0,
        Q.Q8_0: Q.Q8_0,
        Q.Q4_1: Q.Q8_1,
        Q.Q5_1: Q.Q8_1,
        Q.Q2_K: Q.Q8_K,
        Q.Q3_K: Q.Q8_K,
        Q.Q4_K: Q.Q8_K,
        Q.Q5_K: Q.Q8_K,
        Q.Q6_K: Q.Q8_K,
    }
    assert {t: Q.quant_type(t).vec_dot_type for t in WEIGHT_TYPES} == expected


def test_unknown_types_raise():
    with pytest.raises(Q.UnsupportedQuantType, match="IQ2_XXS"):
        Q.row_bytes(int(G.IQ2_XXS), 256)
    with pytest.raises(Q.UnsupportedQuantType, match="Q4_K"):
        Q.quant_type(999)  # the message lists the supported types
    with pytest.raises(Q.UnsupportedQuantType):
        Q.dequantize(np.zeros((1, 16), np.uint8), int(G.TQ1_0), 256)
    with pytest.raises(Q.UnsupportedQuantType):
        Q.quantize_activations(np.zeros(32, np.float32), Q.Q4_0)
    assert issubclass(Q.UnsupportedQuantType, ValueError)


def test_row_width_is_checked():
    with pytest.raises(ValueError):
        Q.row_bytes(Q.Q4_K, 100)
    with pytest.raises(ValueError):
        Q.dequantize(np.zeros((2, 18), np.uint8), Q.Q4_0, 64)


# ------------------------------------------------------------------ dequantization


@pytest.mark.parametrize("type_id", WEIGHT_TYPES, ids=lambda t: G(t).name)
def test_dequantize_matches_gguf(type_id):
    raw = random_weights(type_id, N_ROWS, N_COLS)
    expected = gguf_dequant(raw, type_id)
    np.testing.assert_array_equal(Q.dequantize(raw, type_id, N_COLS), expected)
    np.testing.assert_array_equal(Q.dequantize_rows(raw, type_id, N_COLS, 5, 21), expected[5:21])
    ids = [36, 0, 7, 7]
    np.testing.assert_array_equal(Q.get_rows(raw, type_id, N_COLS, ids), expected[ids])


def test_dequantize_from_read_only_bytes():
    raw = random_weights(Q.Q6_K, 4, 256)
    mapped = np.frombuffer(raw.tobytes(), dtype=np.uint8)  # read-only, 1-D, like an mmap slice
    np.testing.assert_array_equal(Q.dequantize(mapped, Q.Q6_K, 256), gguf_dequant(raw, Q.Q6_K))


def test_quantized_real_values_roundtrip():
    # gguf's own quantizer (not random bits) for the types it can produce
    w = activations(8, 256, seed=5)
    for t in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        raw = gguf.quants.quantize(w, G(t))
        np.testing.assert_array_equal(Q.dequantize(raw, t, 256), gguf_dequant(raw, t))


# ------------------------------------------------------------------ activation quantization


def q8_0_avx2_numpy(x: np.ndarray) -> np.ndarray:
    """ggml-cpu's AVX2 quantize_row_q8_0, dequantized."""
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax == 0, np.float32(0), np.float32(127) / amax).astype(np.float32)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (np.rint(blocks * inv) * d).reshape(x.shape)


def q8_k_numpy(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K_ref, dequantized."""
    out = np.zeros_like(x)
    blocks, res = x.reshape(-1, 256), out.reshape(-1, 256)
    for b, blk in enumerate(blocks):
        mx = blk[np.argmax(np.abs(blk))]  # first element of largest magnitude
        if mx == 0:
            continue
        iscale = np.float32(-127.0) / mx
        q = np.minimum(np.float32(127), np.rint(iscale * blk))
        res[b] = (np.float32(1.0) / iscale) * q
    return out


def with_ties(x: np.ndarray) -> np.ndarray:
    """Blocks whose scaled values hit exact halves (amax 127 -> multiplier 1)."""
    x = x.copy()
    x[0, :32] = np.concatenate([[127.0], np.arange(31) - 15.5]).astype(np.float32)
    x[0, 32:64] = 0.0
    return x


def test_q8_0_reference_matches_gguf():
    x = with_ties(activations(6, 256))
    expected = gguf.quants.dequantize(gguf.quants.quantize(x, G.Q8_0), G.Q8_0)
    np.testing.assert_array_equal(Q.quantize_activations(x, Q.Q8_0, impl="ref"), expected)


def test_q8_0_avx2_rounds_half_to_even():
    x = with_ties(activations(6, 256))
    got = Q.quantize_activations(x, Q.Q8_0)
    np.testing.assert_array_equal(got, q8_0_avx2_numpy(x))
    ref = Q.quantize_activations(x, Q.Q8_0, impl="ref")
    assert got[0, 1] == -16.0 and ref[0, 1] == -16.0  # -15.5: even vs away agree
    assert got[0, 2] == -14.0 and ref[0, 2] == -15.0  # -14.5: they differ
    assert np.count_nonzero(got[0, :32] != ref[0, :32]) == 16  # halves whose away-rounding is odd


def test_q8_1_values_and_correction():
    x = activations(3, 128)
    got, corr = Q.quantize_activations(x, Q.Q8_1, return_correction=True)
    np.testing.assert_array_equal(got, q8_0_avx2_numpy(x))
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    qsum = np.rint(blocks * (np.float32(127) / amax)[:, None]).sum(axis=1).astype(np.float32)
    s = (d * qsum).astype(np.float16).astype(np.float32)
    expected = s - d.astype(np.float16).astype(np.float32) * qsum
    np.testing.assert_array_equal(corr.reshape(-1), expected)
    assert np.any(corr != 0)


def test_q8_k_matches_numpy_reference():
    x = activations(5, 512)
    x[1, :256] = 0.0
    x[2, 10], x[2, 20] = 90.0, -90.0  # magnitude tie (values do not depend on which sets the sign)
    np.testing.assert_array_equal(Q.quantize_activations(x, Q.Q8_K), q8_k_numpy(x))


def test_float_activation_types():
    x = activations(2, 64)
    np.testing.assert_array_equal(Q.quantize_activations(x, Q.F32), x)
    np.testing.assert_array_equal(Q.quantize_activations(x, Q.F16), x.astype(np.float16).astype(np.float32))
    bf16 = gguf.quants.dequantize(gguf.quants.quantize(x, G.BF16), G.BF16)
    np.testing.assert_array_equal(Q.quantize_activations(x, Q.BF16), bf16)
    assert Q.quantize_activations(x[0], Q.Q8_0).shape == (64,)


# ------------------------------------------------------------------ products


def reference_product(raw, type_id, x_fq):
    return x_fq.astype(np.float64) @ gguf_dequant(raw, type_id).astype(np.float64).T


def assert_close(got, expected, rtol=1e-4):
    err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert err < rtol, f"relative error {err:.2e}"


@pytest.mark.parametrize("type_id", WEIGHT_TYPES, ids=lambda t: G(t).name)
def test_matvec_and_matmul(type_id):
    raw = random_weights(type_id, N_ROWS, N_COLS)
    x_fq = Q.quantize_activations(activations(7, N_COLS), Q.quant_type(type_id).vec_dot_type)
    expected = reference_product(raw, type_id, x_fq)
    out = np.empty(N_ROWS, np.float32)
    assert Q.matvec(raw, type_id, x_fq[3], out) is out
    assert_close(out, expected[3])
    assert_close(Q.matmul(raw, type_id, x_fq), expected)
    assert_close(Q.matmul(raw, type_id, x_fq, use_blas=True, tile_rows=16), expected)


def ggml_q8_blocks(x):
    """(int quants, fp16 d, fp16 s) of the AVX2 Q8_0/Q8_1 quantizer."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    q = np.rint(blocks * (np.float32(127) / amax)[:, None])
    d = (amax / np.float32(127)).astype(np.float32)
    s = (d * q.sum(axis=1)).astype(np.float16).astype(np.float32)
    return q, d.astype(np.float16).astype(np.float32), s


def ggml_dot_q4_1_q8_1(raw, x):
    """ggml_vec_dot_q4_1_q8_1: integer block dots plus min * s."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    dw = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    mw = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    qw = np.concatenate([blocks[..., 4:] & 15, blocks[..., 4:] >> 4], axis=-1).astype(np.float64)
    qx, dx, sx = ggml_q8_blocks(x)
    dots = np.einsum("rbj,bj->rb", qw, qx.astype(np.float64))
    return (dw * dx * dots + mw * sx).sum(axis=1)


def test_linear_reproduces_ggml_q4_1_dot():
    raw = gguf.quants.quantize(activations(40, 256, seed=3), G.Q4_1)
    x = activations(3, 256, seed=4)
    got = Q.linear(raw, Q.Q4_1, x)
    for t in range(3):
        assert_close(got[t], ggml_dot_q4_1_q8_1(raw, x[t]), rtol=2e-6)
    assert_close(Q.linear(raw, Q.Q4_1, x[1]), ggml_dot_q4_1_q8_1(raw, x[1]), rtol=2e-6)
    xq, corr = Q.quantize_activations(x, Q.Q8_1, return_correction=True)
    blas = Q.matmul(raw, Q.Q4_1, xq, corr, use_blas=True, tile_rows=16)
    assert_close(blas[2], ggml_dot_q4_1_q8_1(raw, x[2]), rtol=2e-6)


def test_linear_shapes_and_k_types():
    raw = random_weights(Q.Q4_K, 9, 256)
    x = activations(4, 256)
    y = Q.linear(raw, Q.Q4_K, x)
    assert y.shape == (4, 9) and y.dtype == np.float32
    assert_close(y, reference_product(raw, Q.Q4_K, q8_k_numpy(x)))
    assert Q.linear(raw, Q.Q4_K, x[0]).shape == (9,)

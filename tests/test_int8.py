"""The one-token products of 32-quant blocks (quants/_int8.py) against the batch kernel, row by row.

The three are separate code (the one-token kernel runs four rows side by side; the few-token kernel
streams rows, each block unpacked once for four tokens; the batch kernel decodes rows to bytes
first), written to the same arithmetic: ggml's per-row order of float operations. Equal bits
between them for every type, for row counts that do and do not fill the four-row groups, is what
keeps the matvec on llama.cpp's numbers for the types the reference models do not carry (Q4_0,
Q5_0, Q5_1)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from test_quants import activations, random_weights

from llamapy import quants as Q
from llamapy.quants._inputs import packed_rows
from llamapy.quants.products import q32_kernels, quantize_for

K = 512


def _host_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read().split()
    except OSError:
        return False


@pytest.mark.parametrize("type_id", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0], ids=lambda t: Q.quant_type(t).name)
@pytest.mark.parametrize("rows", [1, 7, 16, 37])
@pytest.mark.parametrize("n", [5, 8])
def test_matvec_equals_batch_kernel(type_id, rows, n):
    """n = 5: a group of four tokens and one alone; 8: two groups. Odd row counts leave a row out of
    the few-token kernel's pairs of rows."""
    raw = packed_rows(random_weights(type_id, rows, K, seed=rows), type_id, K)
    act = quantize_for(type_id, activations(n, K, seed=rows))
    kernels = q32_kernels(type_id)
    batch = kernels.batch(raw, act.q8, act.d, act.extra, act.lane_sums, np.empty((n, rows), np.float32))
    few = kernels.few(raw, act.q8, act.d, act.extra, act.lane_sums, np.empty((n, rows), np.float32))
    np.testing.assert_array_equal(few, batch)
    for t in range(n):
        out = np.full(rows, np.nan, np.float32)
        kernels.one(raw, act.q8[t], act.d[t], act.extra[t], act.lane_sums[t], out)
        np.testing.assert_array_equal(out, batch[t])


def _q8_0_rows(w: np.ndarray) -> np.ndarray:
    """int8 weights [rows, k] as Q8_0 rows with every scale 1.0."""
    rows, k = w.shape
    blocks = np.empty((rows, k // 32, 34), np.uint8)
    blocks[:, :, 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    blocks[:, :, 2:] = w.reshape(rows, k // 32, 32).view(np.uint8)
    return blocks.reshape(rows, -1)


def test_q8_0_products_are_the_integer_dot():
    """Signed × signed blocks at their extremes (w = -128, x = ±127) against numpy's integer dot: scales of
    1.0 make every float step exact, so all three kernels must give Σ w·x itself. The VNNI path forms it
    as Σ (w + 128)·x − 128·Σx, the AVX2 one as |w|·sign(x, w): either way the same integers."""
    rng = np.random.default_rng(7)
    rows, n = 12, 5
    w = rng.integers(-128, 128, (rows, K), dtype=np.int8)
    w[0], w[1, ::3] = -128, -128
    x = rng.integers(-127, 128, (n, K)).astype(np.float32)
    x[0], x[1, ::2] = 127, -127
    x.reshape(n, -1, 32)[:, :, 5] = 127  # every block's amax is 127: its activation scale is exactly 1
    expected = (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.float32)
    raw = packed_rows(_q8_0_rows(w), Q.Q8_0, K)
    act = quantize_for(Q.Q8_0, x)
    assert (act.q8.view(np.int8) == x).all() and (act.d == 1).all()
    kernels = q32_kernels(Q.Q8_0)
    np.testing.assert_array_equal(kernels.batch(raw, act.q8, act.d, act.extra, act.lane_sums,
                                                np.empty((n, rows), np.float32)), expected)
    np.testing.assert_array_equal(kernels.few(raw, act.q8, act.d, act.extra, act.lane_sums,
                                              np.empty((n, rows), np.float32)), expected)
    out = np.empty(rows, np.float32)
    kernels.one(raw, act.q8[0], act.d[0], act.extra[0], act.lane_sums[0], out)
    np.testing.assert_array_equal(out, expected[0])


_AVX2_CHECK = """
import numpy as np
from test_quants import activations, random_weights
from llamapy import quants as Q
from llamapy.quants._inputs import packed_rows
from llamapy.quants.products import q32_kernels, quantize_for
for type_id in (Q.Q4_0, Q.Q8_0):
    raw = packed_rows(random_weights(type_id, 7, 512, seed=3), type_id, 512)
    act = quantize_for(type_id, activations(5, 512, seed=3))
    kernels = q32_kernels(type_id)
    few = kernels.few(raw, act.q8, act.d, act.extra, act.lane_sums, np.empty((5, 7), np.float32))
    for t in range(5):
        out = np.full(7, np.nan, np.float32)
        kernels.one(raw, act.q8[t], act.d[t], act.extra[t], act.lane_sums[t], out)
        np.testing.assert_array_equal(out, few[t])
print("equal")
"""


@pytest.mark.skipif(not _host_has("avx2"), reason="the host cannot run AVX2 code")
def test_few_token_kernel_compiled_for_avx2(tmp_path):
    """The few-token kernel's sixteen-lane vectors become zmm instructions with AVX-512 and are split
    by LLVM into ymm pairs (AVX2's maddubs, its sign step, one row at a time) elsewhere. On an AVX-512
    host the split code is compiled only when asked: here for Haswell, in a process of its own with
    its own cache, and held to the one-token kernel's bits."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "equal", run.stderr[-2000:]

"""The one-token products of 32-quant blocks (quants/_int8.py) against the batch kernel, row by row.

The three are separate code (the one-token kernel runs four rows side by side; the few-token kernel
streams rows, each block unpacked once for four tokens; the batch kernel decodes rows to bytes
first), written to the same arithmetic: ggml's per-row order of float operations. Equal bits
between them for every type, for row counts that do and do not fill the four-row groups, is what
keeps the matvec on llama.cpp's numbers for the types the reference models do not carry (Q4_0,
Q5_0, Q5_1)."""

import numpy as np
import pytest
from test_quants import activations, random_weights

from llamapy import quants as Q
from llamapy.quants._inputs import packed_rows
from llamapy.quants.products import q32_kernels, quantize_for

K = 512


@pytest.mark.parametrize("type_id", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0], ids=lambda t: Q.quant_type(t).name)
@pytest.mark.parametrize("rows", [1, 7, 16, 37])
def test_matvec_equals_batch_kernel(type_id, rows):
    raw = packed_rows(random_weights(type_id, rows, K, seed=rows), type_id, K)
    act = quantize_for(type_id, activations(5, K, seed=rows))
    kernels = q32_kernels(type_id)
    batch = kernels.batch(raw, act.q8, act.d, act.extra, act.lane_sums, np.empty((5, rows), np.float32))
    few = kernels.few(raw, act.q8, act.d, act.extra, act.lane_sums, np.empty((5, rows), np.float32))
    np.testing.assert_array_equal(few, batch)
    for t in range(5):
        out = np.full(rows, np.nan, np.float32)
        kernels.one(raw, act.q8[t], act.d[t], act.extra[t], act.lane_sums[t], out)
        np.testing.assert_array_equal(out, batch[t])

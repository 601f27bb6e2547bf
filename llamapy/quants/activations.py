"""Activation quantization as llama.cpp's CPU backend does it.

Before every mat-mul with a quantized (or F16/BF16) weight, ggml-cpu converts
the activations to the weight type's `vec_dot_type` (Q8_0, Q8_1, Q8_K, F16,
BF16) and runs an integer or half-precision dot product.  That moves
perplexity by about 0.45% versus float activations, so reproducing
llama.cpp's numbers means quantizing too.  We return the quantized values dequantized back to
float32 ("fake quantization"); a float dot product with them equals ggml's
integer dot product up to float rounding.

Rounding details that matter (verified against ggml-cpu's sources):

* Q8_0 / Q8_1 on x86 with AVX/AVX2 (`impl="avx2"`, the default): the quants
  are round-to-nearest-even of x * (127 / amax).  The scalar reference
  (`impl="ref"`, also what `gguf.quants` implements) rounds halves away from
  zero and multiplies by 1 / (amax / 127), which can differ by one ulp.  Both
  store the scale as fp16 but compute the quants with the unrounded scale,
  so q * fp16(d) is what the dot product sees.
* Q8_1 also stores s = fp16(d * sum(q)) per block, and llama.cpp uses it for
  the min term of Q4_1/Q5_1 (min * s) instead of min * fp16(d) * sum(q).
  `return_correction=True` gives s - fp16(d) * sum(q) per block; matvec,
  matmul and linear fold it back in, so nothing is dropped.
* Q8_K (all K-quants) is the scalar reference on x86: the scale comes from
  the signed element of largest magnitude (the first one on ties) as
  -127 / max, quants round to nearest even and clamp at +127, and the scale
  stays float32.  The AVX2 4-row quantizer used for repacked Q4_K weights
  (CPU_REPACK, batches of >= 4 rows) may pick the other sign on a +/-max tie,
  which flips q and d together: the dequantized values are the same.
* Repacked Q4_0 (AVX2, rows % 8 == 0) quantizes activations with an AVX2
  4-row Q8_0 quantizer that rounds exactly like the AVX2 path above.
* F16 rounds to nearest even (F16C); BF16 rounds to nearest even, NaNs kept
  quiet.  F32 is the identity.
"""

from __future__ import annotations

import numpy as np

from ._inputs import float_rows
from ._kernels import fake_quantize_kernel
from .types import ACTIVATION_TYPES, Q8_0, Q8_1, Q8_K, check_activation_type

_BLOCK = {Q8_0: 32, Q8_1: 32, Q8_K: 256}
_IMPLS = ("avx2", "ref")


def quantize_activations(x: np.ndarray, vec_dot_type: int, *, impl: str = "avx2", return_correction: bool = False):
    """Fake-quantize float32 activations [n, k] (or [k]) to `vec_dot_type`.

    Returns float32 of x's shape; with `return_correction` also the Q8_1
    correction [n, k/32] (empty [n, 0] for other types) to pass to
    matvec/matmul.  `impl` picks the x86 AVX2 rounding or ggml's scalar
    reference for Q8_0/Q8_1.
    """
    vdt = check_activation_type(vec_dot_type)
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    rows = float_rows(x)
    block = _BLOCK.get(vdt, 1)
    if rows.shape[1] % block:
        raise ValueError(f"{ACTIVATION_TYPES[vdt]} needs a multiple of {block} columns, got {rows.shape[1]}")
    out = np.empty(rows.shape, np.float32)
    corr = np.zeros((rows.shape[0], rows.shape[1] // 32 if vdt == Q8_1 else 0), np.float32)
    fake_quantize_kernel(rows, vdt, impl == "avx2", out, corr)
    out = out.reshape(np.shape(x))
    return (out, corr) if return_correction else out

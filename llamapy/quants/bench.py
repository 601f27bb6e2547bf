"""Throughput check for the quantized products: `python -m llamapy.quants.bench`.

Prints GB/s of packed weight bytes streamed by matvec (one token) and GFLOP/s
of matmul (a prompt batch, BLAS tiles vs the all-numba loop).  Best-of-N
timings: on a shared 2-core machine medians mostly measure the neighbours.
Set NUMBA_NUM_THREADS to pin the thread count.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numba
import numpy as np

from . import matmul, matvec, quantize_activations
from .types import QUANT_TYPES, quant_type, row_bytes

# (type, rows, cols): shapes of SmolLM2-135M and Gemma-3-270M weights
MATVEC_CASES = [
    ("Q8_0", 49152, 576),
    ("Q4_1", 1536, 576),
    ("Q4_1", 576, 1536),
    ("Q4_K", 640, 2048),
    ("Q6_K", 640, 2048),
    ("Q5_0", 640, 2048),
    ("Q5_0", 2048, 640),
    ("Q4_0", 640, 2048),
    ("Q5_1", 640, 2048),
    ("Q8_0", 640, 2048),
    ("Q2_K", 640, 2048),
    ("Q3_K", 640, 2048),
    ("Q5_K", 640, 2048),
    ("F16", 640, 2048),
    ("BF16", 640, 2048),
    ("F32", 640, 2048),
]
MATMUL_CASES = [("Q4_1", 1536, 576, 512), ("Q4_1", 576, 1536, 512), ("Q8_0", 2048, 640, 512)]

_IDS = {qt.name: qt.type_id for qt in QUANT_TYPES.values()}


def random_packed(type_id: int, rows: int, cols: int, rng) -> np.ndarray:
    """Random bytes with every fp16 of a block made finite and small: decoding
    cost does not depend on the values, only NaN/denormal slow paths would."""
    raw = rng.integers(0, 256, (rows, row_bytes(type_id, cols)), dtype=np.uint8)
    qt = quant_type(type_id)
    if qt.block_size == 1:
        vals = rng.standard_normal((rows, cols)).astype(np.float32)
        return vals.view(np.uint8) if qt.type_size == 4 else vals.astype(np.float16).view(np.uint8)
    halves = raw.view(np.uint16)  # every type_size is even, so fp16 fields are among these
    halves &= np.uint16(0x3BFF)  # positive, below 1.0: finite, no NaN/inf
    return raw


def best_time(fn, *args, repeat: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def bench_matvec(repeat: int, rng) -> None:
    for name, rows, cols in MATVEC_CASES:
        tid = _IDS[name]
        raw = random_packed(tid, rows, cols, rng)
        x = quantize_activations(rng.standard_normal(cols).astype(np.float32), quant_type(tid).vec_dot_type)
        out = np.empty(rows, np.float32)
        t = best_time(matvec, raw, tid, x, out, repeat=repeat)
        print(f"matvec {name:5s} {rows:6d}x{cols:<5d} {raw.nbytes / t / 1e9:7.2f} GB/s  {t * 1e6:8.1f} us")


def bench_matmul(repeat: int, rng) -> None:
    for name, rows, cols, n in MATMUL_CASES:
        tid = _IDS[name]
        raw = random_packed(tid, rows, cols, rng)
        x = quantize_activations(rng.standard_normal((n, cols)).astype(np.float32), quant_type(tid).vec_dot_type)
        for use_blas in (True, False):
            t = best_time(partial(matmul, use_blas=use_blas), raw, tid, x, repeat=max(3, repeat // 10))
            label = "BLAS tiles" if use_blas else "numba loop"
            print(f"matmul {name:5s} {rows:6d}x{cols:<5d} n={n} {label}: {2 * n * rows * cols / t / 1e9:7.1f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    print(f"numba threads: {numba.get_num_threads()}, layer: {numba.config.THREADING_LAYER}")
    rng = np.random.default_rng(0)
    bench_matvec(args.repeat, rng)
    bench_matmul(args.repeat, rng)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where the time of a batched decode step goes: 1 sequence against N, one thread.

Times one decode token of 1 and of N sequences (each with its own KV cache, as the server's slots),
interleaved so that both see the same machine, by the engine thread's CPU time (time.thread_time:
a thread the OS deschedules on a shared machine is not charged for the wait) and by wall time, and
splits the CPU time into the weight products, the output head, attention and the rest (Python,
norms, RoPE, KV stores). Run on one numba thread so that the CPU time is the whole step's.

    NUMBA_NUM_THREADS=1 python scripts/batch_profile.py -N 4 [-m MODEL] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-N", type=int, default=4, help="sequences in the batched step")
    p.add_argument("-m", "--model", help="GGUF (default: SmolLM2)")
    p.add_argument("--steps", type=int, default=40, help="timed steps of each")
    p.add_argument("--past", type=int, default=64, help="tokens already in each cache")
    args = p.parse_args()

    import numba

    numba.set_num_threads(1)
    import llamapy.models.blocks as blocks
    from llamapy import load

    model = load(args.model)
    parts = {"products": 0.0, "head": 0.0, "attention": 0.0}
    linear_call, attention = blocks.Linear.__call__, blocks.attention

    def timed_linear(self, *a, **k):
        t = time.thread_time()
        out = linear_call(self, *a, **k)
        parts["head" if self is model.net.output else "products"] += time.thread_time() - t
        return out

    def timed_attention(*a, **k):
        t = time.thread_time()
        out = attention(*a, **k)
        parts["attention"] += time.thread_time() - t
        return out

    blocks.Linear.__call__, blocks.attention = timed_linear, timed_attention
    rng = np.random.default_rng(0)
    sizes = (1, args.N)
    caches = {n: [model.new_cache(args.past + 8) for _ in range(n)] for n in sizes}
    for cs in caches.values():
        for c in cs:
            model.forward(rng.integers(0, model.config.n_vocab, args.past), c)
    cpu = {n: [] for n in sizes}
    wall = {n: [] for n in sizes}
    split = {n: dict.fromkeys(parts, 0.0) for n in sizes}
    for step in range(args.steps + 2):
        for n in sizes:
            for c in caches[n]:
                c.n_past = args.past
            tokens = [rng.integers(0, model.config.n_vocab, 1) for _ in range(n)]
            before = dict(parts)
            c0, w0 = time.thread_time(), time.perf_counter()
            model.net.forward_batch(tokens, caches[n])
            if step >= 2:  # two warm-up steps
                cpu[n].append(time.thread_time() - c0)
                wall[n].append(time.perf_counter() - w0)
                for k in parts:
                    split[n][k] += parts[k] - before[k]
    for n in sizes:
        c = statistics.median(cpu[n])
        share = {k: v / len(cpu[n]) for k, v in split[n].items()}
        rest = statistics.mean(cpu[n]) - sum(share.values())
        print(f"B={n}: CPU {c * 1e3:.2f} ms/step (median; wall {statistics.median(wall[n]) * 1e3:.2f}), "
              f"{n / c:.1f} t/s; " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in share.items())
              + f", rest {rest * 1e3:.2f} ms")
    one, many = statistics.median(cpu[1]), statistics.median(cpu[args.N])
    print(f"aggregate generation with {args.N} sequences: {args.N * one / many:.2f}x one sequence (CPU time)")


if __name__ == "__main__":
    main()

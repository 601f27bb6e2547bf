"""`llamapy bench -np`: llama-batched-bench's aggregate throughput of N parallel sequences."""

import subprocess
import sys

import pytest
from conftest import model_path

from llamapy.batched_bench import BatchedResult


def test_rows_count_every_sequence():
    r = BatchedResult(n_prompt=128, n_gen=32, n_parallel=4, t_pp=2.0, t_tg=4.0)
    assert r.n_kv == 4 * 160 and r.s_pp == 256.0 and r.s_tg == 32.0 and r.s == pytest.approx(640 / 6)


def test_repetitions_take_the_sequence_counts_in_turn(monkeypatch):
    """A slow spell of the machine should fall on every -np row alike, not on one row's runs."""
    from llamapy import batched_bench as bb

    order = []

    def fake_run(model, n_prompt, n_gen, n_parallel, n_batch, rng):
        order.append(n_parallel)
        return 1.0 * n_parallel, 2.0 * n_parallel

    monkeypatch.setattr(bb, "run_once", fake_run)
    rows = bb.batched_sweep(None, 8, 4, [1, 4], reps=3, warmup=False)
    assert order == [1, 4, 1, 4, 1, 4]
    assert [(r.n_parallel, r.t_pp, r.t_tg) for r in rows] == [(1, 1.0, 2.0), (4, 4.0, 8.0)]
    # A count given twice is two rows, each with its own runs (calls 1 and 3, then 2 and 4).
    calls = iter(range(1, 5))
    monkeypatch.setattr(bb, "run_once", lambda *a: (float(next(calls)), 1.0))
    twice = bb.batched_sweep(None, 8, 4, [4, 4], reps=2, warmup=False)
    assert [(r.n_parallel, r.t_pp) for r in twice] == [(4, 2.0), (4, 3.0)]
    with pytest.raises(ValueError, match="-r must be at least 1"):
        bb.batched_sweep(None, 8, 4, [1], reps=0)


def test_bench_np_prints_one_row_per_sequence_count():
    cmd = [sys.executable, "-m", "llamapy.commands.main", "bench", "-m", str(model_path("smollm2")), "-np", "1,2",
           "-p", "4", "-n", "2", "-r", "1", "--no-warmup", "-t", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("|") and line[2:7].strip().isdigit()]
    assert [row.split("|")[3].strip() for row in rows] == ["1", "2"]
    assert "S_TG t/s" in result.stdout
    bad = subprocess.run(cmd[:-9] + ["-np", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: -np must be at least 1"
    empty = subprocess.run(cmd[:-9] + ["-p", "0", "-n", "0"], capture_output=True, text=True, timeout=300)
    assert empty.returncode == 1 and empty.stdout == ""
    assert empty.stderr.strip() == "error: each sequence needs prompt or generated tokens (-p, -n)"


def test_a_model_with_its_own_forward_runs_the_sequences_one_by_one():
    """--rpc's DistributedModel overrides forward: the engine's step then runs each sequence alone, with
    the same logits as the batched pass."""
    import numpy as np

    from llamapy.model import Model
    from llamapy.server.engine import forward_step

    class Elsewhere(Model):
        calls = 0

        def forward(self, ids, cache, **kw):
            Elsewhere.calls += 1
            return super().forward(ids, cache, **kw)

    local, remote = Model(model_path("smollm2")), Elsewhere(model_path("smollm2"))
    tokens = [np.array([1, 2, 3]), np.array([4])]
    batched = forward_step(local, tokens, [local.new_cache(8), local.new_cache(8)])
    alone = forward_step(remote, tokens, [remote.new_cache(8), remote.new_cache(8)])
    assert Elsewhere.calls == 2 and np.array_equal(batched, alone)

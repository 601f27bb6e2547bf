"""Distributed inference on Dask: a scheduler and two workers on 127.0.0.1, SmolLM2 split 50/50.

One cluster for the module (started through the CLI, `llamapy rpc-scheduler` and `llamapy rpc-server
--nthreads 1`), torn down at the end. Nothing here sends to any address but 127.0.0.1. The test that
kills a worker runs last: the tests after it would see one worker.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import model_path

import llamapy
from llamapy.distributed import client as dclient
from llamapy.distributed.client import DistributedModel, scheduler_address
from llamapy.distributed.errors import HandshakeRefused, PlanError, SchedulerUnreachable, WorkerLost
from llamapy.distributed.files import file_sha256, find_copy, model_ref
from llamapy.distributed.plan import WorkerInfo, layer_split, parse_tensor_split, plan
from llamapy.distributed.report import hop_table, stage_legend, take_hop_rows
from llamapy.distributed.stage import stage_from_file, stage_from_tensors, stage_tensor_names
from llamapy.model import Model
from llamapy.options import RunOptions

LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]
PROMPT = "The capital of France is"
N_PREDICT = 12
STARTUP = 120  # seconds a process may take to come up on a busy machine (never reached when all is well)


# --- without a cluster ----------------------------------------------------------------------------

def test_layer_split_follows_llama_cpp():
    assert layer_split(30, [1, 1]) == [range(0, 15), range(15, 30)]
    assert layer_split(30, [3, 1]) == [range(0, 23), range(23, 30)]
    assert layer_split(30, [1, 0, 1]) == [range(0, 15), range(0), range(15, 30)]
    workers = [WorkerInfo("tcp://127.0.0.1:2", 3 << 30), WorkerInfo("tcp://127.0.0.1:1", 1 << 30)]
    # by free memory when no -ts; a worker given no layer is left out of the pipeline
    assert [s.layers for s in plan(8, workers)] == [range(0, 6), range(6, 8)]
    assert [s.address for s in plan(8, workers, [0, 1])] == ["tcp://127.0.0.1:1"]


def test_bad_splits_are_one_line_errors():
    workers = [WorkerInfo("tcp://127.0.0.1:1", 1 << 20), WorkerInfo("tcp://127.0.0.1:2", 1 << 30)]
    with pytest.raises(PlanError, match="3 ratios but the cluster has 2"):
        plan(30, workers, [1, 1, 1])
    with pytest.raises(PlanError, match=r"tcp://127.0.0.1:1 \(layers 0-14\) needs 15 MiB"):
        plan(30, workers, [1, 1], layer_bytes=[1 << 20] * 30)
    for text in ("a,b", "1,-1", "0,0"):
        with pytest.raises(PlanError, match="-ts"):
            parse_tensor_split(text)
    assert parse_tensor_split("3/1") == [3.0, 1.0] and parse_tensor_split(None) is None


def test_scheduler_addresses():
    assert scheduler_address("10.0.0.2") == "tcp://10.0.0.2:8786"
    assert scheduler_address("10.0.0.2:9000") == "tcp://10.0.0.2:9000"
    assert scheduler_address("tcp://h:1") == "tcp://h:1"
    with pytest.raises(ValueError, match="one Dask scheduler"):
        scheduler_address("h1:1,h2:2")


def test_a_copy_is_used_only_when_its_digest_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    main, other = tmp_path / "main", tmp_path / "other"
    main.mkdir()
    other.mkdir()
    (main / "m.gguf").write_bytes(b"GGUF" + bytes(100))
    ref = model_ref(main / "m.gguf")
    assert file_sha256(main / "m.gguf") == ref.sha256 and (tmp_path / "cache" / "sha256.json").is_file()
    (main / "m.gguf").rename(main / "gone.gguf")  # the main host's path is not on this "worker"
    (other / "m.gguf").write_bytes(b"GGUF" + bytes(99) + b"x")  # same name and size, other bytes
    assert find_copy(ref, [str(other)]) is None
    (other / "m.gguf").write_bytes(b"GGUF" + bytes(100))
    assert find_copy(ref, [str(other)]) == other / "m.gguf"


def test_stages_from_file_and_from_tensors_compose_to_the_whole_model(local):
    ids = np.asarray(local.tokenize(PROMPT))
    whole = local.forward(ids, local.new_cache(16), all_logits=True)
    first = stage_from_file(local.path, range(0, 10))
    own = {n: local.gguf.raw(n) for n in stage_tensor_names(local.gguf.tensors, range(10, 30))}
    assert "token_embd.weight" not in own and "blk.9.attn_q.weight" not in own
    second = stage_from_tensors("sent", local.config, dict(local.gguf.tensors), own, range(10, 30))
    x = second.run(first.run(local.net.embed(ids), first.new_cache(16), 0), second.new_cache(16), 0)
    assert np.array_equal(local.net.head(x), whole)


def test_no_scheduler_is_one_line():
    with pytest.raises(SchedulerUnreachable, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        DistributedModel(model_path("smollm2"), "tcp://127.0.0.1:9")


# --- the cluster ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local():
    return llamapy.load(model_path("smollm2"))


@pytest.fixture(scope="module")
def greedy(local):
    return "".join(s.text for s in local.generate(PROMPT, n_predict=N_PREDICT, temp=0))


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "LLAMAPY_CACHE": str(root / "cache"), "NUMBA_NUM_THREADS": "1"}
        self.scheduler = ""
        self.workers: dict[str, subprocess.Popen] = {}  # address -> process
        self.wire_worker = ""

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen([*LLAMAPY, *args], stdout=subprocess.DEVNULL, stderr=log, env=self.env,
                                start_new_session=True)
        log.close()
        proc.log = self.root / f"{name}.log"
        self.procs.append(proc)
        return proc

    def address(self, proc: subprocess.Popen, marker: str) -> str:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            text = proc.log.read_text()
            for line in text.splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].split()[0]
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[3]} exited: {text}")
            time.sleep(0.1)
        pytest.fail(f"{proc.args[3]} did not start: {proc.log.read_text()}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        sched = c.start("scheduler", "rpc-scheduler", "--port", "0")
        c.scheduler = c.address(sched, "listening on ")
        procs = {"file": c.start("worker-file", "rpc-server", "-s", c.scheduler, "--nthreads", "1"),
                 "wire": c.start("worker-wire", "rpc-server", "-s", c.scheduler, "--nthreads", "1",
                                 "--no-local-models")}
        for kind, p in procs.items():
            address = c.address(p, "worker ")
            c.workers[address] = p
            if kind == "wire":
                c.wire_worker = address
        yield c
    finally:
        c.stop()
        # Everything started here has ended: no process is left behind.
        assert all(p.poll() is not None for p in c.procs)


@pytest.fixture(scope="module")
def dmodel(cluster):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMAPY_CACHE", cluster.env["LLAMAPY_CACHE"])
        m = DistributedModel(model_path("smollm2"), cluster.scheduler, tensor_split=[1, 1])
    yield m
    m.close()


def test_only_loopback_addresses(cluster):
    assert cluster.scheduler.startswith("tcp://127.0.0.1:")
    assert len(cluster.workers) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in cluster.workers)


def test_split_50_50_gives_the_single_process_logits(dmodel, local):
    assert [h.stage.layers for h in dmodel.stages] == [range(0, 15), range(15, 30)]
    ids = local.tokenize(PROMPT)
    assert np.array_equal(dmodel.logits(ids), local.logits(ids))
    # decoding, one token at a time over the cached prefix, too
    a, b = local.new_cache(16), dmodel.new_cache(16)
    local.forward(ids, a)
    dmodel.forward(ids, b)
    for token in (11, 2_000, 42):
        assert np.array_equal(dmodel.forward([token], b), local.forward([token], a))


def test_same_greedy_text(dmodel, greedy):
    assert "".join(s.text for s in dmodel.generate(PROMPT, n_predict=N_PREDICT, temp=0)) == greedy


def test_a_worker_without_the_file_gets_its_layers_over_the_wire(dmodel, cluster):
    sources = {h.address: h.source for h in dmodel.stages}
    assert sources[cluster.wire_worker] == "received"
    (other,) = set(sources) - {cluster.wire_worker}
    assert sources[other].startswith("file ") and sources[other].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_hop_timings_are_recorded(dmodel):
    dmodel.hops.reset()
    cache = dmodel.new_cache(8)
    dmodel.forward([1, 2, 3], cache)
    dmodel.forward([4], cache)
    rows = take_hop_rows(dmodel, "t")
    hops = [r["what"] for r in rows if r["kind"] == "decode" and r["what"].startswith("hop")]
    assert hops == ["hop main → w1", "hop w1 → w2", "hop w2 → main"]
    assert all(r["median_ms"] >= 0 for r in rows)
    table = hop_table(rows, stage_legend(dmodel))
    assert "w1 = tcp://127.0.0.1:" in table and "| t " in table
    assert take_hop_rows(dmodel, "t") == []  # taken: reset


def test_kv_cache_types_reach_the_workers(cluster, local):
    q8 = RunOptions(cache_type_k="q8_0", cache_type_v="q8_0")
    ids = local.tokenize(PROMPT)
    with DistributedModel(model_path("smollm2"), cluster.scheduler, [1, 1], q8) as m:
        remote = m.logits(ids)
    assert np.array_equal(remote, Model(model_path("smollm2"), q8).logits(ids))
    assert not np.array_equal(remote, local.logits(ids))  # the setting did change the arithmetic


def test_another_kernel_build_is_refused_at_handshake(cluster, monkeypatch):
    monkeypatch.setattr(dclient, "identity", lambda: {"version": llamapy.__version__, "build": "0123456789ab"})
    with pytest.raises(HandshakeRefused) as e:
        DistributedModel(model_path("smollm2"), cluster.scheduler)
    message = str(e.value)
    assert "\n" not in message and "kernel build 0123456789ab" in message and "tcp://127.0.0.1:" in message


def llamapy_cli(*args):
    return subprocess.run([*LLAMAPY, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_simple_and_bench_over_rpc(cluster, greedy):
    result = llamapy_cli("simple", "--rpc", cluster.scheduler, "-ts", "1,1", "-n", N_PREDICT, PROMPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + greedy + "\n"
    result = llamapy_cli("bench", "--rpc", cluster.scheduler, "-p", 8, "-n", 2, "-r", 1, "-t", 1)
    assert result.returncode == 0, result.stderr
    assert "pp8" in result.stdout and "tg2" in result.stdout
    assert "hop main → w1" in result.stdout and "hop w2 → main" in result.stdout


def test_cli_errors_are_one_line(cluster):
    for args, pattern in ((("--rpc", "tcp://127.0.0.1:9"), "cannot reach the Dask scheduler"),
                          (("--rpc", cluster.scheduler, "-ts", "1,1,1"), "3 ratios but the cluster has 2"),
                          (("-ts", "1,1"), "give --rpc too")):
        result = llamapy_cli("simple", *args, "-n", 1, "hi")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and pattern in lines[0], result.stderr


def test_killing_a_worker_mid_generation(dmodel, cluster, greedy):
    """Last: a clear error naming the lost worker, then the next request runs on the one left."""
    victim = dmodel.stages[1].address
    steps = dmodel.generate(PROMPT, n_predict=N_PREDICT, temp=0)
    next(steps)
    cluster.workers[victim].kill()
    cluster.workers[victim].wait()
    with pytest.raises(WorkerLost) as e:
        list(steps)
    message = str(e.value)
    assert "\n" not in message and f"worker {victim} (layers 15-29) was lost" in message
    assert "re-plans onto the remaining workers" in message
    text = "".join(s.text for s in dmodel.generate(PROMPT, n_predict=N_PREDICT, temp=0))
    assert text == greedy
    (survivor,) = dmodel.stages
    assert survivor.address != victim and survivor.stage.layers == range(0, 30)

"""The fuzz battery: damaged GGUF files give one clear error or a working model, never a traceback,
a crash or a hang.

Each real or tiny model is damaged one field at a time (tests/gguf_mutations.py says how). In process,
every mutation is loaded and, when it loads, runs a forward pass; a sample also goes through the CLI in
a subprocess, where a crash would show as a signal.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numba
import pytest
from conftest import model_path
from gguf_mutations import Mutation, mutations
from tiny_models import write_tiny

from llamapy.config import ConfigError
from llamapy.gguf.reader import GGUFError
from llamapy.model import Model
from llamapy.models import UnknownArchitecture
from llamapy.models.blocks import MissingTensor
from llamapy.quants.types import UnsupportedQuantType

# The library's own errors for bad files; anything else escaping the loader is a bug.
CLEAN_ERRORS = (GGUFError, ConfigError, UnknownArchitecture, MissingTensor, UnsupportedQuantType)
CASE_SECONDS = 60  # generous: a case may compile a kernel for a type no other test used
LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]


class TimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise TimedOut()


class MutatedFile:
    """A working copy of `source`; each mutation is patched in place and undone afterwards."""

    def __init__(self, source: Path, folder: Path):
        self.original = source.read_bytes()
        self.path = folder / source.name
        shutil.copyfile(source, self.path)
        self.cut = folder / f"cut-{source.name}"

    def apply(self, m: Mutation) -> Path:
        if m.truncate_to is not None:
            self.cut.write_bytes(self.original[:m.truncate_to])
            return self.cut
        with open(self.path, "r+b") as f:
            for pos, raw in m.patches:
                f.seek(pos)
                f.write(raw)
        return self.path

    def undo(self, m: Mutation) -> None:
        with open(self.path, "r+b") as f:
            for pos, raw in m.patches:
                f.seek(pos)
                f.write(self.original[pos:pos + len(raw)])


def load_and_run(path: Path) -> str:
    """'ok' or 'error'; raises AssertionError for anything else, naming what escaped."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        model = Model(path)
        ids = model.tokenize("Hi there")[:3] or [0]
        model.forward(ids, model.new_cache(8))
        return "ok"
    except CLEAN_ERRORS as e:
        message = str(e)
        assert message.strip() and "\n" not in message.strip(), f"error is not one line: {message!r}"
        return "error"
    except TimedOut:
        raise AssertionError(f"no answer within {CASE_SECONDS} s") from None
    except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
        raise AssertionError(f"{type(e).__name__}: {e}") from e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_battery(source: Path, folder: Path, **options) -> collections.Counter:
    # One thread: the battery is thousands of tiny forwards, where thread start-up dominates.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    work = MutatedFile(source, folder)
    outcomes, failures = collections.Counter(), []
    try:
        for m in mutations(work.original, **options):
            try:
                outcomes[load_and_run(work.apply(m))] += 1
            except AssertionError as e:
                failures.append(f"{m.label}: {e}")
            finally:
                work.undo(m)
    finally:
        numba.set_num_threads(threads)
    assert not failures, f"{len(failures)} of {sum(outcomes.values()) + len(failures)} mutations escaped:\n" + \
        "\n".join(failures[:20])
    return outcomes


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny(folder / f"tiny-{arch}.gguf", arch) for arch in ("llama", "gemma3")}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_battery_on_tiny_models(arch, tiny_models, tmp_path):
    outcomes = run_battery(tiny_models[arch], tmp_path, n_tensors=40, n_flips=150, n_truncations=40)
    assert outcomes["error"] > 400 and outcomes["ok"] > 0, outcomes


def test_battery_on_smollm2(tmp_path):
    outcomes = run_battery(Path(model_path("smollm2")), tmp_path)
    assert outcomes["error"] > 250, outcomes


def test_battery_on_gemma3(tmp_path):
    # Gemma's 262k-token vocabulary makes each load slower: its own keys and tensors, fewer flips.
    outcomes = run_battery(Path(model_path("gemma3")), tmp_path, keys="arch", n_flips=10, n_truncations=8)
    assert outcomes["error"] > 150, outcomes


def test_the_reported_crashes_are_clean_errors(tmp_path):
    """The mutations issue 7 was filed for, by name."""
    source = Path(model_path("smollm2"))
    work = MutatedFile(source, tmp_path)
    wanted = {"llama.block_count=0", "llama.block_count=huge", "llama.block_count=-1",
              "llama.attention.head_count=0", "llama.attention.head_count_kv=0",
              "llama.rope.dimension_count=0", "llama.rope.dimension_count=huge"}
    found = [m for m in mutations(work.original) if m.label in wanted]
    assert len(found) == len(wanted)
    for m in found:
        try:
            with pytest.raises(ConfigError, match="llama\\."):
                Model(work.apply(m))
        finally:
            work.undo(m)


def cli_outcome(path: Path) -> str:
    result = subprocess.run([*LLAMAPY, "simple", "-m", str(path), "-n", "2", "-t", "1", "Hi"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), f"exit {result.returncode} (a signal if negative): {result.stderr[-300:]}"
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    if result.returncode == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return "error"
    return "ok"


def test_a_sample_through_the_cli(tmp_path, tiny_models):
    source = Path(model_path("smollm2"))
    work = MutatedFile(source, tmp_path)
    battery = mutations(work.original)
    sample = battery[::len(battery) // 10][:10]
    sample += [m for m in battery if m.label in ("llama.block_count=huge", "general.name string length huge")]
    outcomes = collections.Counter()
    for m in sample:
        try:
            outcomes[cli_outcome(work.apply(m))] += 1
        finally:
            work.undo(m)
    tiny = MutatedFile(tiny_models["gemma3"], tmp_path)
    for m in mutations(tiny.original)[::97]:
        try:
            outcomes[cli_outcome(tiny.apply(m))] += 1
        finally:
            tiny.undo(m)
    assert outcomes["error"] >= 5 and outcomes["ok"] >= 1, outcomes


def test_a_context_beyond_memory_is_one_line():
    result = subprocess.run([*LLAMAPY, "run", str(model_path("smollm2")), "-c", "100000000", "-n", "1", "Hi"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a context of 100000000 tokens (-c) needs "), lines
    assert "GiB" in lines[0] and "smaller -c" in lines[0]


def test_tiny_models_run_unharmed(tiny_models):
    for path in tiny_models.values():
        model = Model(path)
        steps = list(model.generate("the", n_predict=4, temp=0))
        assert len(steps) >= 1


HF_FIXTURES = Path(__file__).parent / "data" / "hf"
FAMILIES = sorted(p.name for p in HF_FIXTURES.iterdir() if (p / "config.json").is_file()) \
    if HF_FIXTURES.is_dir() else []


@pytest.mark.parametrize("family", FAMILIES)
def test_battery_on_every_converted_family(family, tmp_path):
    """One tiny model of each architecture we run, as `llamapy convert` writes it (Q8_0 weights)."""
    from llamapy.convert import convert

    source = convert(HF_FIXTURES / family, tmp_path / f"{family}.gguf", "q8_0").path
    work = tmp_path / "work"
    work.mkdir()
    outcomes = run_battery(Path(source), work, n_tensors=16, n_flips=60, n_truncations=16)
    assert outcomes["error"] > 100 and outcomes["ok"] > 0, outcomes

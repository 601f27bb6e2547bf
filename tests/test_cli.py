"""The command line as a user meets it: output on stdout, one-line errors, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import model_path
from gguf import GGUFWriter

LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]


def llamapy(*args, stdin=None):
    return subprocess.run([*LLAMAPY, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, pattern):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pattern in lines[0]
    assert "Traceback" not in result.stderr


def test_version_and_help():
    assert llamapy("--version").stdout.startswith("llamapy ")
    out = llamapy("--help").stdout
    for command in ("simple", "run", "bench", "perplexity"):
        assert command in out


def test_simple_prints_prompt_and_greedy_continuation(reference_dir):
    case = json.loads((reference_dir / "smollm2" / "greedy.jsonl").read_text().splitlines()[0])
    result = llamapy("simple", "-m", model_path("smollm2"), "-n", 32, case["prompt"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == case["prompt"] + case["continuation"] + "\n"
    assert "decoded 32 tokens" in result.stderr


def test_run_default_model_prompt_from_stdin():
    result = llamapy("run", "-n", 8, "--temp", 0, stdin="The capital of France is")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(" Paris")


def test_run_is_reproducible_with_a_seed():
    a = llamapy("run", model_path("smollm2"), "Once upon a time", "-n", 12, "-s", 7)
    b = llamapy("run", model_path("smollm2"), "Once upon a time", "-n", 12, "-s", 7)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.strip()


def test_missing_model_file(tmp_path):
    assert_one_line_error(llamapy("simple", "-m", tmp_path / "none.gguf", "hi"), "not found")


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all" * 10)
    assert_one_line_error(llamapy("run", bad, "hi"), "not a GGUF file")


def test_truncated_model_file(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(Path(model_path("smollm2")).read_bytes()[:5_000_000])
    assert_one_line_error(llamapy("simple", "-m", cut, "hi"), "truncated")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "foo.gguf"
    w = GGUFWriter(str(path), "foo")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    result = llamapy("simple", "-m", path, "hi")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'foo'" in result.stderr or "foo" in result.stderr


def test_prompt_longer_than_context():
    result = llamapy("run", model_path("smollm2"), "one two three four five six seven eight nine ten", "-c", 4)
    assert_one_line_error(result, "more than the context holds")


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_generation_lengths(n):
    result = llamapy("simple", "-m", model_path("smollm2"), "-n", n, "Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello")

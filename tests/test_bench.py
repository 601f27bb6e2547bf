"""`llamapy bench`: llama-bench's method, fields and formats, on tiny settings.

Nothing here asserts a speed: timings on a shared machine vary run to run, and `make bench` is where
speed is looked at. The command runs in-process (CliRunner) so numba compiles once for the module.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import typer
from conftest import model_path
from llamapy.commands.bench import bench
from typer.testing import CliRunner

from llamapy import bench as lb
from llamapy.gguf.reader import TensorInfo

TINY = ["-p", "8", "-n", "4", "-r", "2", "-t", "1"]
MD_COLUMNS = ["model", "size", "params", "backend", "threads", "test", "t/s", "GB/s"]
# What llama-bench reports for SmolLM2 in /work/shared/reference/bench.md (file bytes and parameters)
SMOLLM2_SIZE, SMOLLM2_PARAMS = "92.10 MiB", "134.52 M"


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(bench)
    return app


def run_bench(*args):
    return CliRunner().invoke(_app(), [str(a) for a in args])


def ok(*args):
    result = run_bench(*args)
    assert result.exit_code == 0, result.stderr or result.output
    return result


@pytest.fixture(scope="module")
def default_model() -> str:
    return str(model_path("smollm2"))


@pytest.fixture(scope="module")
def json_rows(default_model):
    return json.loads(ok("-m", default_model, *TINY, "-o", "json").stdout)


# --- the command --------------------------------------------------------------------------------------

def test_markdown_table_has_llama_bench_columns(default_model):
    result = ok("-m", default_model, *TINY)
    lines = result.stdout.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == MD_COLUMNS
    assert all(re.fullmatch(r"-+:?", cell.strip()) for cell in lines[1].strip("|").split("|"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
    assert [r[5] for r in rows] == ["pp8", "tg4"]
    for row in rows:
        assert row[:5] == ["llama 135M Q4_1", SMOLLM2_SIZE, SMOLLM2_PARAMS, "CPU", "1"]
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", row[6])
    assert rows[0][7] == "" and re.fullmatch(r"\d+\.\d\d", rows[1][7])
    assert lines[4] == "" and lines[5].startswith("build: llamapy")
    assert result.stderr == ""


def test_json_fields_and_consistency(json_rows):
    assert [(r["n_prompt"], r["n_gen"]) for r in json_rows] == [(8, 0), (0, 4)]
    for r in json_rows:
        assert list(r)[: len(lb.FIELDS)] == list(lb.FIELDS)
        assert {"samples_ns", "samples_ts", *lb.EXTRA_FIELDS} <= set(r)
        assert r["model_type"] == "llama 135M Q4_1" and r["n_threads"] == 1 and r["backends"] == "CPU"
        n = r["n_prompt"] + r["n_gen"]
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 2
        for ns, ts in zip(r["samples_ns"], r["samples_ts"], strict=True):
            assert ts == pytest.approx(n * 1e9 / ns)
        assert r["avg_ts"] == pytest.approx(sum(r["samples_ts"]) / 2)
        assert r["avg_ns"] == int(sum(r["samples_ns"]) / 2)
        # The mean of rates is at least the rate of the mean time, and close to it.
        assert n * 1e9 / r["avg_ns"] <= r["avg_ts"] * (1 + 1e-6) < 1.5 * n * 1e9 / r["avg_ns"]
        assert r["roofline_gbs"] is None and r["roofline_pct"] is None
    pp, tg = json_rows
    assert pp["avg_gbs"] is None
    assert tg["avg_gbs"] == pytest.approx(tg["weight_bytes_per_token"] * tg["avg_ts"] / 1e9)


def test_jsonl_cartesian_product_in_llama_bench_order(default_model):
    out = ok("-m", default_model, "-p", "4,8", "-n", "2", "-pg", "4,2", "-t", "1,2", "-b", "4,8", "-r", "1",
             "-o", "jsonl").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    got = [(r["n_batch"], r["n_threads"], r["n_prompt"], r["n_gen"]) for r in rows]
    tests = [(4, 0), (8, 0), (0, 2), (4, 2)]
    assert got == [(b, t, p, g) for b in (4, 8) for t in (1, 2) for p, g in tests]
    assert all(len(r["samples_ns"]) == 1 for r in rows)


def test_csv_reads_with_csv_module(default_model):
    out = ok("-m", default_model, *TINY, "-o", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2
    assert list(rows[0])[: len(lb.FIELDS)] == list(lb.FIELDS)
    assert rows[0]["model_type"] == "llama 135M Q4_1" and rows[0]["n_prompt"] == "8"
    assert float(rows[1]["avg_ts"]) > 0 and rows[0]["avg_gbs"] == ""


def test_roofline_column_and_footer(default_model):
    out = ok("-m", default_model, "-p", "0", "-n", "2", "-r", "1", "-t", "1", "--roofline").stdout
    lines = out.splitlines()
    assert lines[0].rstrip().endswith("| roofline |")
    assert re.search(r"\| +\d+\.\d %", lines[2])
    assert re.search(r"^roofline: memory read bandwidth \d+\.\d GB/s at 1 thread$", out, re.M)


def test_progress_goes_to_stderr(default_model):
    result = ok("-m", default_model, "-p", "4", "-n", "0", "-r", "1", "-t", "1", "--progress", "-o", "jsonl")
    assert "benchmark 1/1: warmup prompt run" in result.stderr
    assert "benchmark 1/1: prompt run 1/1" in result.stderr
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["-m", "/nonexistent/model.gguf"], "not found"),
    (["-o", "xml"], "unknown output format"),
    (["-p", "abc"], "-p:"),
    (["-pg", "512"], "-pg:"),
    (["-t", "0"], "-t 0"),
    (["-r", "0"], "-r must be"),
    (["-p", "0", "-n", "0"], "nothing to measure"),
])
def test_bad_input_is_one_line_on_stderr(args, message):
    result = run_bench(*args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_directory_as_model_fails_before_any_output(tmp_path):
    result = run_bench("-m", tmp_path, *TINY)
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


# --- the library ----------------------------------------------------------------------------------------

def test_parse_ints_lists_and_ranges():
    assert lb.parse_ints("128,512") == [128, 512]
    assert lb.parse_ints("1-4") == [1, 2, 3, 4]
    assert lb.parse_ints("64-512*2") == [64, 128, 256, 512]
    assert lb.parse_ints("0-20+10,7") == [0, 10, 20, 7]
    for bad in ("", "a", "1,,2", "-3", "4-8*1", "0-8*2"):
        with pytest.raises(ValueError):
            lb.parse_ints(bad)
    assert lb.parse_pair("512,128") == (512, 128)


def test_plan_drops_empty_tests():
    tests = lb.plan(["m"], [0, 16], [0], [(0, 0), (4, 4)], [2048], [1])
    assert [t.name for t in tests] == ["pp16", "pp4+tg4"]
    assert tests[1].n_tokens == 8 and not tests[1].is_generation


def _tensor(name, rows, type_id=0, cols=64):
    return TensorInfo(name, (cols, rows), type_id, 0)


def test_weight_bytes_per_token_reads_one_embedding_row_and_a_tied_head():
    embd = _tensor("token_embd.weight", 1000)  # F32: 256 bytes a row
    layer = _tensor("blk.0.ffn_up.weight", 10)
    tied = {t.name: t for t in (embd, layer)}
    assert lb.weight_bytes_per_token(tied) == 256 + layer.n_bytes + embd.n_bytes
    head = _tensor("output.weight", 1000)
    untied = {t.name: t for t in (embd, layer, head)}
    assert lb.weight_bytes_per_token(untied) == 256 + layer.n_bytes + head.n_bytes


def test_names_and_labels():
    assert lb.FTYPE_NAMES[3] == "Q4_1" and lb.FTYPE_NAMES[15] == "Q4_K - Medium"
    assert lb.size_label("135M", 1) == "135M"
    assert lb.size_label("", 134_515_008) == "135M"
    assert lb.size_label("", 1_240_000_000) == "1.2B"


def test_memory_bandwidth_is_positive():
    assert lb.memory_bandwidth([1], mib=8, passes=1)[1] > 0

"""`llamapy perplexity` against llama-perplexity's figures, its KL-divergence and HellaSwag modes, bad input."""

import json
import math
from itertools import islice
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import model_path
from llamapy.commands.main import app
from typer.testing import CliRunner

from llamapy import load
from llamapy.gguf.reader import GGUFFile
from llamapy.perplexity import (
    MersenneTwister,
    NllSums,
    TextTooShort,
    count_chunks,
    hellaswag,
    parse_hellaswag,
    pass_sizes,
    perplexity,
    tokenize_text,
    tokens_per_step,
)
from llamapy.quants import dequantize

HELLASWAG_SAMPLE = Path(__file__).parent / "data" / "hellaswag_sample.txt"
REFERENCE_CHUNKS = 4
RELATIVE_TOLERANCE = 0.005


def cli(*args):
    return CliRunner().invoke(app, ["perplexity", *map(str, args)])


def assert_one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- how llama.cpp cuts the text --------------------------------------------------------------------


def test_chunk_count_follows_llama_cpp():
    assert count_chunks(47567, 128) == 371
    assert count_chunks(47567, 512) == 92
    assert count_chunks(47567, 512, max_chunks=20) == 20
    assert count_chunks(1024, 512) == 2
    with pytest.raises(TextTooShort, match="at least 1024"):
        count_chunks(1023, 512)


def test_batches_split_like_llama_cpp_ubatches():
    # -b 2048 -c 128: 16 chunks a pass, each advancing 32 tokens per 512-token ubatch; a short last pass
    # of 3 chunks takes each in one step.
    assert pass_sizes(371, 128, 2048)[-4:] == [16, 3, 3, 3]
    assert tokens_per_step(128, 2048, 16) == 32
    assert tokens_per_step(128, 2048, 3) == 128
    assert tokens_per_step(512, 2048, 4) == 128
    assert tokens_per_step(2048, 2048, 1) == 512
    assert tokens_per_step(512, 256, 1) == 256


def test_error_is_the_standard_error_of_the_mean_nll_through_exp():
    nll = np.random.default_rng(0).gamma(2.0, 1.5, size=1000)
    sums = NllSums()
    sums.add(nll[:400])
    sums.add(nll[400:])
    assert sums.ppl == pytest.approx(math.exp(nll.mean()))
    assert sums.ppl_err == pytest.approx(sums.ppl * nll.std() / math.sqrt(len(nll) - 1))


# --- figures against llama.cpp ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppl_text(reference_dir):
    return (reference_dir / "ppl.txt").read_text()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_running_ppl_matches_llama_cpp(name, reference_dir, ppl_text):
    """The first chunks of a full -c 128 run (same pass layout as llama.cpp's: taken lazily)."""
    reference = json.loads((reference_dir / "perplexity.json").read_text())[name]["c128"]
    model = load(model_path(name))
    tokens = tokenize_text(model, ppl_text)
    chunks = list(islice(perplexity(model, tokens, 128, 2048), REFERENCE_CHUNKS))
    ours = [c.running_ppl for c in chunks]
    theirs = reference["running"][:REFERENCE_CHUNKS]
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert abs(a / b - 1) <= RELATIVE_TOLERANCE, f"{name} chunk {i + 1}: {a:.4f} vs llama.cpp {b:.4f}"


# --- command line -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_text(tmp_path_factory, ppl_text):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(ppl_text[:6000])
    return path


def test_text_output(long_text):
    result = cli("-m", model_path("smollm2"), "-f", long_text, "-c", 128, "--chunks", 2, "-t", 2)
    assert result.exit_code == 0, result.output
    running, final = result.stdout.strip().splitlines()
    assert running.startswith("[1]") and running.endswith(",") and "[2]" in running
    assert final.startswith("Final estimate: PPL = ") and " +/- " in final
    assert float(running.rstrip(",").split("]")[-1]) == pytest.approx(float(final.split()[4]), abs=1e-4)


def test_json_output_is_one_object(long_text):
    result = cli("-m", model_path("smollm2"), "-f", long_text, "-c", 128, "--chunks", 2, "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"ppl", "ppl_err", "n_ctx", "n_chunks", "running", "seconds"}
    assert report["n_ctx"] == 128 and report["n_chunks"] == 2 and len(report["running"]) == 2
    assert report["running"][-1] == report["ppl"] and report["ppl_err"] > 0


def test_text_shorter_than_two_contexts(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    assert_one_line_error(cli("-m", model_path("smollm2"), "-f", short, "-c", 128), "needs at least 256")


def test_empty_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(cli("-m", model_path("smollm2"), "-f", empty), "only 0 tokens")


def test_missing_text_file(tmp_path):
    assert_one_line_error(cli("-f", tmp_path / "nowhere.txt"), "file not found")


def test_missing_base_file(tmp_path):
    assert_one_line_error(cli("--kl-divergence", "--kl-divergence-base", tmp_path / "none.npz"), "not found")


def test_damaged_base_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"these are not log-probs" * 20)
    assert_one_line_error(cli("--kl-divergence", "--kl-divergence-base", bad), "not a KL-divergence base file")


# --- KL-divergence ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_q8_0(tmp_path_factory):
    """SmolLM2 requantized from its Q4_1 weights to Q8_0: nearly the same model, not quite."""
    source = model_path("smollm2")
    path = tmp_path_factory.mktemp("q8_0") / "smollm2-q8_0.gguf"
    weights, metadata = GGUFFile(source), gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(path), weights.kv["general.architecture"])
    for f in metadata.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = int(gguf.LlamaFileType.MOSTLY_Q8_0) if f.name == "general.file_type" else f.contents()
        writer.add_key_value(f.name, value, f.types[0], sub_type=f.types[1] if len(f.types) > 1 else None)
    for name, info in weights.tensors.items():
        if info.type_id in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, np.array(weights.array(name)))
            continue
        packed = gguf.quants.quantize(dequantize(weights.raw(name), info.type_id, info.shape[0]),
                                      gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def q8_0_base(smollm2_q8_0, long_text, tmp_path_factory):
    base = tmp_path_factory.mktemp("kl") / "base.npz"
    result = cli("-m", smollm2_q8_0, "-f", long_text, "-c", 128, "--chunks", 2, "--kl-divergence-base", base)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("Final estimate: PPL = ")
    return base


def kl_report(model, base):
    result = cli("-m", model, "--kl-divergence", "--kl-divergence-base", base, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_model_against_itself_diverges_by_nothing(smollm2_q8_0, q8_0_base):
    report = kl_report(smollm2_q8_0, q8_0_base)
    assert report["n_tokens"] == 2 * 63
    assert report["kld"] == 0.0 and report["kld_max"] == 0.0
    assert report["same_top"] == 1.0
    assert report["ppl_ratio"] == 1.0 and report["p_diff_rms"] == 0.0


def test_q4_1_against_q8_0_diverges_a_little(q8_0_base):
    report = kl_report(model_path("smollm2"), q8_0_base)
    assert 0.0 < report["kld"] < 0.05
    assert report["kld_min"] >= 0.0
    assert 0.8 < report["same_top"] < 1.0
    assert abs(report["ln_ppl_ratio"]) < 0.05
    assert 0.0 < report["p_diff_rms"] < 0.1


def test_kl_text_report(q8_0_base):
    result = cli("-m", model_path("smollm2"), "--kl-divergence", "--kl-divergence-base", q8_0_base)
    assert result.exit_code == 0, result.output
    for heading in ("PPL(Q)/PPL(base)", "KL divergence", "RMS", "same top token", "99.9 %"):
        assert heading in result.stdout


# --- HellaSwag --------------------------------------------------------------------------------------


def test_mt19937_matches_the_cpp_standard():
    assert MersenneTwister(1).next_u32() == 1791095845
    rng = MersenneTwister(5489)
    for _ in range(9999):
        rng.next_u32()
    assert rng.next_u32() == 4123659995  # the value the C++ standard requires of mt19937


def test_task_draws_match_libstdcpp():
    # std::uniform_int_distribution<size_t>(0, n - 1 - i) on std::mt19937(1), printed by g++ 12.
    rng = MersenneTwister(1)
    assert [rng.below(10042 - i) for i in range(6)] == [4187, 10012, 7232, 9361, 1, 1285]


def test_hellaswag_file_format(tmp_path):
    tasks = parse_hellaswag(HELLASWAG_SAMPLE.read_text())
    assert len(tasks) == 8 and all(len(t.endings) == 4 for t in tasks)
    assert tasks[0].gold == 2 and tasks[0].context.startswith("Making tea: ")
    with pytest.raises(ValueError, match="6 lines per task"):
        parse_hellaswag("context\n1\na\nb\nc\n")


def test_hellaswag_scores_the_sample():
    model = load(model_path("smollm2"))
    steps = list(hellaswag(model, parse_hellaswag(HELLASWAG_SAMPLE.read_text()), 8, 512))
    assert [s.index for s in steps] == list(range(1, 9))
    low, high = steps[-1].interval()
    assert 0.0 <= low <= steps[-1].acc_norm <= high <= 1.0
    assert steps[-1].acc_norm >= 0.5  # the wrong endings are absurd on purpose


def test_hellaswag_command():
    result = cli("-m", model_path("smollm2"), "--hellaswag", "-f", HELLASWAG_SAMPLE, "--hellaswag-tasks", 3,
                 "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_tasks"] == 3 and 0.0 <= report["acc_norm"] <= 1.0

"""Every converted family runs in each command: simple, run, chat, bench, perplexity (in-process CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from llamapy.commands.main import app
from typer.testing import CliRunner

from llamapy.convert import convert

HF = Path(__file__).parent / "data" / "hf"
FAMILIES = sorted(p.name for p in HF.iterdir() if (p / "config.json").is_file())
TEXT = (Path(__file__).parent / "data" / "hellaswag_sample.txt").read_text(encoding="utf-8")[:3000]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("arch")
    (out / "text.txt").write_text(TEXT, encoding="utf-8")
    return out


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_in_every_command(files, family):
    converted = convert(HF / family, files / f"{family}.gguf", "f16")
    model = converted.path
    assert invoke("simple", "-m", model, "-n", 4, "Hello").output.startswith("Hello")
    invoke("run", model, "The quick brown fox", "-n", 4, "-c", 64, "--temp", 0)
    invoke("chat", "-m", model, "-p", "Hi", "-n", 4, "-st", "--temp", 0)
    assert f"| {converted.arch} " in invoke("bench", "-m", model, "-p", 8, "-n", 2, "-r", 1).output
    assert "Final estimate: PPL" in invoke("perplexity", "-m", model, "-f", files / "text.txt", "-c", 64).output

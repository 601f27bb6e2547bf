"""`llamapy convert` on tiny checkpoints made by transformers (tests/data/make_hf_fixtures.py).

The oracle is transformers: its float32 logits and token ids were saved beside each checkpoint, so these
tests need no torch. Byte equality with llama.cpp's own converter is checked by
tests/data/compare_llamacpp.py where torch and llama.cpp's source are at hand (docs/convert.md).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamapy.convert import convert
from llamapy.model import Model

HF = Path(__file__).parent / "data" / "hf"
FAMILIES = sorted(p.name for p in HF.iterdir() if (p / "reference.npz").is_file())
LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]
TOLERANCE = 1e-3  # max |ours - transformers| over every logit of every position (float16 KV cache included)

# Where our tokenizer on the converted file and transformers' disagree, and why (family, string index).
# Each is llama.cpp's behaviour (llama-vocab.cpp), which ours follows and tests/data/
# compare_llamacpp_tokenizer.py checks with llama-tokenize; the first is sentencepiece's too.
_LEADING_SPACES = ("transformers' converted SPM drops the dummy prefix before text that starts with a space; "
                   "sentencepiece and llama.cpp keep it (three ▁ for two spaces)")
_AFTER_SPECIAL = ("llama.cpp prefixes a space to every text fragment that follows a special token "
                  "(is_prev_special); transformers only to the first")
_ADDED_OUTSIDE_SPM = ("<mask> exists only in tokenizer.json's added tokens (transformers 5 writes no "
                      "added_tokens_decoder); llama.cpp's SPM path, and so the GGUF, does not have it as a token")
_PHI3_RSTRIP = ("llama.cpp lets Phi-3's special tokens (but <s>, <unk>, <|endoftext|>) eat the whitespace "
                "after them, chosen by the model name; transformers keeps it")
KNOWN_TOKENIZER_DIFFERENCES: dict[tuple[str, int], str] = {
    ("phi3", 9): _PHI3_RSTRIP,
    **{(family, 1): _LEADING_SPACES for family in ("llama2", "mistral", "phi3")},
    **{(family, 8): _AFTER_SPECIAL for family in ("llama2", "mistral", "phi3")},
    ("gemma3", 8): _ADDED_OUTSIDE_SPM,
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(family: str, outtype: str = "f32") -> Path:
        if (family, outtype) not in cache:
            cache[family, outtype] = convert(HF / family, out / f"{family}-{outtype}.gguf", outtype).path
        return cache[family, outtype]

    return get


def reference(family: str):
    return np.load(HF / family / "reference.npz")


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_logits_match_transformers(converted, family):
    model, ref = Model(converted(family)), reference(family)
    n_prompts = sum(1 for k in ref.files if k.startswith("ids_"))
    for i in range(n_prompts):
        ids, want = ref[f"ids_{i}"], ref[f"logits_{i}"]
        got = model.logits(ids)
        assert got.shape == want.shape
        diff = float(np.abs(got - want).max())
        assert diff <= TOLERANCE, f"{family} prompt {i}: max abs diff {diff:.2e}"
        assert float(want.std()) > 20 * TOLERANCE  # the logits carry the model, not noise around zero


@pytest.mark.parametrize("outtype,tolerance", [("f16", 5e-3), ("q8_0", 5e-2)])
@pytest.mark.parametrize("family", FAMILIES)
def test_f16_and_q8_0_files_run_close_to_transformers(converted, family, outtype, tolerance):
    model, ref = Model(converted(family, outtype)), reference(family)
    got = model.logits(ref["ids_0"])
    assert float(np.abs(got - ref["logits_0"]).max()) <= tolerance


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_ids_match_transformers(converted, family):
    model, ref = Model(converted(family)), reference(family)
    strings = json.loads((HF / family / "tokenizer_strings.json").read_text(encoding="utf-8"))
    for i, text in enumerate(strings):
        if (family, i) in KNOWN_TOKENIZER_DIFFERENCES:
            continue
        assert model.tokenize(text) == ref[f"tok_{i}"].tolist(), f"{family}: {text!r}"


def test_outtypes_keep_vectors_f32_and_name_the_file_type(converted):
    from llamapy.gguf.reader import GGUFFile
    from llamapy.quants.types import BF16, F16, F32, Q8_0

    for outtype, matrix_type, file_type in (("f32", F32, 0), ("f16", F16, 1), ("bf16", BF16, 32), ("q8_0", Q8_0, 7)):
        g = GGUFFile(str(converted("llama2", outtype)))
        assert g.kv["general.file_type"] == file_type
        assert g.tensors["blk.0.attn_q.weight"].type_id == matrix_type
        assert g.tensors["blk.0.attn_norm.weight"].type_id == F32


def llamapy(*args):
    return subprocess.run([*LLAMAPY, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_convert_quantize_run_end_to_end(tmp_path):
    f16 = tmp_path / "tiny-f16.gguf"
    done = llamapy("convert", HF / "llama3", "--outfile", f16, "--outtype", "f16")
    assert done.returncode == 0, done.stderr
    assert "convert: " in done.stderr and "tokenizer BPE" in done.stderr
    q4 = tmp_path / "tiny-q4_0.gguf"
    assert llamapy("quantize", f16, q4, "Q4_0").returncode == 0
    run = llamapy("run", q4, "The quick brown fox", "-n", 8, "-c", 64, "--temp", 0)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_auto_outtype_follows_the_checkpoint(tmp_path):
    done = llamapy("convert", HF / "llama2", "--outfile", tmp_path)
    assert done.returncode == 0, done.stderr
    (written,) = tmp_path.glob("*.gguf")
    assert written.name.endswith("-BF16.gguf")  # the fixtures are stored in bfloat16


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture_is_one_line(tmp_path):
    folder = copy_checkpoint(HF / "llama2", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    line = one_line_error(llamapy("convert", folder))
    assert "FalconForCausalLM" in line and "LlamaForCausalLM" in line


def test_missing_tokenizer_is_one_line(tmp_path):
    folder = copy_checkpoint(HF / "llama2", tmp_path / "m")
    for name in ("tokenizer.model", "tokenizer.json"):
        (folder / name).unlink()
    assert "no tokenizer" in one_line_error(llamapy("convert", folder, "--outfile", tmp_path / "x.gguf"))
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def shard(src: Path, dst: Path) -> None:
    """The single-file checkpoint in src as two shards and an index in dst."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    raw = (src / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    names = sorted(header)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for part, part_names in parts.items():
        tensors = {}
        for name in part_names:
            info = header[name]
            start, end = info["data_offsets"]
            tensors[name] = (info["dtype"], tuple(info["shape"]), data[start:end])
            weight_map[name] = part
        write_safetensors(dst / part, tensors)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoint_converts_to_the_same_file(tmp_path, converted):
    shard(HF / "llama2", tmp_path / "sharded")
    out = convert(tmp_path / "sharded", tmp_path / "sharded.gguf", "f32").path
    from llamapy.gguf.reader import GGUFFile

    a, b = GGUFFile(str(out)), GGUFFile(str(converted("llama2")))
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        assert np.array_equal(a.raw(name), b.raw(name))


def test_missing_shard_is_one_line(tmp_path):
    shard(HF / "llama2", tmp_path / "sharded")
    (tmp_path / "sharded" / "model-00002-of-00002.safetensors").unlink()
    line = one_line_error(llamapy("convert", tmp_path / "sharded"))
    assert "model-00002-of-00002.safetensors" in line and "missing" in line

"""llamapy imatrix: what it sums, the llama.cpp GGUF layout it writes, and quantize --imatrix using it."""

import subprocess
import sys

import gguf
import numpy as np
import pytest
from conftest import model_path

from llamapy.gguf.reader import GGUFFile
from llamapy.imatrix import ImatrixCollector, load_imatrix, save_imatrix
from llamapy.quantize.model import quantize_model
from llamapy.quantize.tensors import quantize
from llamapy.quants import dequantize
from llamapy.quants.types import Q4_K

LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]


def test_collector_sums_squares_of_layer_products_only():
    rng = np.random.default_rng(0)
    c = ImatrixCollector()
    a, b = rng.standard_normal((20, 8)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)
    c("blk.0.attn_q.weight", a)
    c("blk.0.attn_q.weight", b)
    c("blk.0.attn_k.weight", a[:15])  # llama-imatrix skips products of fewer than 16 rows
    c("output.weight", a)  # and the output head
    assert list(c.sums) == ["blk.0.attn_q.weight"] and c.counts["blk.0.attn_q.weight"] == 36
    expected = np.zeros(8, np.float32)
    for row in np.concatenate([a, b]):
        expected += row * row
    assert np.array_equal(c.sums["blk.0.attn_q.weight"], expected)


def test_saved_in_llama_cpp_layout(tmp_path):
    c = ImatrixCollector({"blk.1.ffn_up.weight": np.full(4, 6.0, np.float32),
                          "blk.0.attn_v.weight": np.arange(4, dtype=np.float32)},
                         {"blk.1.ffn_up.weight": 3, "blk.0.attn_v.weight": 2})
    path = tmp_path / "imatrix.gguf"
    save_imatrix(path, c, ["calibration.txt"], 5, 512)
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["blk.0.attn_v.weight.in_sum2", "blk.0.attn_v.weight.counts",
                                                "blk.1.ffn_up.weight.in_sum2", "blk.1.ffn_up.weight.counts"]
    means, meta = load_imatrix(path)
    assert np.array_equal(means["blk.1.ffn_up.weight"], np.full(4, 2.0, np.float32))
    assert np.array_equal(means["blk.0.attn_v.weight"], np.arange(4, dtype=np.float32) / 2)
    assert meta == {"datasets": ["calibration.txt"], "chunk_count": 5, "chunk_size": 512}


def test_importance_lowers_the_weighted_error():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 512)) * rng.uniform(0.5, 2.0, 512)).astype(np.float32)
    importance = rng.uniform(0.0, 4.0, 512).astype(np.float32) ** 3
    plain = dequantize(quantize(x, Q4_K), Q4_K, 512)
    weighted = dequantize(quantize(x, Q4_K, importance), Q4_K, 512)
    assert (importance * (weighted - x) ** 2).sum() < (importance * (plain - x) ** 2).sum()


@pytest.fixture(scope="module")
def smollm2_imatrix(tmp_path_factory, reference_dir):
    path = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    result = subprocess.run([*LLAMAPY, "imatrix", "-m", str(model_path("smollm2")), "-f",
                             str(reference_dir / "ppl.txt"), "-o", str(path), "-c", "128", "--chunks", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return path


def test_imatrix_of_smollm2_feeds_quantize(smollm2_imatrix, tmp_path):
    means, meta = load_imatrix(smollm2_imatrix)
    assert len(means) == 30 * 7 and meta["chunk_count"] == 2 and meta["chunk_size"] == 128
    assert means["blk.0.ffn_down.weight"].shape == (1536,) and means["blk.3.attn_q.weight"].shape == (576,)
    out = quantize_model(model_path("smollm2"), tmp_path / "q.gguf", "Q4_0", allow_requantize=True,
                         imatrix=means, imatrix_info={"file": "imatrix.gguf", "datasets": meta["datasets"],
                                                      "entries": len(means), "chunks": meta["chunk_count"]})
    with GGUFFile(out.path) as g:
        # llama-quantize's guard for Q4_0 with an imatrix: ffn_down of the first n_layer/8 layers as Q4_1
        assert [g.tensors[f"blk.{i}.ffn_down.weight"].type_name for i in (0, 2, 3)] == ["Q4_1", "Q4_1", "Q4_0"]
        assert g.kv["quantize.imatrix.entries_count"] == 210 and g.kv["quantize.imatrix.chunks_count"] == 2

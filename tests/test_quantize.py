"""llamapy quantize against llama-quantize's own outputs (reference json: per-tensor type and sha256),
gguf-py's quantizer as an oracle where it has one, and the command's behaviour on bad input and Ctrl-C."""

import hashlib
import json
import signal
import subprocess
import sys

import gguf
import numpy as np
import pytest
from conftest import model_path

from llamapy.gguf.reader import GGUFFile
from llamapy.quantize.model import quantize_model
from llamapy.quantize.tensors import quantize

LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]
# Legacy types must match byte for byte; two K mixes check the _M/_S rules, use_more_bits and the
# 576-column fallback (Q2_K: 180 of 272 tensors fall back to Q4_0) as well as the K searches.
TYPES = ["Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q4_K_M", "Q2_K"]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, reference_dir):
    """Each type of TYPES written once for the whole module."""
    folder = tmp_path_factory.mktemp("quantized")
    return {t: quantize_model(model_path("smollm2"), folder / f"{t}.gguf", t, allow_requantize=True).path
            for t in TYPES}


def tensor_hashes(path):
    with GGUFFile(path) as g:
        return {name: (info.type_name, hashlib.sha256(g.raw(name).tobytes()).hexdigest())
                for name, info in g.tensors.items()}


@pytest.mark.parametrize("ftype", TYPES)
def test_tensors_equal_llama_quantize(quantized, reference_dir, ftype):
    ref = json.loads((reference_dir / "quantize" / f"{ftype}.json").read_text())
    ours = tensor_hashes(quantized[ftype])
    assert list(ours) == list(ref["tensors"])  # llama.cpp's tensor order
    for name, t in ref["tensors"].items():
        assert ours[name] == (t["type"], t["sha256"]), name
    with GGUFFile(quantized[ftype]) as g:
        assert g.kv["general.file_type"] == ref["general.file_type"]
        assert g.kv["general.quantization_version"] == 2


def test_whole_file_equals_llama_quantize(quantized, reference_dir):
    ref = json.loads((reference_dir / "quantize" / "Q8_0.json").read_text())
    data = quantized["Q8_0"].read_bytes()
    assert len(data) == ref["file_size"]
    assert hashlib.sha256(data).hexdigest() == ref["file_sha256"]


def test_outputs_read_with_gguf_py_and_generate(quantized):
    from llamapy.model import Model

    for path in quantized.values():
        reader = gguf.GGUFReader(path)
        assert len(reader.tensors) == 272
    text = "".join(step.text for step in Model(quantized["Q2_K"]).generate("The capital of France is",
                                                                          n_predict=4, temp=0.0))
    assert text.strip()


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16"])
def test_matches_gguf_py_quantizer(name):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((48, 256)) * rng.uniform(1e-3, 3.0, (48, 1))).astype(np.float32)
    x[3, :32] = 0.0  # an all-zero block
    x[5] = 0.5  # a constant row
    qtype = gguf.GGMLQuantizationType[name]
    expected = gguf.quants.quantize(x, qtype).view(np.uint8).reshape(48, -1)
    assert np.array_equal(quantize(x, int(qtype)), expected)


def test_iq4_nl_runs_in_the_engine():
    from llamapy.quants import dequantize, linear

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    packed = quantize(w, int(gguf.GGMLQuantizationType.IQ4_NL))
    decoded = dequantize(packed, int(gguf.GGMLQuantizationType.IQ4_NL), 128)
    assert np.abs(decoded - w).mean() < 0.1 * np.abs(w).mean()
    x = rng.standard_normal((3, 128)).astype(np.float32)
    y = linear(packed, int(gguf.GGMLQuantizationType.IQ4_NL), x)
    assert np.allclose(y, x @ decoded.T, rtol=0.05, atol=0.5)


def run(*args):
    return subprocess.run([*LLAMAPY, "quantize", *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *patterns):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for p in patterns:
        assert p in lines[0]


def test_unknown_type_lists_the_valid_ones(tmp_path):
    assert_one_line_error(run(model_path("smollm2"), tmp_path / "o.gguf", "Q7_X"), "Q7_X", "Q4_K_M", "IQ4_NL", "COPY")


def test_bad_inputs_give_one_line(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model at all, just words\n" * 10)
    assert_one_line_error(run(text, tmp_path / "a.gguf", "Q8_0"), "not a GGUF file")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model_path("smollm2").read_bytes()[: 40_000_000])
    assert_one_line_error(run(cut, tmp_path / "b.gguf", "Q8_0"), "truncated")
    assert_one_line_error(run(model_path("smollm2"), tmp_path / "c.gguf", "Q8_0"), "requantizing from type")
    assert not list(tmp_path.glob("[abc].gguf")) and not list(tmp_path.glob(".*tmp"))


def test_sigint_mid_way_leaves_no_output(tmp_path):
    out = tmp_path / "out.gguf"
    # Gemma to Q2_K on one thread: many seconds of work, so the signal lands mid-way on any machine
    # (SmolLM2 to Q4_K_M now finishes before it).
    cmd = [*LLAMAPY, "quantize", "--allow-requantize", model_path("gemma3"), out, "Q2_K", "1"]
    proc = subprocess.Popen(list(map(str, cmd)), stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the first tensor is done: the temporary file is being written
    assert "/" in first, first
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130
    assert list(tmp_path.iterdir()) == []


def _edge_blocks(n, count, seed):
    """`count` blocks of n values: ordinary ones at many scales and the corner cases of a search."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((count, n)) * rng.uniform(1e-6, 4.0, (count, 1))).astype(np.float32)
    x[0] = 0.0  # all zero
    x[1] = 0.75  # flat, positive
    x[2] = -0.5  # flat, negative
    x[3] = 0.0
    x[3, 5] = 1.0  # one value
    x[4] = np.abs(x[4])  # all positive: min clamped to 0
    x[5] = -np.abs(x[5])
    x[6] *= np.float32(1e-30)  # below GROUP_MAX_EPS
    x[7] = np.round(x[7] * 2) / 2  # ties
    x[8, ::2] = 0.0
    x[9] = rng.integers(-2, 3, n)
    return x


@pytest.mark.parametrize("weighted", [False, True])
def test_lane_searches_equal_the_scalar_searches(weighted):
    """The K-quant block searches run 16 blocks per vector (_qkx_lanes for Q4_K/Q5_K, _qx_lanes for
    Q6_K); every lane must give the scalar search's scale, min and L bit for bit, corner cases included."""
    from llamapy.quantize import _kernels as K

    f32 = np.float32
    rng = np.random.default_rng(11)
    for n, count, seed in ((32, 37, 1), (16, 41, 2)):
        x = _edge_blocks(n, count, seed)
        nbp = (count + 15) // 16 * 16
        xt = np.zeros((n, nbp), f32)
        xt[:, :count] = x.T
        if weighted:
            w = (rng.uniform(0, 2, (count, n)) ** 3).astype(f32)
            w[:, :3] = 0.0
        else:
            w = (x * x if n == 16 else np.abs(x) + np.sqrt((x * x).mean(1, keepdims=True))).astype(f32)
        wt = np.zeros((n, nbp), f32)
        wt[:, :count] = w.T
        scale, l_isc = np.empty(nbp, f32), np.empty(nbp, f32)
        if n == 16:  # Q6_K: make_qx_quants(16, 32, ...)
            K._qx_lanes(nbp, 16, 32, xt, wt, scale, l_isc, np.empty((6, nbp), f32))
            for b in range(count):
                L = np.empty(16, np.int32)
                s = K.make_qx_quants(16, 32, x[b], L, w[b])
                assert f32(s).tobytes() == scale[b].tobytes(), b
                lane_L = np.zeros(16) if l_isc[b] == 0 else 32 + np.clip(np.rint(l_isc[b] * x[b]), -32, 31)
                assert np.array_equal(lane_L, L), b
            continue
        for nmax, rmin, rdelta, nstep in ((15, -1.0, 0.1, 20), (31, -0.5, 0.1, 15), (15, -0.9, 0.05, 36)):
            the_min, l_mn = np.empty(nbp, f32), np.empty(nbp, f32)
            K._qkx_lanes(nbp, 32, nmax, xt, wt, f32(rmin), f32(rdelta), nstep, False, scale, the_min, l_isc, l_mn,
                         np.empty((14, nbp), f32), np.empty((32, nbp), np.int32))
            for b in range(count):
                L, Laux = np.empty(32, np.int32), np.empty(32, np.int32)
                s, m = K.make_qkx_quants(32, nmax, x[b], w[b], L, Laux, f32(rmin), f32(rdelta), nstep, False)
                assert (f32(s).tobytes(), f32(m).tobytes()) == (scale[b].tobytes(), the_min[b].tobytes()), (nmax, b)
                lane_L = np.clip(np.rint(l_isc[b] * (x[b] - l_mn[b])), 0, nmax)
                assert np.array_equal(lane_L, L), (nmax, b)

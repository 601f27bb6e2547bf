"""The performance parameters (llamapy.options.RunOptions; -tb -ub -ctk -ctv -fa --mlock --no-mmap -ngl):
what they may change and what they must not."""

import json
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
from conftest import REFERENCE, model_path

from llamapy.kv_cache import KVCache
from llamapy.model import Model
from llamapy.options import RunOptions
from llamapy.perplexity import perplexity, tokenize_text

PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def smollm2():
    return model_path("smollm2")


def _last_logits(path, **options):
    m = Model(path, RunOptions(**options))
    return m.forward(m.tokenize(PROMPT), m.new_cache(64))[0]


def test_cache_bytes_per_type():
    sizes = {t: KVCache(2, 1024, 3, 64, 64, type_k=t, type_v=t).nbytes() for t in ("f32", "f16", "q8_0", "q4_0")}
    assert sizes["f16"] * 2 == sizes["f32"]
    # ggml's blocks: q8_0 32 quants + an f16 scale (34 bytes per 32 values, f16 64), q4_0 16 + 2.
    assert sizes["q8_0"] * 64 == sizes["f16"] * 34
    assert sizes["q4_0"] * 64 == sizes["f16"] * 18


def test_quantized_cache_moves_perplexity_less_than_half_a_percent(smollm2):
    """First 8 chunks at -c 128 against llama.cpp's running value there (f16 cache)."""
    text = (REFERENCE / "ppl.txt").read_text()
    reference = json.loads((REFERENCE / "perplexity.json").read_text())["smollm2"]["c128"]["running"][7]
    m = Model(smollm2, RunOptions(cache_type_k="q8_0", cache_type_v="q8_0"))
    # The whole text's first pass (16 chunks side by side), as llama.cpp's run that made the reference;
    # test_perplexity shows the f16 cache gives llama.cpp's figures to the last digit.
    ppl = list(islice(perplexity(m, tokenize_text(m, text), 128), 8))[-1].running_ppl
    assert abs(ppl / reference - 1) < 0.005, (ppl, reference)


def test_options_that_must_not_change_logits(smollm2):
    base = _last_logits(smollm2)
    assert np.array_equal(base, _last_logits(smollm2, use_mmap=False))
    assert np.array_equal(base, _last_logits(smollm2, use_mlock=True))
    assert np.array_equal(base, _last_logits(smollm2, threads=1, threads_batch=2))


def test_plain_attention_agrees_with_flash(smollm2):
    on, off = _last_logits(smollm2, flash_attn="on"), _last_logits(smollm2, flash_attn="off")
    assert np.argmax(on) == np.argmax(off)
    p, q = (np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in (on.astype(np.float64), off.astype(np.float64)))
    assert float(np.sum(p * np.log(p / q))) < 0.01  # the plain graph rounds differently, not more


@pytest.mark.parametrize("bad, message", [
    (["-ctk", "q9"], "unknown KV cache type"),
    (["-fa", "off", "-ctv", "q8_0"], "needs flash attention"),
    (["-fa", "maybe"], "-fa takes on, off or auto"),
    (["-tb", "0"], "-tb must be at least 1"),
    (["-ub", "0"], "-ub must be at least 1"),
])
def test_bad_values_are_one_line(bad, message, smollm2):
    r = subprocess.run([sys.executable, "-m", "llamapy.commands.main", "simple", "-m", str(smollm2), "-n", "1",
                        *bad, "Hi"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ngl_is_accepted_with_one_line(smollm2):
    r = subprocess.run([sys.executable, "-m", "llamapy.commands.main", "simple", "-m", str(smollm2), "-n", "2",
                        "-ngl", "99", "-ctk", "q8_0", "-ctv", "q8_0", "-tb", "1", "-ub", "8", "--no-mmap", "Hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no GPU backend" in r.stderr


@pytest.mark.parametrize("n, pos0, heads, kv_heads, dim, window", [
    (64, 0, 4, 1, 256, 0), (100, 37, 9, 3, 64, 0), (200, 300, 4, 1, 256, 512), (70, 10, 4, 1, 256, 32)])
def test_tiled_attention_is_softmax_attention(n, pos0, heads, kv_heads, dim, window):
    """The key-parallel tiled kernel (prompts of 64+ tokens) against plain float64 attention."""
    from llamapy.kernels.attention import attention

    rng = np.random.default_rng(n)
    q = rng.standard_normal((n, heads, dim)).astype(np.float32)
    k, v = (rng.standard_normal((pos0 + n, kv_heads, dim)).astype(np.float32) for _ in range(2))
    none = np.zeros((1, 1, 1), np.float32)
    out = np.empty((n, heads, dim), np.float32)
    attention(q, k, none, v, none, pos0, window, np.float32(dim ** -0.5), out)
    for t in (0, n // 2, n - 1):
        pos = pos0 + t
        keys = np.arange(max(0, pos - window + 1) if window else 0, pos + 1)
        for h in range(heads):
            kh = h // (heads // kv_heads)
            s = (k[keys, kh].astype(np.float64) @ q[t, h]) * dim ** -0.5
            w = np.exp(s - s.max())
            expected = (w / w.sum()) @ v[keys, kh]
            assert np.allclose(out[t, h], expected, atol=2e-5), (t, h)

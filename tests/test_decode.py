"""One token through a block in one numba call (kernels/decode.py) gives the bits of the
block-by-block path, for every family (biases, q/k norms, sliding windows, GeGLU, fused weights)
and every KV cache type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import model_path

from llamapy.convert import convert
from llamapy.model import Model
from llamapy.models import blocks
from llamapy.options import RunOptions

HF = Path(__file__).parent / "data" / "hf"
FAMILIES = sorted(p.name for p in HF.iterdir() if (p / "config.json").is_file())


def _decode(model, fused: bool, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(blocks, "fusable", lambda *weights: False)
        cache = model.new_cache(64)
        rows = [model.forward([1, 5, 9, 3, 7, 2, 8, 4, 6, 11], cache)]  # past the tiny Gemma's window of 8
        rows += [model.forward([token], cache) for token in (17, 3, 25, 8)]
        return np.concatenate(rows)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("decode")
    return {family: convert(HF / family, out / f"{family}.gguf", "q8_0").path for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_token_equals_block_by_block(converted, family, monkeypatch):
    model = Model(converted[family])
    np.testing.assert_array_equal(_decode(model, True, monkeypatch), _decode(model, False, monkeypatch))


@pytest.mark.parametrize("cache_type", ["f32", "f16", "q8_0", "q4_0"])
def test_fused_token_writes_every_cache_type(cache_type, monkeypatch):
    model = Model(model_path("smollm2"), RunOptions(cache_type_k=cache_type, cache_type_v=cache_type))
    np.testing.assert_array_equal(_decode(model, True, monkeypatch), _decode(model, False, monkeypatch))


def test_fused_path_is_taken(converted, monkeypatch):
    """The comparison above means something only if the one-call path really runs."""
    calls = []
    real = blocks.attention_token
    monkeypatch.setattr(blocks, "attention_token", lambda *a: calls.append(1) or real(*a))
    model = Model(converted["llama3"])
    cache = model.new_cache(16)
    model.forward([1, 2], cache)
    model.forward([3], cache)
    assert calls == [1] * model.config.n_layer

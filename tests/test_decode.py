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
            patch.setattr(blocks, "ONE_CALL_STEPS", False)
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
    real = blocks.attention_kernels

    def counted(*types):
        kernels = real(*types)
        return kernels._replace(step=lambda *a: calls.append(1) or kernels.step(*a))

    monkeypatch.setattr(blocks, "attention_kernels", counted)
    model = Model(converted["llama3"])
    cache = model.new_cache(16)
    model.forward([1, 2], cache)
    model.forward([3], cache)
    assert calls == [1] * model.config.n_layer


def _pooled_steps(model, prompts, follow, pooled: bool):
    caches = model.new_caches(len(prompts), 64) if pooled else [model.new_cache(64) for _ in prompts]
    model.net.forward_batch([np.asarray(p) for p in prompts], caches)
    return [model.net.forward_batch([np.asarray([f[step]]) for f in follow], caches) for step in range(len(follow[0]))]


def _alone(model, prompt, extra):
    cache = model.new_cache(64)
    model.forward(prompt, cache)
    return [model.forward([t], cache)[0] for t in extra]


PROMPTS = [[1, 5, 9, 3, 7, 2, 8, 4, 6, 11], [4, 2], [7, 7, 7, 1, 3]]
FOLLOW = [[17, 3, 25], [8, 9, 10], [2, 30, 5]]


def _check_steps(model):
    alone = [_alone(model, p, f) for p, f in zip(PROMPTS, FOLLOW, strict=True)]
    for pooled in (True, False):
        for step, logits in enumerate(_pooled_steps(model, PROMPTS, FOLLOW, pooled)):
            for i in range(len(PROMPTS)):
                np.testing.assert_array_equal(logits[i], alone[i][step], err_msg=f"pooled={pooled} seq {i} step {step}")


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_step_of_several_sequences_equals_each_alone(converted, family):
    """One call per block for every sequence of the step (a pool), and for separate caches (the
    feed-forward in one call, attention per sequence): each row is its sequence's own."""
    _check_steps(Model(converted[family]))


def test_decode_step_with_k_quants_equals_each_alone():
    """Gemma 3's Q4_K / Q6_K / Q5_0 weights: the gemv arithmetic for every one-token row."""
    _check_steps(Model(model_path("gemma3")))


def test_pooled_caches_are_views_of_one_pool():
    model = Model(model_path("smollm2"))
    caches = model.new_caches(3, 32)
    assert all(c.pool is caches[0].pool for c in caches) and [c.slot for c in caches] == [0, 1, 2]
    model.forward([1, 2, 3], caches[1])
    kc = caches[1].pool_arrays(0)[0]
    assert kc.shape[:2] == (3, 32) and kc[1, :3].any() and not kc[0].any() and not kc[2].any()

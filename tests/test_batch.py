"""Several sequences in one forward pass, and pipeline stages over layer ranges: every row must equal
what the same sequence gives alone through the whole model (the property batching servers and the
distributed pipeline rely on)."""

import numpy as np
import pytest
from conftest import model_path

from llamapy.model import Model
from llamapy.models.batch import Batch


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request):
    return Model(model_path(request.param))


def _alone(model, prompt, extra):
    cache = model.new_cache(64)
    model.forward(prompt, cache)
    return [model.forward([t], cache)[0] for t in extra]


def test_batched_decode_equals_each_sequence_alone(model):
    prompts = [model.tokenize(t) for t in ("The capital of France is", "def fib(n):", "1, 2, 3, 4, 5, 6, 7,",
                                            "Once upon a time", "Hi", "What is", "A B C", "x = 1", "Dear Sir")]
    follow = [[42, 7], [13, 99], [5, 6], [300, 301], [11, 12], [1, 2], [9, 9], [77, 78], [500, 501]]
    expected = [_alone(model, p, f) for p, f in zip(prompts, follow, strict=True)]
    caches = [model.new_cache(64) for _ in prompts]
    # Prompts of different lengths prefilled together (chunks of ≥ 8 and < 8 tokens in one pass).
    model.net.forward_batch([np.asarray(p) for p in prompts], caches)
    for step in range(2):
        logits = model.net.forward_batch([np.asarray([f[step]]) for f in follow], caches)
        for i in range(len(prompts)):
            assert np.array_equal(logits[i], expected[i][step]), (i, step)
    assert [c.n_past for c in caches] == [len(p) + 2 for p in prompts]


def test_prefill_batched_with_decodes_equals_alone(model):
    """A new prompt's chunk beside decode steps of other sequences (continuous batching)."""
    long_prompt = model.tokenize("The quick brown fox jumps over the lazy dog, and then it runs away.")
    alone = model.new_cache(64)
    expected = model.forward(long_prompt, alone)[0]
    other = model.new_cache(64)
    model.forward(model.tokenize("Hello"), other)
    other_next = _alone(model, model.tokenize("Hello"), [17])[0]
    fresh = model.new_cache(64)
    logits = model.net.forward_batch([np.asarray([17]), np.asarray(long_prompt)], [other, fresh])
    assert np.array_equal(logits[0], other_next)
    assert np.array_equal(logits[1], expected)


def test_layer_ranges_compose_to_the_whole_model(model):
    net, ids = model.net, np.asarray(model.tokenize("Layers split across two stages"))
    whole = model.forward(ids, model.new_cache(32), all_logits=True)
    n_layer = model.config.n_layer
    stages = [range(0, n_layer // 2), range(n_layer // 2, n_layer)]
    caches = [net.new_cache(32, layers=r) for r in stages]
    x = net.embed(ids)
    for r, cache in zip(stages, caches, strict=True):
        batch = Batch.single(cache, len(ids))
        x = net.run_layers(x, batch, r)
        batch.commit()
    assert np.array_equal(net.head(x), whole)
    assert len(caches[0].k) == n_layer // 2 and caches[1].first_layer == n_layer // 2

"""Our logits against llama.cpp's, on the reference prompts of both shipped models.

logits.npz holds llama.cpp's 64 largest logits and the full log-sum-exp per position; we compare
top-1 agreement and KL(llama.cpp || llamapy) over its top 64 (see shared/reference/README.md), and,
since our arithmetic is llama.cpp's own, those 64 logits bit for bit.
"""

import json

import numpy as np
import pytest
from conftest import model_path

from llamapy import load

PROMPTS = ["p0", "p1", "p2", "p3"]
MAX_MEAN_KL = 0.01
MIN_TOP1 = 0.99


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def loaded(request):
    return request.param, load(model_path(request.param))


def log_softmax_at(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True).astype(np.float64)
    lse = np.log(np.exp(logits - top).sum(axis=1, keepdims=True)) + top
    return np.take_along_axis(logits, ids, axis=1) - lse


def compare(model, ref, prompt: str, n_batch: int = 512):
    """Per-position KL and top-1 agreement, in batches as llama.cpp's ubatches (512)."""
    ids = ref[f"{prompt}_ids"]
    top_ids, top_logits, ref_lse = ref[f"{prompt}_top_ids"], ref[f"{prompt}_top_logits"], ref[f"{prompt}_logsumexp"]
    cache = model.new_cache(len(ids))
    kls, agree, unequal = [], [], 0
    for start in range(0, len(ids), n_batch):
        logits = model.forward(ids[start:start + n_batch], cache, all_logits=True)
        rows = slice(start, start + len(logits))
        logp_ref = top_logits[rows] - ref_lse[rows, None]
        logp_ours = log_softmax_at(logits, top_ids[rows])
        kls.append((np.exp(logp_ref) * (logp_ref - logp_ours)).sum(axis=1))
        agree.append(logits.argmax(axis=1) == top_ids[rows, 0])
        unequal += int((np.take_along_axis(logits, top_ids[rows], axis=1) != top_logits[rows]).sum())
    return np.concatenate(kls), np.concatenate(agree), unequal


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_llama_cpp(loaded, reference_dir, prompt):
    name, model = loaded
    ref = np.load(reference_dir / name / "logits.npz")
    assert model.tokenize(str(ref[f"{prompt}_text"])) == ref[f"{prompt}_ids"].tolist()
    kl, agree, unequal = compare(model, ref, prompt)
    assert agree.mean() >= MIN_TOP1, f"{name} {prompt}: top-1 agrees at {agree.mean():.3f} of positions"
    assert kl.mean() <= MAX_MEAN_KL, f"{name} {prompt}: mean KL {kl.mean():.5f}"
    assert unequal == 0, f"{name} {prompt}: {unequal} of llama.cpp's top-64 logits differ in some bit"


def test_greedy_matches_llama_simple(loaded, reference_dir):
    """llama-simple -n 32 (greedy): the same continuation, token for token."""
    name, model = loaded
    for line in (reference_dir / name / "greedy.jsonl").read_text().splitlines():
        case = json.loads(line)
        text = "".join(s.text for s in model.generate(case["prompt"], n_predict=case["n_predict"], temp=0.0))
        assert text == case["continuation"], f"{name}: {case['prompt']!r}"

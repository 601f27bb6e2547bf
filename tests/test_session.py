"""Session: a cache that lives across calls. Reused prefixes, trims and explicit positions must give the
logits llama.cpp gives for the whole sequence evaluated at once (shared/reference/*/logits.npz)."""

import json

import numpy as np
import pytest
from conftest import model_path

from llamapy import load
from llamapy.chat import prompt_tokens
from llamapy.generate import StopStrings
from llamapy.session import common_prefix

MAX_KL = 0.01


@pytest.fixture(scope="module")
def model():
    return load(model_path("smollm2"))


@pytest.fixture(scope="module")
def ref(reference_dir):
    return np.load(reference_dir / "smollm2" / "logits.npz")


def kl_at(ref, prompt: str, position: int, logits: np.ndarray) -> float:
    """KL(llama.cpp || ours) over llama.cpp's top 64 at one position."""
    ids = ref[f"{prompt}_top_ids"][position]
    logp_ref = ref[f"{prompt}_top_logits"][position] - ref[f"{prompt}_logsumexp"][position]
    logits = logits.astype(np.float64)
    lse = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
    return float((np.exp(logp_ref) * (logp_ref - (logits[ids] - lse))).sum())


def assert_matches(ref, prompt, position, logits):
    assert int(np.argmax(logits)) == int(ref[f"{prompt}_top_ids"][position, 0])
    assert kl_at(ref, prompt, position, logits) <= MAX_KL


def test_prefix_reuse_and_trim_give_llama_cpp_logits(model, ref):
    ids = ref["p3_ids"].tolist()[:240]
    session = model.session(512)
    first = session.prefill(ids[:150])
    assert (first.n_reused, first.n_evaluated) == (0, 150)
    assert_matches(ref, "p3", 149, first.logits)

    full = session.prefill(ids)
    assert (full.n_reused, full.n_evaluated) == (150, len(ids) - 150)
    assert session.tokens == ids and session.cache.n_past == len(ids)
    assert_matches(ref, "p3", len(ids) - 1, full.logits)

    session.trim(80)
    assert session.n_past == 80 and session.cache.n_past == 80
    again = session.prefill(ids[:200])
    assert (again.n_reused, again.n_evaluated) == (80, 120)
    assert_matches(ref, "p3", 199, again.logits)


def test_identical_prompt_reevaluates_only_its_last_token(model, ref):
    ids = ref["p1_ids"].tolist()
    session = model.session(64)
    session.prefill(ids)
    same = session.prefill(ids)
    assert (same.n_reused, same.n_evaluated) == (len(ids) - 1, 1)
    assert_matches(ref, "p1", len(ids) - 1, same.logits)


def test_feed_at_explicit_positions(model, ref):
    ids = ref["p1_ids"].tolist()
    session = model.session(64)
    session.feed(ids[:10])
    session.feed([0, 0, 0])  # wrong tokens at 10..12 …
    logits = session.feed(ids[10:], pos=10)  # … replaced by evaluating from position 10
    assert session.tokens == ids
    assert_matches(ref, "p1", len(ids) - 1, logits)
    with pytest.raises(ValueError):
        session.feed(ids, pos=len(ids) + 1)


def test_generate_keeps_its_session_and_matches_llama_simple(model, reference_dir):
    case = json.loads((reference_dir / "smollm2" / "greedy.jsonl").read_text().splitlines()[0])
    ids = model.tokenize(case["prompt"])
    for call in range(2):
        steps = list(model.generate(ids, n_predict=12, temp=0.0))
        text = "".join(s.text for s in steps)
        assert len(text) > 10 and case["continuation"].startswith(text)
        timings = steps[-1].timings
        # The second call finds prompt + output cached: only the prompt's last token is evaluated.
        assert (timings.n_reused, timings.n_prompt) == ((0, len(ids)) if call == 0 else (len(ids) - 1, 1))


def test_stop_string_ends_the_reply_and_never_shows_a_partial_one(model, reference_dir):
    case = json.loads((reference_dir / "smollm2" / "greedy.jsonl").read_text().splitlines()[0])
    expected = case["continuation"][:case["continuation"].index("United")]
    steps = list(model.generate(case["prompt"], n_predict=32, temp=0.0, stop=["United States"]))
    text = "".join(s.text for s in steps)
    assert text == expected and steps[-1].finish == "stop"
    shown = ""
    for step in steps:
        shown += step.text
        assert "Unit" not in shown


def test_stop_strings_hold_back_what_may_still_match():
    stops = StopStrings(["</end>", "STOP"])
    assert stops.feed("Hello </e") == ("Hello ", False)
    assert stops.feed("nx") == ("</enx", False)
    assert stops.feed(" ST") == (" ", False)
    assert stops.feed("OP and more") == ("", True)
    stops = StopStrings(["abc"])
    assert stops.feed("xxab") == ("xx", False)
    assert stops.flush() == "ab"


def test_chatml_rendering_gives_llama_cpp_chat_tokens(model, ref):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 17 times 3?"}]
    fmt = model.chat_format("chatml")
    assert fmt.render(messages) == str(ref["p2_text"])
    assert prompt_tokens(model, fmt, fmt.render(messages)) == ref["p2_ids"].tolist()


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2

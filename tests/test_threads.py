"""The thread governor: with N threads collapsed by load it settles on one, and it comes back."""

from llamapy.threads import MAX_PROBE_EVERY, PROBE_PASSES, ThreadGovernor


def _run(governor, seconds_for, passes):
    used = []
    for _ in range(passes):
        n = governor.choose()
        used.append(n)
        governor.record(n, seconds_for(n))
    return used


def test_keeps_n_threads_when_they_are_faster():
    g = ThreadGovernor(2)
    used = _run(g, lambda n: 0.010 if n == 2 else 0.018, 2000)
    assert g.current == 2
    assert used.count(1) < 0.02 * len(used)  # probes back off when they lose


def test_settles_on_one_thread_when_n_collapse():
    g = ThreadGovernor(2)
    used = _run(g, lambda n: 0.500 if n == 2 else 0.012, 3000)
    assert g.current == 1
    assert used[-MAX_PROBE_EVERY // 2:].count(2) <= 2 * PROBE_PASSES  # collapsed passes get rare


def test_returns_to_n_threads_when_the_load_goes():
    g = ThreadGovernor(2)
    _run(g, lambda n: 0.500 if n == 2 else 0.012, 200)
    assert g.current == 1
    _run(g, lambda n: 0.006 if n == 2 else 0.012, 5000)
    assert g.current == 2


def test_one_thread_is_left_alone():
    g = ThreadGovernor(1)
    assert set(_run(g, lambda n: 0.01, 100)) == {1}

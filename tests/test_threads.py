"""The thread governor: with N threads collapsed by load it settles on one, and it comes back."""

import os
import subprocess
import sys
import time

import pytest

from llamapy.threads import LOAD_EVERY, MAX_PROBE_EVERY, PROBE_PASSES, FreeCores, ThreadGovernor


def _timed(threads):
    """A governor that judges by pass times alone (no reading of /proc)."""
    return ThreadGovernor(threads, free_cores=lambda: None)


def _run(governor, seconds_for, passes):
    used = []
    for _ in range(passes):
        n = governor.choose()
        used.append(n)
        governor.record(n, seconds_for(n))
    return used


def test_keeps_n_threads_when_they_are_faster():
    g = _timed(2)
    used = _run(g, lambda n: 0.010 if n == 2 else 0.018, 2000)
    assert g.current == 2
    assert used.count(1) < 0.02 * len(used)  # probes back off when they lose


def test_settles_on_one_thread_when_n_collapse():
    g = _timed(2)
    used = _run(g, lambda n: 0.500 if n == 2 else 0.012, 3000)
    assert g.current == 1
    assert used[-MAX_PROBE_EVERY // 2:].count(2) <= 2 * PROBE_PASSES  # collapsed passes get rare


def test_returns_to_n_threads_when_the_load_goes():
    g = _timed(2)
    _run(g, lambda n: 0.500 if n == 2 else 0.012, 200)
    assert g.current == 1
    _run(g, lambda n: 0.006 if n == 2 else 0.012, 5000)
    assert g.current == 2


def test_one_thread_is_left_alone():
    g = _timed(1)
    assert set(_run(g, lambda n: 0.01, 100)) == {1}


def test_no_n_thread_pass_while_other_processes_hold_a_core():
    free = [0.9]
    g = ThreadGovernor(2, free_cores=lambda: free[0])
    assert set(_run(g, lambda n: 0.006 if n == 2 else 0.012, 500)) == {1}
    free[0] = 2.0  # the load went: N threads are tried at once, and kept when faster
    used = _run(g, lambda n: 0.006 if n == 2 else 0.012, 50)
    assert used[0] == 2 and g.current == 2


@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(os.sched_getaffinity(0)) < 2, reason="reads Linux /proc")
def test_free_cores_sees_a_busy_process():
    cores = len(os.sched_getaffinity(0))
    reading = FreeCores()
    time.sleep(2 * LOAD_EVERY)
    idle = reading()
    assert idle is not None and 0 <= idle <= cores + 0.05
    cpu = min(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        reading()  # starts an interval with the loop already running
        time.sleep(0.5)
        loaded = reading()
    finally:
        busy.kill()
        busy.wait()
    assert loaded is not None and loaded <= cores - 0.7, (idle, loaded)

"""Threads under load: generation never slower with -t N than with one thread.

A single-token pass is a few hundred short parallel regions. When another process holds one of the
cores, the worker thread that shares it is descheduled for whole time slices and every region waits
for it: -t 2 then ran below 10 t/s where -t 1 ran at 80. numba's threading layers cannot hand a
descheduled thread's share to the others, so the choice is made one level up: the governor times
the passes, keeps using the faster of N threads and one, and now and then tries the other again,
since load comes and goes.
"""

from __future__ import annotations

from collections import deque
from statistics import median

FIRST_PROBE = 2  # passes at N threads before the first try of one
PROBE_EVERY = 64  # passes between tries after a switch
MAX_PROBE_EVERY = 4096  # a try that loses doubles the wait up to this: a collapsed pass is costly
PROBE_PASSES = 2  # passes each try times (the best of them counts: a switch's first pass pays a wake-up)
WINDOW = 8  # recent passes at the count in use, whose median a try must beat
MARGIN = 1.1  # switch only when the other count is at least this much faster


class ThreadGovernor:
    """Picks the thread count of each single-token pass: `threads` or 1, whichever measures faster."""

    def __init__(self, threads: int):
        self.threads = threads
        self.current = threads
        self._times = {threads: deque(maxlen=WINDOW), 1: deque(maxlen=WINDOW)}
        self._since_probe = 0
        self._probe_every = FIRST_PROBE
        self._probing = 0

    def choose(self) -> int:
        if self.threads <= 1:
            return self.threads
        if self._probing == 0 and self._since_probe >= self._probe_every:
            self._probing, self._since_probe = PROBE_PASSES, 0
            self._times[self._other()].clear()  # a try is judged on its own passes, not on old ones
        return self._other() if self._probing else self.current

    def record(self, n_threads: int, seconds: float) -> None:
        if self.threads <= 1:
            return
        self._times[n_threads].append(seconds)
        if self._probing:
            self._probing -= 1
            if self._probing == 0:
                self._decide()
        else:
            self._since_probe += 1

    def _other(self) -> int:
        return 1 if self.current == self.threads else self.threads

    def _decide(self) -> None:
        mine, theirs = self._times[self.current], self._times[self._other()]
        if mine and theirs and min(theirs) * MARGIN < median(mine):
            self.current = self._other()
            self._probe_every = PROBE_EVERY
        else:
            self._probe_every = min(max(2 * self._probe_every, PROBE_EVERY), MAX_PROBE_EVERY)

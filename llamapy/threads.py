"""Threads under load: generation never slower with -t N than with one thread.

A single-token pass is a few hundred short parallel regions. When another process holds one of the
cores, the worker thread that shares it is descheduled for whole time slices and every region waits
for it: -t 2 then ran below 10 t/s where -t 1 ran at 80. numba's threading layers cannot hand a
descheduled thread's share to the others, so the choice is made one level up: the governor times
the passes, keeps using the faster of N threads and one, and now and then tries the other again,
since load comes and goes.

Trying N threads on a loaded core is itself costly: one collapsed pass took 0.1-0.9 s, 7-70 passes
at one thread (a busy loop on one of 2 cores). So on Linux the governor also reads how much of its
cores other processes used lately (/proc/stat less our own /proc/self/stat time): while they leave
fewer than N cores free, it runs one thread and tries no more N-thread passes.
"""

from __future__ import annotations

import os
import time
from collections import deque
from statistics import median

FIRST_PROBE = 8  # passes at N threads before the first try of one (the first ones pay wake-ups)
PROBE_EVERY = 64  # passes between tries after a switch
MAX_PROBE_EVERY = 4096  # a try that loses doubles the wait up to this: a collapsed pass is costly
PROBE_PASSES = 2  # passes each try times (the best of them counts: a switch's first pass pays a wake-up)
WINDOW = 8  # recent passes at the count in use, whose median a try must beat
MARGIN = 1.1  # switch only when the other count is at least this much faster
LOAD_EVERY = 0.1  # seconds between readings of /proc (it counts CPU time in 10 ms ticks)
FREE_MARGIN = 0.5  # N threads need N - FREE_MARGIN of their cores left free by other processes


class FreeCores:
    """How many of the CPUs this process may run on other processes left free lately: their count
    less the busy time of those CPUs (/proc/stat) that was not ours (/proc/self/stat), over the
    last LOAD_EVERY seconds or more. None where /proc cannot tell (not Linux) or before a reading."""

    def __init__(self):
        try:
            self._cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)}
        except (AttributeError, OSError):
            self._cpus = set()
        self._last = self._read()
        self._value: float | None = None

    def __call__(self) -> float | None:
        last = self._last
        if last is not None and time.monotonic() - last[0] < LOAD_EVERY:
            return self._value
        now = self._read()
        if now is not None and last is not None:
            seconds, busy, ours = (a - b for a, b in zip(now, last, strict=True))
            self._value = len(self._cpus) - max(0.0, busy - ours) / seconds
        self._last = now
        return self._value

    def _read(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy seconds of our CPUs, our own CPU seconds)."""
        if not self._cpus:
            return None
        try:
            tick = os.sysconf("SC_CLK_TCK")
            busy = 0
            with open("/proc/stat") as f:
                for line in f:
                    name, *fields = line.split()
                    if name in self._cpus:
                        values = [int(v) for v in fields[:8]]
                        busy += sum(values) - values[3] - values[4]  # less idle and iowait
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ours = int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy / tick, ours / tick


# Read from import on, so that a model's first decode pass already finds a reading.
FREE_CORES = FreeCores()


class ThreadGovernor:
    """Picks the thread count of each single-token pass: `threads` or 1, whichever measures faster."""

    def __init__(self, threads: int, free_cores=FREE_CORES):
        self.threads = threads
        self.current = threads
        self._free_cores = free_cores  # () -> cores left free by other processes, or None
        self._crowded = False
        self._times = {threads: deque(maxlen=WINDOW), 1: deque(maxlen=WINDOW)}
        self._since_probe = 0
        self._probe_every = FIRST_PROBE
        self._probing = 0

    def choose(self) -> int:
        if self.threads <= 1:
            return self.threads
        self._read_load()
        if self._crowded:
            return 1
        if self._probing == 0 and self._since_probe >= self._probe_every:
            self._probing, self._since_probe = PROBE_PASSES, 0
            self._times[self._other()].clear()  # a try is judged on its own passes, not on old ones
        return self._other() if self._probing else self.current

    def record(self, n_threads: int, seconds: float) -> None:
        if self.threads <= 1 or self._crowded:
            return
        self._times[n_threads].append(seconds)
        if self._probing:
            self._probing -= 1
            if self._probing == 0:
                self._decide()
        else:
            self._since_probe += 1

    def _read_load(self) -> None:
        free = self._free_cores()
        crowded = free is not None and free < self.threads - FREE_MARGIN
        if self._crowded and not crowded and self.current != self.threads:
            self._since_probe = self._probe_every  # the load went: try N threads at the next pass
        self._crowded = crowded

    def _other(self) -> int:
        return 1 if self.current == self.threads else self.threads

    def _decide(self) -> None:
        mine, theirs = self._times[self.current], self._times[self._other()]
        if mine and theirs and min(theirs) * MARGIN < median(mine):
            self.current = self._other()
            self._probe_every = PROBE_EVERY
        else:
            self._probe_every = min(max(2 * self._probe_every, PROBE_EVERY), MAX_PROBE_EVERY)

"""Decoding GGUF string arrays (vocabularies, merges) in bulk.

A vocabulary is a quarter of a million length-prefixed strings; decoding them one by one in Python is
most of the time it takes to open a model. Here numba walks the length prefixes, numpy cuts them out
leaving one NUL between strings, and a single decode and split makes the list.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _string_starts(buf, pos, count):
    """Start of each string's bytes (after its 8-byte length), and the end of the last; -1 where the
    array runs past the buffer."""
    starts = np.empty(count, np.int64)
    size = buf.shape[0]
    for i in range(count):
        if pos + 8 > size:
            return starts, np.int64(-1)
        n = np.uint64(0)
        for b in range(8):
            n |= np.uint64(buf[pos + b]) << np.uint64(8 * b)
        pos += 8
        if n > np.uint64(size - pos):
            return starts, np.int64(-1)
        starts[i] = pos
        pos += np.int64(n)
    return starts, np.int64(pos)


def read_string_array(buf: np.ndarray, pos: int, count: int) -> tuple[list[str] | None, int]:
    """`count` strings from uint8 `buf` at `pos`: (strings, end), or (None, -1) when truncated."""
    if count == 0:
        return [], pos
    starts, end = _string_starts(buf, pos, count)
    if end < 0:
        return None, -1
    region = buf[pos:end].copy()
    prefixes = starts - 8 - pos
    # Each 8-byte length prefix becomes one NUL separator.
    drop = (prefixes[:, None] + np.arange(1, 8)).ravel()
    region[prefixes] = 0
    keep = np.ones(region.shape[0], dtype=bool)
    keep[drop] = False
    strings = region[keep].tobytes().decode("utf-8", "replace").split("\0")[1:]
    if len(strings) != count:  # a string held a NUL itself: take them one at a time
        ends = np.append(starts[1:] - 8, end)
        strings = [bytes(buf[a:b]).decode("utf-8", "replace") for a, b in zip(starts, ends, strict=True)]
    return strings, int(end)

"""Byte-level BPE (GPT-2 style), merging in llama.cpp's order."""

from __future__ import annotations

import heapq
from itertools import pairwise

from .pretokenize import PreTokenizer, Splitter, byte_encode

# Pieces repeat a lot in real text; beyond this many distinct ones the cache starts over.
WORD_CACHE_LIMIT = 200_000


def parse_merges(merges: list[str]) -> dict[tuple[str, str], int]:
    ranks: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(merges):
        # The separator is the first space after the first character, so a merge may start with one.
        cut = merge.find(" ", 1)
        pair = (merge[:cut], merge[cut + 1:]) if cut >= 0 else ("", "")
        ranks.setdefault(pair, rank)  # a repeated pair keeps its first (best) rank
    return ranks


class BPEEncoder:
    def __init__(self, token_to_id: dict[str, int], merges: list[str], pre: PreTokenizer):
        self._token_to_id = token_to_id
        self._ranks = parse_merges(merges)
        self._split = Splitter(pre.expressions)
        self._ignore_merges = pre.ignore_merges
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for piece in self._split(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                if len(cache) >= WORD_CACHE_LIMIT:
                    cache.clear()
                piece_ids = cache[piece] = self._encode_piece(piece)
            ids += piece_ids
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        encoded = byte_encode(piece)
        whole = self._token_to_id.get(encoded) if self._ignore_merges else None
        if whole is not None:
            return [whole]
        return [token for part in self._merge(list(encoded)) for token in self._part_ids(part)]

    def _part_ids(self, part: str) -> list[int]:
        token = self._token_to_id.get(part)
        if token is not None:
            return [token]
        # A merge result missing from the vocabulary: llama.cpp looks up each byte of its text on its
        # own, which only ever finds the ASCII ones, and drops the rest.
        single_bytes = (chr(byte) for byte in part.encode("utf-8") if byte < 0x80)
        return [self._token_to_id[char] for char in single_bytes if char in self._token_to_id]

    def _merge(self, symbols: list[str]) -> list[str]:
        """Merge the best-ranked adjacent pair, leftmost first on ties, until no pair has a rank."""
        if len(symbols) < 2:
            return symbols
        ranks = self._ranks
        following = [*range(1, len(symbols)), -1]
        preceding = list(range(-1, len(symbols) - 1))
        queue = [(ranks[pair], i, i + 1) for i, pair in enumerate(pairwise(symbols)) if pair in ranks]
        heapq.heapify(queue)
        while queue:
            rank, left, right = heapq.heappop(queue)
            # Entries outlive the symbols they name: one counts only while both symbols still hold the
            # texts it was ranked for (a rank belongs to exactly one pair).
            if not symbols[left] or not symbols[right] or ranks.get((symbols[left], symbols[right])) != rank:
                continue
            symbols[left] += symbols[right]
            symbols[right] = ""
            following[left] = after = following[right]
            if after >= 0:
                preceding[after] = left
            for a, b in ((preceding[left], left), (left, after)):
                if a >= 0 and b >= 0 and (symbols[a], symbols[b]) in ranks:
                    heapq.heappush(queue, (ranks[symbols[a], symbols[b]], a, b))
        return [symbol for symbol in symbols if symbol]

"""SentencePiece BPE as llama.cpp runs it: greedy merges of adjacent pieces by vocabulary score."""

from __future__ import annotations

import heapq

SPACE_MARK = "\u2581"  # SentencePiece writes spaces as ▁ inside tokens


class SPMEncoder:
    def __init__(self, token_to_id: dict[str, int], scores: list[float]):
        self._token_to_id = token_to_id
        self._scores = scores
        self._byte_ids = [self._byte_token(byte) for byte in range(256)]

    def _byte_token(self, byte: int) -> int | None:
        token = self._token_to_id.get(f"<0x{byte:02X}>")
        if token is None and byte < 0x80:
            token = self._token_to_id.get(chr(byte))
        return token

    def encode(self, text: str) -> list[int]:
        """Token ids for text whose spaces are already written as ▁."""
        if not text:
            return []
        lengths = self._merge(text)
        ids: list[int] = []
        start = 0
        while start < len(text):
            ids += self._piece_ids(text[start:start + lengths[start]])
            start += lengths[start]
        return ids

    def _merge(self, text: str) -> list[int]:
        """For each character that starts a final piece, the piece's length; 0 elsewhere.

        Every character starts as its own piece; the adjacent pair whose concatenation is the
        best-scoring token merges first, the leftmost on ties, until no adjacent pair forms a token.
        """
        vocab, scores = self._token_to_id, self._scores
        n = len(text)
        lengths = [1] * n
        preceding = list(range(-1, n - 1))
        queue = []
        for i in range(n - 1):
            token = vocab.get(text[i:i + 2])
            if token is not None:
                queue.append((-scores[token], i, 2))
        heapq.heapify(queue)
        while queue:
            _, left, size = heapq.heappop(queue)
            right = left + lengths[left]
            # A queued pair is stale once either side has changed length since it was queued.
            if not lengths[left] or right >= n or lengths[left] + lengths[right] != size:
                continue
            lengths[left], lengths[right] = size, 0
            after = left + size
            if after < n:
                preceding[after] = left
            for a, b in ((preceding[left], left), (left, after)):
                if a >= 0 and b < n:
                    pair_size = lengths[a] + lengths[b]
                    token = vocab.get(text[a:a + pair_size])
                    if token is not None:
                        heapq.heappush(queue, (-scores[token], a, pair_size))
        return lengths

    def _piece_ids(self, piece: str) -> list[int]:
        token = self._token_to_id.get(piece)
        if token is not None:
            return [token]
        # Only single characters can miss the vocabulary (merges only ever form tokens): spell them in bytes.
        ids = [self._byte_ids[byte] for byte in piece.encode("utf-8")]
        if None in ids:
            raise ValueError(f"cannot tokenize {piece!r}: the vocabulary has no byte token for one of its bytes")
        return ids

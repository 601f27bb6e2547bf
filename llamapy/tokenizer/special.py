"""Cutting special-token texts out of the input before the text itself is tokenized."""

from __future__ import annotations

Fragment = str | int  # raw text still to tokenize, or the id of a special token found in the input
C_WHITESPACE = " \t\n\v\f\r"  # what C's isspace accepts, which llama.cpp uses for stripping
NO_STRIP: frozenset[int] = frozenset()


def partition(text: str, specials: list[tuple[str, int]], lstrip: frozenset[int] = NO_STRIP,
              rstrip: frozenset[int] = NO_STRIP) -> list[Fragment]:
    """Split text at every occurrence of the given (text, id) pairs, taken in order.

    Each special token claims its occurrences, left to right, in whatever raw text earlier (longer) tokens
    left over; the order of `specials` therefore decides overlaps, as in llama.cpp. Tokens in `lstrip`
    (`rstrip`) also take the whitespace just before (after) each occurrence.
    """
    fragments: list[Fragment] = [text] if text else []
    for special_text, token in specials:
        if not any(isinstance(f, str) and special_text in f for f in fragments):
            continue
        strip = (token in lstrip, token in rstrip)
        fragments = [part for fragment in fragments for part in _cut(fragment, special_text, token, strip)]
    return fragments


def _cut(fragment: Fragment, special_text: str, token: int, strip: tuple[bool, bool]) -> list[Fragment]:
    if isinstance(fragment, int) or special_text not in fragment:
        return [fragment]
    strip_before, strip_after = strip
    pieces = fragment.split(special_text)
    last = len(pieces) - 1
    cut: list[Fragment] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            cut.append(token)
            if strip_after:
                piece = piece.lstrip(C_WHITESPACE)
        if i < last and strip_before:
            piece = piece.rstrip(C_WHITESPACE)
        if piece:
            cut.append(piece)
    return cut


def present_specials(text: str, specials: list[tuple[str, int]], first_chars: set[str]) -> list[tuple[str, int]]:
    """The special tokens that occur in text, in their original order.

    Big vocabularies have thousands of special tokens; checking the first character against the
    text's character set first keeps this from scanning the text once per token.
    """
    chars = set(text)
    if chars.isdisjoint(first_chars):
        return []
    return [(s, token) for s, token in specials if s[0] in chars and s in text]

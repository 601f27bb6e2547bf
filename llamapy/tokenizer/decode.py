"""From token ids back to bytes and text, following llama.cpp's token_to_piece and detokenize."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from .pretokenize import CHAR_TO_BYTE
from .spm import SPACE_MARK
from .vocab import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Vocab

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


def byte_level_bytes(text: str) -> bytes:
    """Undo GPT-2's byte alphabet; characters outside it come out marked, as llama.cpp writes them."""
    out = bytearray()
    for char in text:
        byte = CHAR_TO_BYTE.get(char)
        if byte is not None:
            out.append(byte)
        else:
            out += b"[UNK_BYTE_0x" + char.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)


def piece_bytes(vocab: Vocab, token: int, byte_level: bool) -> bytes:
    """The bytes a token stands for when special tokens are shown."""
    attr, text = vocab.attrs[token], vocab.texts[token]
    if attr & (CONTROL | UNKNOWN | USER_DEFINED):
        return text.encode("utf-8")
    if attr & NORMAL:
        return byte_level_bytes(text) if byte_level else text.replace(SPACE_MARK, " ").encode("utf-8")
    if attr & BYTE:
        return bytes([int(text[3:5], 16)])  # <0xNN>
    return b""  # unused and undefined tokens have no text


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean-up of spaces that word-level tokenizers put before punctuation and contractions.

    Each pass rewrites the buffer in place, reading characters that an earlier step may have blanked,
    so the passes are kept in that form to give the same results on odd inputs.
    """
    buf = bytearray(text)
    size = _drop_space_before_punctuation(buf, len(buf))
    size = _drop_spaces_around_lone_apostrophe(buf, size)
    size = _join_contractions(buf, size)
    return bytes(buf[:size])


def _drop_space_before_punctuation(buf: bytearray, size: int) -> int:
    kept = min(size, 1)
    for i in range(1, size):
        char = buf[i]
        if buf[i - 1] == 0x20 and char in b"?!.,":
            kept -= 1
        buf[kept] = char
        kept += 1
    return kept


def _drop_spaces_around_lone_apostrophe(buf: bytearray, size: int) -> int:
    kept = min(size, 1)
    i = 1
    while i < size:
        char = buf[i]
        if char == 0x27 and i + 1 < size and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
            kept -= 1  # the space before goes
            i += 1
            buf[i] = 0  # and the one after is skipped, leaving a blank the next step reads
        buf[kept] = char
        kept += 1
        i += 1
    return kept


def _join_contractions(buf: bytearray, size: int) -> int:
    kept = min(size, 1)
    for i in range(1, size):
        char = buf[i]
        if char == 0x27 and buf[i - 1] == 0x20 and _joins_previous_word(bytes(buf[i + 1:min(i + 3, size)])):
            kept -= 1
        buf[kept] = char
        kept += 1
    return kept


def _joins_previous_word(after_apostrophe: bytes) -> bool:
    # " 's" and " 'm" always join, " 're" and " 've" too; " 't", " 'd" and " 'll" stay apart.
    return after_apostrophe[:1] in (b"s", b"m") or after_apostrophe == b"re" or after_apostrophe == b"ve"


class StreamDecoder:
    """Turns ids into text as they arrive, holding back a multi-byte character until it is complete.

    Pieces are joined as they are, without `decode`'s leading-space and punctuation clean-ups, which only
    make sense for a whole text.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = True):
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self._tokenizer.token_to_piece(token, special=self._special))

    def flush(self) -> str:
        """Whatever is still held back, with an incomplete character shown as U+FFFD."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

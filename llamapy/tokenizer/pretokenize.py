"""BPE pre-tokenization: the regex splits chosen by `tokenizer.ggml.pre`, and GPT-2's byte-level alphabet.

llama.cpp applies a list of expressions in turn; each one cuts every piece left by the previous one into
its matches and the text between them, and nothing is dropped. llama.cpp hand-codes the common
expressions; the `regex` module runs them as written with the same results, because its \\s, \\p{L} and
\\p{N} follow the same Unicode properties. One gap remains: llama.cpp's tables are Unicode 15.1 and
`regex` knows later versions, so the few thousand code points assigned since (rare scripts and
symbols) have a category here but none there, and text containing them may split differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

_CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANY_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = _CONTRACTIONS + r"| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _llama3_like(digits: str, letters: str = r"\p{L}", others: str = r"[^\s\p{L}\p{N}]") -> str:
    return (
        _CONTRACTIONS_ANY_CASE + rf"|[^\r\n\p{{L}}\p{{N}}]?{letters}+|{digits}| ?{others}+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )


LLAMA3 = _llama3_like(r"\p{N}{1,3}")
QWEN2 = _llama3_like(r"\p{N}")
QWEN35 = _llama3_like(r"\p{N}", letters=r"[\p{L}\p{M}]", others=r"[^\s\p{L}\p{M}\p{N}]")


@dataclass(frozen=True)
class PreTokenizer:
    expressions: tuple[str, ...]
    ignore_merges: bool = False  # whole pieces that are tokens skip the merge loop
    add_bos: bool = False  # llama.cpp's default when the metadata does not say
    clean_spaces: bool = True  # detokenizing removes the space before punctuation and contractions


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_LLAMA3 = PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True)
_CODE = PreTokenizer((r"\p{N}", GPT2))
_GPT2 = PreTokenizer((GPT2,))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"], _LLAMA3
    ),
    **dict.fromkeys(["dbrx", "smaug-bpe", "chatglm-bpe"], PreTokenizer((LLAMA3,))),
    # GLM-4's expression is Llama 3's; llama.cpp also drops its BOS (none in the converted files' flags).
    **dict.fromkeys(["glm4", "glm5"], PreTokenizer((LLAMA3,), ignore_merges=True)),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")),
    **dict.fromkeys(["starcoder", "refact", "codeshell", "exaone", "minerva"], _CODE),
    **dict.fromkeys(["smollm", "command-r"], PreTokenizer((r"\p{N}", GPT2), clean_spaces=False)),
    **dict.fromkeys(
        ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
         "modern-bert", "mpt", "olmo", "jais", "jina-v1-en", "jina-v2-code", "roberta-bpe"], _GPT2
    ),
    **dict.fromkeys(["trillion"], PreTokenizer((GPT2,), clean_spaces=False)),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"], PreTokenizer((QWEN2,), clean_spaces=False)),
    "stablelm2": PreTokenizer((QWEN2,)),
    "qwen35": PreTokenizer((QWEN35,), clean_spaces=False),
}


def pre_tokenizer(name: str | None) -> PreTokenizer:
    if not name:
        return _DEFAULT  # llama.cpp warns about degraded quality and carries on the same way
    if name not in PRE_TOKENIZERS:
        raise ValueError(
            f"unsupported BPE pre-tokenizer {name!r} (tokenizer.ggml.pre); "
            f"supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    return PRE_TOKENIZERS[name]


class Splitter:
    """Cuts text into the pieces that BPE merges independently."""

    def __init__(self, expressions: tuple[str, ...]):
        # A capturing group around the whole expression makes `split` return matches and gaps alike.
        self._splits = [regex.compile(f"({expression})").split for expression in expressions]

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        for split in self._splits:
            pieces = [part for piece in pieces for part in split(piece) if part]
        return pieces


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for every byte: printable Latin-1 as itself, the rest from U+0100 up."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = [""] * 256
    for byte in printable:
        alphabet[byte] = chr(byte)
    spare = (byte for byte in range(256) if not alphabet[byte])
    for offset, byte in enumerate(spare):
        alphabet[byte] = chr(0x100 + offset)
    return alphabet


BYTE_TO_CHAR = _byte_alphabet()
CHAR_TO_BYTE = {char: byte for byte, char in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_ALPHABET = str.maketrans({chr(byte): char for byte, char in enumerate(BYTE_TO_CHAR)})


def byte_encode(piece: str) -> str:
    """The piece's UTF-8 bytes, each written as its GPT-2 stand-in character."""
    return piece.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_ALPHABET)

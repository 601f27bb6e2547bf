"""The tokenizer of a checkpoint as llama.cpp's GGUF keys: SentencePiece from tokenizer.model, BPE from
tokenizer.json (with the `tokenizer.ggml.pre` llama.cpp's hash test names), special tokens, chat template.

The keys go into a `gguf.GGUFWriter` used as an ordered key/value store, so every value gets the GGUF type
llama.cpp's converter gives it; `gguf.SpecialVocab` reads special ids, add_bos/eos and the chat template
from tokenizer_config.json / tokenizer.json as llama.cpp does.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import gguf

from .pre_hashes import CHECK_TEXT, PRE_BY_HASH

# SentencePiece piece types (sentencepiece_model.proto) are GGUF's token types, number for number.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class TokenizerError(ValueError):
    """No usable tokenizer in the checkpoint, or one llama.cpp cannot name."""


@dataclass
class VocabNotes:
    """What the command reports about the tokenizer it wrote."""
    kind: str = ""
    pre: str = ""
    warnings: list[str] = field(default_factory=list)


# --- SentencePiece ------------------------------------------------------------------------------

def read_sentencepiece(path: Path) -> list[tuple[bytes, float, int]]:
    """(piece, score, type) of every piece in a tokenizer.model (protobuf ModelProto, field 1)."""
    data = path.read_bytes()
    pieces, pos = [], 0
    while pos < len(data):
        number, wire, pos = _tag(data, pos)
        if wire == 2:
            length, pos = _varint(data, pos)
            if number == 1:
                pieces.append(_piece(data[pos:pos + length]))
            pos += length
        else:
            pos = _skip(data, pos, wire)
    if not pieces:
        raise TokenizerError(f"{path}: no pieces (not a SentencePiece model)")
    return pieces


def _piece(data: bytes) -> tuple[bytes, float, int]:
    text, score, kind, pos = b"", 0.0, NORMAL, 0
    while pos < len(data):
        number, wire, pos = _tag(data, pos)
        if number == 1 and wire == 2:
            length, pos = _varint(data, pos)
            text, pos = data[pos:pos + length], pos + length
        elif number == 2 and wire == 5:
            score, pos = struct.unpack_from("<f", data, pos)[0], pos + 4
        elif number == 3 and wire == 0:
            kind, pos = _varint(data, pos)
        else:
            pos = _skip(data, pos, wire)
    return text, score, kind


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise TokenizerError("truncated SentencePiece model")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _tag(data: bytes, pos: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos)
    return key >> 3, key & 7, pos


def _skip(data: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    if wire == 2:
        length, pos = _varint(data, pos)
        return pos + length
    raise TokenizerError(f"unsupported protobuf wire type {wire} in SentencePiece model")


def looks_special(text: str) -> bool:
    """Added tokens llama.cpp types as control even when the checkpoint does not mark them special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def sentencepiece_vocab(folder: Path, vocab_size: int | None, phi3_rules: bool = False):
    """tokens, scores and types as llama.cpp's converter lays them out for an SPM checkpoint."""
    pieces = read_sentencepiece(folder / "tokenizer.model")
    n = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores, types = [-10000.0] * n, [UNUSED] * n
    for i, (text, score, kind) in enumerate(pieces[:n]):
        tokens[i], scores[i], types[i] = text, score, kind if kind in (UNKNOWN, CONTROL, UNUSED, BYTE) else NORMAL
    added = _json(folder / "added_tokens.json") or {}
    for text, i in added.items():
        if i < n:
            tokens[i], scores[i], types[i] = text.encode(), -1000.0, USER_DEFINED
    decoder = (_json(folder / "tokenizer_config.json") or {}).get("added_tokens_decoder", {})
    entries = [(int(i), d) for i, d in decoder.items()]
    if phi3_rules:
        entries += [(int(d["id"]), d) for d in (_json(folder / "tokenizer.json") or {}).get("added_tokens", [])]
    for i, d in entries:
        if i >= n:
            continue
        text = d["content"]
        if phi3_rules:
            kind = CONTROL if d.get("special") else USER_DEFINED
        elif d.get("special") or looks_special(text):
            kind = CONTROL
        else:
            kind, text = USER_DEFINED, text.replace("\u2581", " ")
        tokens[i], scores[i], types[i] = text.encode(), -1000.0, kind
    return tokens, scores, types


# --- BPE (tokenizer.json) -----------------------------------------------------------------------

def bpe_vocab(folder: Path, vocab_size: int | None):
    """tokens and types of a byte-level BPE tokenizer.json, unused ids padded as llama.cpp pads them."""
    spec = _json(folder / "tokenizer.json")
    if spec is None or spec.get("model", {}).get("type") != "BPE":
        raise TokenizerError(f"{folder}: tokenizer.json holds no BPE model")
    if spec["model"].get("byte_fallback"):  # llama.cpp reads these as SentencePiece (its LlamaHfVocab)
        raise TokenizerError(f"{folder}: a SentencePiece-style tokenizer.json needs its tokenizer.model, "
                             "which is missing")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {d["id"]: d for d in spec.get("added_tokens", [])}
    for i, d in added.items():
        by_id[i] = d["content"]
    n = vocab_size or (max(by_id) + 1)
    if max(by_id) >= n:
        raise TokenizerError(f"{folder}: tokenizer has id {max(by_id)}, config.json vocab_size is {n}")
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            text = by_id[i]
            if added[i].get("special") or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def check_hash(folder: Path) -> str:
    """sha256 of str(ids) for CHECK_TEXT, encoded as transformers would (special tokens added)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(CHECK_TEXT).ids
    return sha256(str(ids).encode()).hexdigest()


# Pre-tokenizer regexes of tokenizer.json, for vocabularies whose hash llama.cpp does not list.
_HEAD = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLIT_PRE = {_HEAD + r"\p{N}{1,3}" + _TAIL: "llama-bpe", _HEAD + r"\p{N}" + _TAIL: "qwen2"}


def bpe_pre(folder: Path, notes: VocabNotes, renames: dict[str, str] | None = None) -> str:
    """llama.cpp's name for the vocabulary's hash; for a hash it does not list, the name of a known split
    expression (`renames`: a family's own name for it, as GLM's glm4 for Llama 3's expression)."""
    digest = check_hash(folder)
    if digest in PRE_BY_HASH:
        return PRE_BY_HASH[digest]
    pattern = _split_pattern(_json(folder / "tokenizer.json").get("pre_tokenizer"))
    if pattern in _SPLIT_PRE:
        name = (renames or {}).get(_SPLIT_PRE[pattern], _SPLIT_PRE[pattern])
        notes.warnings.append(f"llama.cpp does not know this vocabulary (chkhsh {digest[:12]}…); its "
                              f"pre-tokenizer regex is {name}'s, so tokenizer.ggml.pre = {name}")
        return name
    raise TokenizerError(f"BPE pre-tokenizer not recognized (chkhsh {digest}): llama.cpp would refuse it too")


def _split_pattern(pre: dict | None) -> str | None:
    if not pre:
        return None
    if pre.get("type") == "Sequence":
        for item in pre.get("pretokenizers", []):
            found = _split_pattern(item)
            if found:
                return found
        return None
    if pre.get("type") == "Split":
        return pre.get("pattern", {}).get("Regex")
    return None


# --- writing the keys ---------------------------------------------------------------------------

class SpecialVocab(gguf.SpecialVocab):
    """gguf-py's reader of special ids, add_bos/eos flags, merges and chat template, with the one rule
    llama.cpp 0c1e570's gguf-py has that the released gguf 0.19.0 lacks: a ByteLevel post-processor
    (GPT-2 style tokenizers: Qwen, GLM) means add neither BOS nor EOS unless tokenizer_config.json says."""

    def _try_load_from_tokenizer_json(self, path: Path) -> bool:
        found = super()._try_load_from_tokenizer_json(path)
        post = ((_json(path / "tokenizer.json") or {}).get("post_processor")) or {}
        if any(p.get("type") == "ByteLevel" for p in post.get("processors", [post])):
            self.add_special_token.setdefault("bos", False)
            self.add_special_token.setdefault("eos", False)
        return found


def add_sentencepiece(gw: gguf.GGUFWriter, folder: Path, vocab_size: int | None, phi3_rules: bool = False) -> None:
    tokens, scores, types = sentencepiece_vocab(folder, vocab_size, phi3_rules)
    gw.add_tokenizer_model("llama")
    gw.add_tokenizer_pre("default")
    gw.add_token_list(tokens)
    gw.add_token_scores(scores)
    gw.add_token_types(types)
    SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(gw, quiet=True)


def add_bpe(gw: gguf.GGUFWriter, folder: Path, vocab_size: int | None, notes: VocabNotes,
            special_overrides: dict[str, str] | None = None, pre_renames: dict[str, str] | None = None) -> None:
    tokens, types = bpe_vocab(folder, vocab_size)
    notes.pre = bpe_pre(folder, notes, pre_renames)
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre(notes.pre)
    gw.add_token_list(tokens)
    gw.add_token_types(types)
    special = SpecialVocab(folder, load_merges=True)
    for kind, text in (special_overrides or {}).items():
        if text not in tokens:
            raise TokenizerError(f"{folder}: the tokenizer lacks {text}, which a {kind} token must be")
        special._set_special_token(kind, tokens.index(text))
    special.add_to_gguf(gw, quiet=True)


def has_sentencepiece(folder: Path) -> bool:
    return (folder / "tokenizer.model").is_file()


def has_bpe(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file()


def _json(path: Path):
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)

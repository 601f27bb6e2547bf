"""The tokenizer a GGUF model describes: byte-level BPE (`gpt2`) or SentencePiece (`llama`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .bpe import BPEEncoder
from .decode import StreamDecoder, clean_spaces, piece_bytes
from .pretokenize import pre_tokenizer
from .special import partition, present_specials
from .spm import SPACE_MARK, SPMEncoder
from .vocab import CONTROL, KEY, MODEL_BPE, UNKNOWN, Vocab, build_vocab, check_model

__all__ = ["StreamDecoder", "Tokenizer"]


class Tokenizer:
    """Text to token ids and back, the way llama.cpp does it for the same GGUF metadata."""

    def __init__(self, vocab: Vocab, encode_text: Callable[[str], list[int]], byte_level: bool,
                 clean_up_spaces: bool):
        self.vocab = vocab
        self._encode_text = encode_text  # raw text (no special tokens in it) → ids
        self._byte_level = byte_level
        self._clean_up_spaces = clean_up_spaces
        self._pieces: dict[int, bytes] = {}
        specials = [(vocab.texts[t], t) for t in vocab.special_ids]
        self._specials_parsed = specials
        # Without special parsing llama.cpp still cuts out user-defined tokens, but not control ones.
        self._specials_plain = [(s, t) for s, t in specials if not vocab.attrs[t] & (CONTROL | UNKNOWN)]
        self._first_chars = {s[0] for s, _ in specials}

    @classmethod
    def from_gguf(cls, kv: dict) -> Tokenizer:
        """Build from GGUF metadata (`GGUFFile(path).kv`); ValueError for a kind llama.cpp would not load."""
        if check_model(kv) == MODEL_BPE:
            return cls._bpe(kv)
        return cls._spm(kv)

    @classmethod
    def _bpe(cls, kv: dict) -> Tokenizer:
        pre_name = kv.get(KEY + "pre")
        pre = pre_tokenizer(pre_name)
        merges = kv.get(KEY + "merges")
        if merges is None:
            raise ValueError("GGUF metadata has no tokenizer.ggml.merges, which a gpt2 (BPE) tokenizer needs")
        vocab = build_vocab(kv, pre_name or "default", pre.add_bos, bos_default=11, eos_default=11, unk_default=None)
        encoder = BPEEncoder(vocab.token_to_id, merges, pre)
        return cls(vocab, encoder.encode, byte_level=True, clean_up_spaces=pre.clean_spaces)

    @classmethod
    def _spm(cls, kv: dict) -> Tokenizer:
        vocab = build_vocab(kv, kv.get(KEY + "pre") or "default", True, bos_default=1, eos_default=2, unk_default=0)
        scores = vocab.scores if vocab.scores is not None else [0.0] * vocab.n_vocab
        encoder = SPMEncoder(vocab.token_to_id, scores)
        return cls(vocab, lambda text: encoder.encode(text.replace(" ", SPACE_MARK)),
                   byte_level=False, clean_up_spaces=False)

    # --- properties -------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def eot_id(self) -> int | None:
        return self.vocab.eot_id

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def is_spm(self) -> bool:
        return not self._byte_level

    def is_eog(self, token: int) -> bool:
        """Whether generating this token ends generation (eos, eot, eom and their look-alikes)."""
        return token in self.vocab.eog_ids

    def is_control(self, token: int) -> bool:
        self._check(token)
        return bool(self.vocab.attrs[token] & CONTROL)

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text`, if there is one."""
        return self.vocab.token_to_id.get(text)

    def token_text(self, token: int) -> str:
        """The token's text as stored in the vocabulary (byte-level or ▁-escaped)."""
        self._check(token)
        return self.vocab.texts[token]

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True,
               add_eos: bool | None = None) -> list[int]:
        """Token ids for text.

        add_bos: None follows the model's flag. add_eos: None follows the model's flag unless add_bos is
        False (llama.cpp adds BOS and EOS under one switch). special: recognise control and user-defined
        token texts in `text`; with False only user-defined ones are, as in llama.cpp.
        """
        want_bos = self.vocab.add_bos if add_bos is None else add_bos
        want_eos = (self.vocab.add_eos and add_bos is not False) if add_eos is None else add_eos
        ids = [self._required(self.vocab.bos_id, "BOS")] if want_bos else []
        ids += self._encode_fragments(text, special)
        if want_eos:
            ids.append(self._required(self.vocab.eos_id, "EOS"))
        return ids

    def _encode_fragments(self, text: str, special: bool) -> list[int]:
        specials = self._specials_parsed if special else self._specials_plain
        ids: list[int] = []
        after_special = True
        present = present_specials(text, specials, self._first_chars)
        for fragment in partition(text, present, self.vocab.lstrip_ids, self.vocab.rstrip_ids):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
                continue
            # SentencePiece models that want a leading space get it at the start and after each special token.
            if self.vocab.add_space_prefix and after_special and not self._byte_level:
                fragment = " " + fragment
            ids += self._encode_text(fragment)
            after_special = False
        return ids

    @staticmethod
    def _required(token: int | None, name: str) -> int:
        if token is None:
            raise ValueError(f"the model wants a {name} token but its vocabulary defines none")
        return token

    # --- decoding ---------------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token; control and unknown tokens give b"" unless `special`."""
        self._check(token)
        if not special and self.vocab.attrs[token] & (CONTROL | UNKNOWN):
            return b""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = piece_bytes(self.vocab, token, self._byte_level)
        return piece

    def decode_bytes(self, ids: Iterable[int], special: bool = True) -> bytes:
        """llama.cpp's detokenize: pieces joined, the first piece's leading space dropped when the model
        adds a prefix space while encoding, and the model's space clean-up applied."""
        pieces = [self.token_to_piece(token, special) for token in ids]
        if pieces and self.vocab.add_space_prefix and pieces[0][:1] == b" ":
            pieces[0] = pieces[0][1:]
        text = b"".join(pieces)
        return clean_spaces(text) if self._clean_up_spaces else text

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """Text for ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, special)

    def _check(self, token: int) -> None:
        if not 0 <= token < self.vocab.n_vocab:
            raise ValueError(f"token id {token} is outside the vocabulary (0..{self.vocab.n_vocab - 1})")

    def __repr__(self) -> str:
        kind = "SPM" if self.is_spm else f"BPE pre={self.vocab.pre}"
        return f"Tokenizer({kind}, n_vocab={self.n_vocab}, bos={self.bos_id}, eos={self.eos_id})"


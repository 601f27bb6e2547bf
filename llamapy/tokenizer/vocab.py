"""The vocabulary as llama.cpp sees it: token texts, attributes, special ids and flags from GGUF metadata.

llama.cpp does more than read the metadata: it finds end-of-turn and fill-in-the-middle tokens by their
text, promotes them to control tokens, and derives the end-of-generation set from them. Tokenizing and
detokenizing both depend on those adjusted attributes, so they are reproduced here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Attribute bits. A token starts with the bit of its GGUF type and may gain CONTROL or UNUSED here.
NORMAL, UNKNOWN, UNUSED, CONTROL, USER_DEFINED, BYTE = 1, 2, 4, 8, 16, 32
# Index: GGUF token type (0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
_ATTR_OF_GGUF_TYPE = np.array([0, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE], dtype=np.int64)

MODEL_BPE = "gpt2"
MODEL_SPM = "llama"
SUPPORTED_MODELS = (MODEL_BPE, MODEL_SPM)

KEY = "tokenizer.ggml."

# Texts llama.cpp recognises when the metadata names no such token; the first present wins here.
EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
EOM_TEXTS = ("<|eom_id|>",)
FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
FIM_SEP_TEXTS = ("<|file_sep|>",)
# Every token with one of these texts ends generation.
EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)
# gpt-oss wants these rendered like ordinary text even when special tokens are hidden.
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


@dataclass
class Vocab:
    model: str
    pre: str
    texts: list[str]
    token_to_id: dict[str, int]
    attrs: list[int]
    scores: list[float] | None
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset[int]
    special_ids: list[int]  # control, user-defined and unknown tokens, longest text first
    lstrip_ids: frozenset[int]  # when found in text, these swallow the whitespace before them
    rstrip_ids: frozenset[int]  # ... or after them

    @property
    def n_vocab(self) -> int:
        return len(self.texts)


def check_model(kv: dict) -> str:
    model = kv.get(KEY + "model")
    if model not in SUPPORTED_MODELS:
        raise ValueError(
            f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); supported: {', '.join(SUPPORTED_MODELS)}"
        )
    return model


def read_texts(kv: dict) -> list[str]:
    texts = kv.get(KEY + "tokens")
    if not texts:
        raise ValueError("GGUF metadata has no tokenizer.ggml.tokens: the model carries no vocabulary")
    # llama.cpp renames empty tokens so that every text maps back to exactly one id.
    return [t if t else f"[EMPTY_{i}]" for i, t in enumerate(texts)]


def read_attrs(kv: dict, n_vocab: int) -> list[int]:
    types = kv.get(KEY + "token_type")
    if types is None:
        return [NORMAL] * n_vocab
    if len(types) < n_vocab:
        raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {n_vocab} tokens")
    types = np.asarray(types, dtype=np.int64)[:n_vocab]
    known = (types >= 0) & (types < len(_ATTR_OF_GGUF_TYPE))
    return np.where(known, _ATTR_OF_GGUF_TYPE[np.where(known, types, 0)], 0).tolist()


def read_scores(kv: dict, n_vocab: int) -> list[float] | None:
    scores = kv.get(KEY + "scores")
    if scores is None:
        return None
    if len(scores) < n_vocab:
        raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {n_vocab} tokens")
    return np.asarray(scores, dtype=np.float32)[:n_vocab].tolist()


def special_id(kv: dict, name: str, default: int | None, n_vocab: int) -> int | None:
    """An id from metadata; llama.cpp drops defaults outside the vocabulary and ignores bad overrides."""
    if default is not None and default >= n_vocab:
        default = None
    value = kv.get(KEY + name)
    if value is None or not 0 <= int(value) < n_vocab:
        return default
    return int(value)


def first_present(token_to_id: dict[str, int], texts: tuple[str, ...]) -> int | None:
    for text in texts:
        if text in token_to_id:
            return token_to_id[text]
    return None


def build_vocab(kv: dict, pre: str, add_bos_default: bool, bos_default: int | None,
                eos_default: int | None, unk_default: int | None) -> Vocab:
    model = check_model(kv)
    texts = read_texts(kv)
    n_vocab = len(texts)
    token_to_id = dict(zip(texts, range(n_vocab), strict=False))
    attrs = read_attrs(kv, n_vocab)
    eos_id = special_id(kv, "eos_token_id", eos_default, n_vocab)
    eot_id, eom_id, eog = generation_ends(kv, texts, token_to_id, attrs, eos_id)
    special_ids = longest_first_specials(texts, attrs)
    lstrip_ids, rstrip_ids = strip_rules(kv, token_to_id, special_ids)
    return Vocab(
        model=model, pre=pre, texts=texts, token_to_id=token_to_id, attrs=attrs,
        scores=read_scores(kv, n_vocab),
        bos_id=special_id(kv, "bos_token_id", bos_default, n_vocab), eos_id=eos_id, eot_id=eot_id,
        eom_id=eom_id, unk_id=special_id(kv, "unknown_token_id", unk_default, n_vocab),
        pad_id=special_id(kv, "padding_token_id", None, n_vocab),
        add_bos=bool(kv.get(KEY + "add_bos_token", add_bos_default)),
        add_eos=bool(kv.get(KEY + "add_eos_token", False)),
        add_space_prefix=bool(kv.get(KEY + "add_space_prefix", model == MODEL_SPM)),
        eog_ids=frozenset(eog), special_ids=special_ids, lstrip_ids=lstrip_ids, rstrip_ids=rstrip_ids,
    )


def generation_ends(kv: dict, texts: list[str], token_to_id: dict[str, int], attrs: list[int],
                    eos_id: int | None) -> tuple[int | None, int | None, set[int]]:
    """End-of-turn and end-of-message ids and the end-of-generation set; adjusts `attrs` on the way,
    in llama.cpp's order (the later steps look at what the earlier ones changed)."""

    def found_by_text(name, candidates):
        # Only consulted when the metadata names no such token.
        token = special_id(kv, name, None, len(texts))
        if token is None:
            token = first_present(token_to_id, candidates)
            if token is not None:
                attrs[token] |= CONTROL
        return token

    eot_id = found_by_text("eot_token_id", EOT_TEXTS)
    eom_id = found_by_text("eom_token_id", EOM_TEXTS)
    fim_ids = [found_by_text(f"fim_{kind}_token_id", candidates) for kind, candidates in
               (("pad", FIM_PAD_TEXTS), ("rep", FIM_REP_TEXTS), ("sep", FIM_SEP_TEXTS))]
    mark_unused_controls(texts, attrs)
    eog = eog_set(token_to_id, attrs, [*fim_ids, eos_id, eot_id, eom_id])
    for text in ALWAYS_RENDERED_TEXTS:
        if text in token_to_id:
            attrs[token_to_id[text]] = USER_DEFINED
    drop_ambiguous_eog(texts, attrs, eog)
    return eot_id, eom_id, eog


def mark_unused_controls(texts: list[str], attrs: list[int]) -> None:
    # Conversions often leave placeholder slots typed as control tokens; their text gives them away.
    for token, attr in enumerate(attrs):
        if attr & CONTROL and "unused" in texts[token]:
            attrs[token] = attr | UNUSED


def eog_set(token_to_id: dict[str, int], attrs: list[int], extra: list[int | None]) -> set[int]:
    eog = {token for token in extra if token is not None}
    for text in EOG_TEXTS:
        token = token_to_id.get(text)
        if token is not None:
            eog.add(token)
            attrs[token] |= CONTROL
    return eog


def drop_ambiguous_eog(texts: list[str], attrs: list[int], eog: set[int]) -> None:
    """Undo two text-based guesses that llama.cpp knows to be wrong for some vocabularies."""
    by_text = {texts[token]: token for token in eog}
    # Harmony-style chats use <|end|> between messages, not at the end of generation.
    has_call = "<|call|>" in by_text or "<|calls|>" in by_text
    if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
        eog.discard(by_text["<|end|>"])
        attrs[by_text["<|end|>"]] = USER_DEFINED
    # Where an explicit end marker exists, </s> is ordinary text.
    if "</s>" in by_text and ("<|tool_response>" in by_text or "<|plamo:eos|>" in by_text):
        eog.discard(by_text["</s>"])
        attrs[by_text["</s>"]] = NORMAL


def longest_first_specials(texts: list[str], attrs: list[int]) -> list[int]:
    wanted = CONTROL | USER_DEFINED | UNKNOWN
    specials = [token for token, attr in enumerate(attrs) if attr & wanted]
    # Longer texts must claim their span before any shorter token inside them can.
    specials.sort(key=lambda token: -len(texts[token].encode("utf-8")))
    return specials


def strip_rules(kv: dict, token_to_id: dict[str, int], special_ids: list[int]) -> tuple[frozenset, frozenset]:
    """Which special tokens eat adjacent whitespace. GGUF does not record this, so llama.cpp (and this)
    decides by model name, as the original tokenizers of those models did."""
    name = str(kv.get("general.name", "")).lower()
    pre = str(kv.get(KEY + "pre", ""))
    arch = str(kv.get("general.architecture", ""))
    lstrip: set[int] = set()
    rstrip: set[int] = set()
    jina_v2 = any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
    if jina_v2 or arch in ("nomic-bert-moe", "jina-bert-v3"):
        lstrip.update(_ids(token_to_id, "<mask>"))
    elif "phi-3" in name or "phi3" in name:
        rstrip.update(special_ids)
        rstrip.update(_ids(token_to_id, "</s>"))
        rstrip.difference_update(_ids(token_to_id, "<unk>", "<s>", "<|endoftext|>"))
    elif "modern-bert" in name:
        lstrip.update(_ids(token_to_id, "[MASK]"))
    return frozenset(lstrip), frozenset(rstrip)


def _ids(token_to_id: dict[str, int], *texts: str) -> list[int]:
    return [token_to_id[text] for text in texts if text in token_to_id]

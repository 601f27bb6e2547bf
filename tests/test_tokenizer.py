"""Tokenizers against llama.cpp's own output for the two shipped models (SmolLM2: BPE, Gemma 3: SPM).

Expected ids come from /work/shared/reference (produced by llama-tokenize and llama-perplexity), and
expected texts from the reference strings themselves, never from this tokenizer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import model_path

from llamapy.gguf.reader import GGUFFile
from llamapy.tokenizer import Tokenizer
from llamapy.tokenizer.pretokenize import PRE_TOKENIZERS, Splitter

# The chat-looking reference string of each model and the control-token texts it contains.
CHAT = {
    "smollm2": ("<|im_start|>user\nHi there<|im_end|>", "<|im_start|>", "<|im_end|>"),
    "gemma3": ("<start_of_turn>user\nHi there<end_of_turn>", "<start_of_turn>", "<end_of_turn>"),
}
# llama-perplexity on ppl.txt (reference README): BOS included where the model adds one (Gemma).
PPL_TOKENS = {"smollm2": 47_567, "gemma3": 45_534}
# llama_vocab_is_eog over the whole vocabulary, as llama.cpp 0c1e570 reports it for these files.
EOG_TEXTS = {"smollm2": {"<|endoftext|>", "<|im_end|>", "<reponame>"}, "gemma3": {"<eos>", "<end_of_turn>", "</s>"}}
MULTI_BYTE = ("你好，世界！今天天气很好。", "日本語のテキストです。", "Emoji: 😀🚀👍🏽 and 🇺🇸 flags ❤️")


@pytest.fixture(scope="module")
def kv(model_name) -> dict:
    return GGUFFile(model_path(model_name)).kv


@pytest.fixture(scope="module")
def tok(kv) -> Tokenizer:
    return Tokenizer.from_gguf(kv)


@pytest.fixture(scope="module")
def reference(model_name, reference_dir) -> dict[str, dict]:
    lines = (reference_dir / model_name / "tokenize.jsonl").read_text(encoding="utf-8").splitlines()
    return {case["text"]: case for case in map(json.loads, lines)}


def chat_ids(model_name, reference) -> tuple[int, int]:
    """The ids llama.cpp gave the start-of-turn and end-of-turn texts in the chat reference string."""
    ids = reference[CHAT[model_name][0]]["ids_no_bos"]
    return ids[0], ids[-1]


# --- encoding -------------------------------------------------------------------------------------


def test_reference_ids_with_model_bos(tok, reference):
    wrong = [(text, tok.encode(text), case["ids"]) for text, case in reference.items()
             if tok.encode(text) != case["ids"]]
    assert not wrong, f"{len(wrong)} of {len(reference)} differ, first: {wrong[0]}"


def test_reference_ids_without_bos(tok, reference):
    wrong = [(text, tok.encode(text, add_bos=False), case["ids_no_bos"]) for text, case in reference.items()
             if tok.encode(text, add_bos=False) != case["ids_no_bos"]]
    assert not wrong, f"{len(wrong)} of {len(reference)} differ, first: {wrong[0]}"


def test_logits_prompts_ids(tok, model_name, reference_dir):
    with np.load(reference_dir / model_name / "logits.npz") as ref:
        prompts = sorted(key[:-5] for key in ref.files if key.endswith("_text"))
        assert prompts
        for prompt in prompts:
            assert tok.encode(str(ref[f"{prompt}_text"])) == ref[f"{prompt}_ids"].tolist(), prompt


def test_ppl_text_token_count(tok, model_name, reference_dir):
    text = (reference_dir / "ppl.txt").read_text(encoding="utf-8")
    assert len(tok.encode(text)) == PPL_TOKENS[model_name]


def test_special_token_text_is_one_token_only_when_parsed(tok, model_name, reference):
    start_text = CHAT[model_name][1]
    start_id, _ = chat_ids(model_name, reference)
    assert tok.encode(start_text, add_bos=False) == [start_id]
    plain = tok.encode(start_text, add_bos=False, special=False)
    assert len(plain) > 1 and start_id not in plain


def test_user_defined_tokens_are_parsed_even_without_special(tok, model_name, reference):
    # llama.cpp still cuts user-defined tokens (Gemma's runs of spaces and newlines) out of plain text.
    for text in ("    ", "multiple   spaces\t\ttabs\n\n\nnewlines"):
        assert tok.encode(text, add_bos=False, special=False) == reference[text]["ids_no_bos"], text


def test_eos_follows_the_bos_switch(kv, reference):
    tok = Tokenizer.from_gguf({**kv, "tokenizer.ggml.add_eos_token": True})
    text = "Hello, world!"
    assert tok.encode(text) == reference[text]["ids"] + [kv["tokenizer.ggml.eos_token_id"]]
    assert tok.encode(text, add_bos=False) == reference[text]["ids_no_bos"]


# --- decoding -------------------------------------------------------------------------------------


def test_decode_round_trips_every_reference_string(tok, reference):
    # llama.cpp's detokenize (special tokens shown) gives back every one of these strings.
    wrong = [text for text, case in reference.items() if tok.decode(case["ids_no_bos"]) != text]
    assert not wrong


def test_decode_hides_control_tokens_unless_special(tok, model_name, reference):
    text, *control_texts = CHAT[model_name]
    hidden = text
    for control in control_texts:
        hidden = hidden.replace(control, "")
    assert tok.decode(reference[text]["ids_no_bos"], special=False) == hidden
    start_id, _ = chat_ids(model_name, reference)
    assert tok.token_to_piece(start_id, special=False) == b""
    assert tok.token_to_piece(start_id, special=True) == control_texts[0].encode()


def test_stream_decoder_gives_whole_characters_only(tok, reference):
    held_back = 0
    for text in MULTI_BYTE:
        decoder = tok.stream_decoder()
        chunks = [decoder.feed(token) for token in reference[text]["ids_no_bos"]]
        chunks.append(decoder.flush())
        assert "".join(chunks) == text
        assert "\ufffd" not in "".join(chunks)
        held_back += sum(1 for chunk in chunks[:-1] if chunk == "")
    if tok.is_spm:
        return  # Gemma has whole-character tokens for all of these; the byte-token test covers it
    assert held_back > 0, "byte-level tokens split these characters, so some feeds must wait"


def test_stream_decoder_holds_partial_byte_tokens(tok):
    if not tok.is_spm:
        pytest.skip("byte tokens <0xNN> are a SentencePiece feature")
    byte_ids = [tok.token_id(f"<0x{byte:02X}>") for byte in "你".encode()]
    assert tok.token_to_piece(byte_ids[0]) == b"\xe4"
    decoder = tok.stream_decoder()
    assert [decoder.feed(token) for token in byte_ids] == ["", "", "你"]
    decoder.feed(byte_ids[0])
    assert decoder.flush() == "\ufffd"


def test_spm_pieces_show_spaces(tok, reference):
    if not tok.is_spm:
        pytest.skip("SentencePiece only")
    first = reference[" leading space and trailing space "]["ids_no_bos"][0]
    assert tok.token_to_piece(first).startswith(b" ")
    assert tok.token_to_piece(tok.token_id("<0x41>")) == b"A"


def test_unknown_ids_are_rejected(tok):
    for bad in (tok.n_vocab, -1):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([0, bad])


# --- vocabulary facts -----------------------------------------------------------------------------


def test_vocabulary_facts(tok, kv):
    assert tok.n_vocab == len(kv["tokenizer.ggml.tokens"])
    assert tok.bos_id == kv["tokenizer.ggml.bos_token_id"]
    assert tok.eos_id == kv["tokenizer.ggml.eos_token_id"]
    assert tok.add_bos == bool(kv.get("tokenizer.ggml.add_bos_token", False))


def test_end_of_generation(tok, model_name, reference):
    start_id, end_id = chat_ids(model_name, reference)
    assert tok.is_eog(tok.eos_id)
    assert tok.is_eog(end_id)
    assert tok.is_control(start_id) and tok.is_control(end_id)
    assert not tok.is_eog(start_id)
    ordinary = reference["Hello, world!"]["ids_no_bos"]
    assert not any(tok.is_eog(token) or tok.is_control(token) for token in ordinary)


def test_end_of_generation_set(tok, model_name):
    eog_ids = [token for token in range(tok.n_vocab) if tok.is_eog(token)]
    assert {tok.token_text(token) for token in eog_ids} == EOG_TEXTS[model_name]
    # llama.cpp promotes them all to control tokens (Gemma's </s> is typed user-defined in the file).
    assert all(tok.is_control(token) for token in eog_ids)


def test_unsupported_model_is_named(kv):
    with pytest.raises(ValueError, match=r"'rwkv'.*gpt2, llama"):
        Tokenizer.from_gguf({**kv, "tokenizer.ggml.model": "rwkv"})


def test_unsupported_pre_tokenizer_is_named(kv):
    if kv["tokenizer.ggml.model"] != "gpt2":
        pytest.skip("pre-tokenizers belong to BPE vocabularies")
    with pytest.raises(ValueError, match="'no-such-pre'.*smollm"):
        Tokenizer.from_gguf({**kv, "tokenizer.ggml.pre": "no-such-pre"})


# --- BPE pre-tokenizers (model-independent) -------------------------------------------------------

SAMPLE = "Hello world's 2024!!  ok\n\n x"
# Worked out by hand from the expressions in llama-vocab.cpp, applied one after another.
SPLITS = {
    "gpt-2": ["Hello", " world", "'s", " 2024", "!!", " ", " ok", "\n\n", " x"],
    "smollm": ["Hello", " world", "'s", " ", "2", "0", "2", "4", "!!", " ", " ok", "\n\n", " x"],
    "llama-bpe": ["Hello", " world", "'s", " ", "202", "4", "!!", " ", " ok", "\n\n", " x"],
    "qwen2": ["Hello", " world", "'s", " ", "2", "0", "2", "4", "!!", " ", " ok", "\n\n", " x"],
    "default": ["Hello", " world", "'", "s", " ", "202", "4", "!!", " ", " ok", "\n\n", " x"],
}


@pytest.mark.parametrize("pre", sorted(SPLITS))
def test_pre_tokenizer_splits(pre):
    assert Splitter(PRE_TOKENIZERS[pre].expressions)(SAMPLE) == SPLITS[pre]

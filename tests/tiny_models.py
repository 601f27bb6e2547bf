"""Tiny random GGUF models of each architecture we run, written with gguf-py's writer.

Real structure (every tensor an architecture loads, GQA, a real tokenizer kind), toy sizes, so tests
that need many model files (the fuzz battery) can open one in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_LAYER = 64, 4, 2, 16, 128, 2
CONTROL, BYTE = 3, 6


def _gpt2_vocab() -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE: GPT-2's 256 byte symbols, a few merges, one control token."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(0x100 + extra)
            extra += 1
    tokens = [alphabet[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
    tokens += [m.replace(" ", "") for m in merges]
    tokens.append("<|endoftext|>")
    types = [1] * (len(tokens) - 1) + [CONTROL]
    return tokens, types, merges


def _spm_vocab() -> tuple[list[str], list[int], list[float]]:
    """SentencePiece: pad/eos/bos/unk, Gemma's turn markers, byte fallback, a few pieces."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    types = [CONTROL, CONTROL, CONTROL, 2, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    pieces = ["▁", "▁the", "e", "t", "h", "a", "▁a", "in", "s", "o"]
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i) for i in range(len(pieces))]
    return tokens, types, scores


def _matrix(rng, n_out: int, n_in: int, qtype: GGMLQuantizationType):
    w = (rng.standard_normal((n_out, n_in)) * 0.2).astype(np.float32)
    if qtype == GGMLQuantizationType.F32:
        return w, None
    return quants.quantize(w, qtype), qtype


def _add(writer: GGUFWriter, name: str, array: np.ndarray, qtype) -> None:
    if qtype is None:
        writer.add_tensor(name, array)
    else:
        writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=qtype)


def write_tiny(path: Path, arch: str = "llama", qtype=GGMLQuantizationType.Q8_0, seed: int = 0) -> Path:
    """A two-layer `arch` ('llama' or 'gemma3') model at `path`."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(N_LAYER)
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        tokens, types, scores = _spm_vocab()
        w.add_key_length(HEAD_DIM)
        w.add_value_length(HEAD_DIM)
        w.add_sliding_window(8)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
    else:
        tokens, types, merges = _gpt2_vocab()
        w.add_rope_dimension_count(HEAD_DIM)
        w.add_vocab_size(len(tokens))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(tokens) - 1)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)
    n_vocab = len(tokens)
    _add(w, "token_embd.weight", *_matrix(rng, n_vocab, N_EMBD, qtype))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    for i in range(N_LAYER):
        for name, n_out, n_in in (("attn_q", N_HEAD * HEAD_DIM, N_EMBD), ("attn_k", N_HEAD_KV * HEAD_DIM, N_EMBD),
                                  ("attn_v", N_HEAD_KV * HEAD_DIM, N_EMBD), ("attn_output", N_EMBD, N_HEAD * HEAD_DIM),
                                  ("ffn_gate", N_FF, N_EMBD), ("ffn_up", N_FF, N_EMBD), ("ffn_down", N_EMBD, N_FF)):
            _add(w, f"blk.{i}.{name}.weight", *_matrix(rng, n_out, n_in, qtype))
        norms = ["attn_norm", "ffn_norm"]
        if arch == "gemma3":
            norms += ["post_attention_norm", "post_ffw_norm"]
        for name in norms:
            w.add_tensor(f"blk.{i}.{name}.weight", (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32))
        if arch == "gemma3":
            for name in ("attn_q_norm", "attn_k_norm"):
                w.add_tensor(f"blk.{i}.{name}.weight", np.ones(HEAD_DIM, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

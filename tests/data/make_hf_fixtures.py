"""Make the tiny Hugging Face checkpoints of tests/data/hf/ and transformers' float32 logits for them.

Needs torch, transformers, tokenizers and sentencepiece (not needed by `make test`, which only reads the
output). Each family gets a folder: config.json, model.safetensors (bfloat16, random weights, 2 layers),
its tokenizer files, and reference.npz with transformers' token ids and float32 logits for a few prompts.

    .venv/bin/python tests/data/make_hf_fixtures.py [family ...]
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).parent
OUT = HERE / "hf"
TRAIN_TEXT = (HERE / "hellaswag_sample.txt").read_text(encoding="utf-8")
VOCAB = 384
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "Hello"]
# Phi-3 also gets a prompt longer than its pre-training context of 64: both sides then take the long factors.
LONG_PROMPTS = {"phi3": [TRAIN_TEXT[:160]]}
# Phi-3's chat tokens, which llama.cpp (and llamapy) let eat the whitespace after them.
EXTRA_STRINGS = {"phi3": ["<|user|>\nHi there <|end|>\n<|assistant|>\n Sure"]}
# Strings whose ids our tokenizer must reproduce (special-token texts are added per family).
TOKENIZER_STRINGS = ["Hello world", "  leading spaces and\ttabs\n\nnewlines", "def f(x):\n    return x ** 2  # code",
                     "café naïve façade résumé", "日本語のテキスト 中文", "emoji 🦙🚀 done", "3.14159 and 1234567",
                     "I've been told he's there; 'RE you sure?"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                   "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, vocab_size=VOCAB)


def spm_tokenizer(folder: Path, cls=transformers.LlamaTokenizer, **special) -> transformers.PreTrainedTokenizerBase:
    """A small byte-fallback SentencePiece BPE model, llama-style ids (unk 0, bos 1, eos 2)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN_TEXT.splitlines()), model_writer=model,
                                   vocab_size=VOCAB, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
                                   remove_extra_whitespaces=False, split_digits=True, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return cls.from_pretrained(folder, **special)


def bpe_tokenizer(split: str, specials: list[str], bos: str | None) -> Tokenizer:
    """A small byte-level BPE tokenizer.json trained here, with the family's split regex."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(specials), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT.splitlines(), trainer)
    tok.add_special_tokens(specials)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def fast(tok: Tokenizer, template: str, **special) -> transformers.PreTrainedTokenizerFast:
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    wrapped.chat_template = template
    return wrapped


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from their inits, so every tensor (norms and biases too) shows in the logits.

    The head is kept small (logits of about ±0.3): the engine keeps llama.cpp's float16 KV cache, whose
    rounding (2^-11 relative) alone moves logits of ±5 by a few 1e-3."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise if p.ndim == 1 and "gemma" not in type(model).__name__.lower()
                        else 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            else:  # unit-variance activations, a small head
                scale = 0.05 if "lm_head" in name or "embed_tokens" in name else 1.0
                p.copy_(noise * scale * (1.0 / p.shape[-1]) ** 0.5)


FAMILIES = {}


def family(name):
    def register(fn):
        FAMILIES[name] = fn
        return fn
    return register


@family("llama2")
def llama2(folder):
    tok = spm_tokenizer(folder, add_bos_token=True)
    tok.chat_template = LLAMA2_TEMPLATE
    config = transformers.LlamaConfig(**COMMON, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2)
    return tok, transformers.LlamaForCausalLM(config)


@family("llama3")
def llama3(folder):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    template = CHATML.replace("im_start", "start_header_id")
    tok = fast(bpe_tokenizer(LLAMA3_SPLIT, specials, "<|begin_of_text|>"), template,
               bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    config = transformers.LlamaConfig(**COMMON, rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=True,
                                      bos_token_id=VOCAB - 5, eos_token_id=VOCAB - 1)
    return tok, transformers.LlamaForCausalLM(config)


@family("mistral")
def mistral(folder):
    tok = spm_tokenizer(folder, add_bos_token=True)
    tok.chat_template = LLAMA2_TEMPLATE
    config = transformers.MistralConfig(**COMMON, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
                                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return tok, transformers.MistralForCausalLM(config)


def qwen_tokenizer():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return fast(bpe_tokenizer(QWEN2_SPLIT, specials, None), CHATML, eos_token="<|im_end|>",
                pad_token="<|endoftext|>")


@family("qwen2")
def qwen2(folder):
    config = transformers.Qwen2Config(**COMMON, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                                      eos_token_id=VOCAB - 1)
    return qwen_tokenizer(), transformers.Qwen2ForCausalLM(config)


@family("qwen3")
def qwen3(folder):
    config = transformers.Qwen3Config(**COMMON, head_dim=32, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                      tie_word_embeddings=False, eos_token_id=VOCAB - 1)
    return qwen_tokenizer(), transformers.Qwen3ForCausalLM(config)


@family("gemma3")
def gemma3(folder):
    tok = spm_tokenizer(folder, cls=transformers.GemmaTokenizer, bos_token="<s>", eos_token="</s>",
                        unk_token="<unk>", pad_token="<unk>", add_bos_token=True)
    tok.chat_template = LLAMA2_TEMPLATE
    config = transformers.Gemma3TextConfig(**{**COMMON, "num_key_value_heads": 1, "vocab_size": len(tok)}, head_dim=16,
                                           query_pre_attn_scalar=16, sliding_window=4, rms_norm_eps=1e-6,
                                           rope_theta=1000000.0, rope_local_base_freq=10000.0,
                                           final_logit_softcapping=None, bos_token_id=1, eos_token_id=2,
                                           pad_token_id=0)
    config.architectures = ["Gemma3ForCausalLM"]
    return tok, transformers.Gemma3ForCausalLM(config)


@family("phi3")
def phi3(folder):
    tok = spm_tokenizer(folder, add_bos_token=True)
    # Phi-3's added tokens (llama.cpp needs <|endoftext|> to set Phi-3's whitespace-stripping rules).
    tok.add_tokens(["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"], special_tokens=True)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    head_dim = COMMON["hidden_size"] // COMMON["num_attention_heads"]
    g = torch.Generator().manual_seed(3)
    rope = {"rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": (1 + torch.rand(head_dim // 2, generator=g)).tolist(),
            "long_factor": (2 + 4 * torch.rand(head_dim // 2, generator=g)).tolist()}
    config = transformers.Phi3Config(**{**COMMON, "max_position_embeddings": 256, "vocab_size": len(tok)},
                                     original_max_position_embeddings=64,
                                     rope_parameters=rope, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0, sliding_window=None)
    return tok, transformers.Phi3ForCausalLM(config)


@family("glm4")
def glm4(folder):
    specials = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]
    template = ("[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok = fast(bpe_tokenizer(LLAMA3_SPLIT, specials, None), template, eos_token="<|endoftext|>",
               pad_token="<|endoftext|>")
    config = transformers.Glm4Config(**COMMON, head_dim=32, attention_bias=True, rms_norm_eps=1e-5,
                                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.5},
                                     tie_word_embeddings=False, eos_token_id=VOCAB - 6, pad_token_id=VOCAB - 6)
    return tok, transformers.Glm4ForCausalLM(config)


def write(name: str) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    tok, model = FAMILIES[name](folder)
    randomize(model, seed=sum(map(ord, name)))
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    arrays = {}
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS + LONG_PROMPTS.get(name, [])):
            ids = tok(prompt)["input_ids"]
            arrays[f"ids_{i}"] = np.array(ids, dtype=np.int64)
            arrays[f"logits_{i}"] = reference(torch.tensor([ids])).logits[0].numpy().astype(np.float32)
    strings = TOKENIZER_STRINGS + [" ".join(t for t in tok.all_special_tokens)] + EXTRA_STRINGS.get(name, [])
    for i, text in enumerate(strings):
        arrays[f"tok_{i}"] = np.array(tok(text)["input_ids"], dtype=np.int64)
    np.savez_compressed(folder / "reference.npz", **arrays)
    (folder / "tokenizer_strings.json").write_text(json.dumps(strings, ensure_ascii=False, indent=1))
    for junk in ("generation_config.json",):
        (folder / junk).unlink(missing_ok=True)
    print(name, sum(f.stat().st_size for f in folder.iterdir()) // 1024, "KiB", file=sys.stderr)


if __name__ == "__main__":
    for family_name in sys.argv[1:] or FAMILIES:
        write(family_name)

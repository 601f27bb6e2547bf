"""The Python API: `load(path)` gives a Model that tokenizes, scores and generates."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import numba
import numpy as np

from .chat.format import ChatFormat, chat_format
from .config import ConfigError, ModelConfig
from .generate import GenerationStep, generate
from .gguf.split import open_gguf as GGUFFile  # split-aware: a -00001-of-0000N.gguf shard opens them all
from .kv_cache import KVCache
from .models import check_architecture
from .models.blocks import Weights
from .numerics import numerics
from .options import RunOptions
from .sampling import SamplingParams
from .session import Session
from .threads import ThreadGovernor
from .tokenizer import Tokenizer
from .validate import ModelFileError, check_tensors, check_tokenizer_metadata


class Model:
    """A GGUF model ready to run: config, tokenizer and the architecture's forward pass."""

    def __init__(self, path: str | os.PathLike, options: RunOptions | None = None):
        self.path = str(path)
        self.options = options or RunOptions()
        self.gguf = GGUFFile(path, self.options.use_mmap, self.options.use_mlock)
        self.mlock_error = self.gguf.mlock_error
        kv = self.gguf.kv
        architecture = check_architecture(kv.get("general.architecture"))
        # Validated in full before anything is sized by the header (validate.py says what is guaranteed).
        check_tokenizer_metadata(self.path, kv)
        try:
            self.config = ModelConfig.from_gguf(kv)
        except ConfigError as e:
            raise ConfigError(f"{self.path}: {e}") from None
        check_tensors(self.path, self.gguf.tensors, self.config, architecture.tensor_specs(self.config))
        try:
            self.tokenizer = Tokenizer.from_gguf(kv)
        except ValueError as e:  # the tokenizer raises ValueError only for metadata it cannot run
            raise ModelFileError(f"{self.path}: {e}") from None
        self.net = architecture(Weights(self.gguf, numerics(self.options.numerics)), self.config)
        self.net.cache_types = (self.options.cache_type_k, self.options.cache_type_v)
        self.net.flash_attn = self.options.flash
        self._governors: dict[int, ThreadGovernor] = {}  # one per requested thread count

    # --- text ---------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    # --- numbers ------------------------------------------------------------------------------

    def new_cache(self, n_ctx: int) -> KVCache:
        return self.net.new_cache(n_ctx)

    def new_caches(self, n: int, n_ctx: int) -> list[KVCache]:
        """n caches of n_ctx positions for sequences decoded together (a server's slots): one pool,
        so that a decode step reaches them all in one call per block."""
        return self.net.new_caches(n, n_ctx)

    def forward(self, ids, cache: KVCache, all_logits: bool = False, logits_from: int | None = None) -> np.ndarray:
        """Extend `cache` with ids; logits float32 [n, n_vocab] of the last token (n = 1), of every
        token (all_logits), or of ids[logits_from:]."""
        ids = np.asarray(ids, dtype=np.int64)
        requested = min(self.options.threads_for(len(ids)) or numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        governor = None
        if len(ids) == 1 and self.options.adaptive_threads and requested > 1:
            governor = self._governors.setdefault(requested, ThreadGovernor(requested))
        n = governor.choose() if governor else requested
        before = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            start = time.perf_counter()
            logits = self.net.forward(ids, cache, all_logits=all_logits, logits_from=logits_from)
            if governor:
                governor.record(n, time.perf_counter() - start)
        finally:
            numba.set_num_threads(before)
        return logits

    def logits(self, ids, n_batch: int = 512) -> np.ndarray:
        """Logits at every position of ids, in a fresh context: [len(ids), n_vocab] float32."""
        ids = np.asarray(ids, dtype=np.int64)
        cache = self.new_cache(max(len(ids), 1))
        parts = [self.forward(ids[i:i + n_batch], cache, all_logits=True) for i in range(0, len(ids), n_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.config.n_vocab), np.float32)

    # --- text generation ----------------------------------------------------------------------

    def session(self, n_ctx: int, n_batch: int = 512) -> Session:
        """A KV cache of n_ctx positions and its token history, kept across generate calls."""
        return Session(self, n_ctx, n_batch)

    def sessions(self, n: int, n_ctx: int, n_batch: int = 512) -> list[Session]:
        """n sessions over one cache pool (new_caches), for sequences decoded in the same passes."""
        return [Session(self, n_ctx, n_batch, cache=c) for c in self.new_caches(n, n_ctx)]

    def generate(self, prompt: str | list[int], n_predict: int = 32, n_ctx: int | None = None,
                 n_batch: int = 512, session: Session | None = None, stop: Iterable[str] = (),
                 **sampling) -> Iterator[GenerationStep]:
        """Yield one GenerationStep per generated token (token id, text piece, timings).

        Without a session the model keeps one of its own per context size, so a prompt that shares a
        prefix with the previous call's (prompt + output) only evaluates what is new.
        """
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if session is None:
            n_ctx = n_ctx or min(self.config.n_ctx_train, len(ids) + max(n_predict, 0) + 1)
            session = self._own_session(n_ctx, n_batch)
        return generate(session, ids, n_predict, SamplingParams(**sampling), stop=stop)

    def _own_session(self, n_ctx: int, n_batch: int) -> Session:
        held = getattr(self, "_session", None)
        if held is None or held.n_ctx != n_ctx:
            held = self._session = Session(self, n_ctx, n_batch)
        held.n_batch = n_batch
        return held

    # --- chat ---------------------------------------------------------------------------------

    def chat_format(self, chat_template: str | None = None) -> ChatFormat:
        """The chat format: chat_template is a built-in's name, a Jinja text, or None (the model's own)."""
        return chat_format(self, chat_template)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: str | None = None, tools: list | None = None) -> str:
        """The conversation as the template writes it, as transformers' apply_chat_template(tokenize=False)."""
        return chat_format(self, chat_template).render(messages, add_generation_prompt, tools=tools)


def load(path: str | os.PathLike | None = None, options: RunOptions | None = None) -> Model:
    """Open a GGUF model: a path, or None for the default model (SmolLM2-135M-Instruct)."""
    from .hub import resolve_model

    return Model(resolve_model(path), options)

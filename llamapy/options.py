"""The performance parameters users tune, with llama.cpp's names, in one object (docs/performance.md).

None of them changes what a model computes except the KV cache types (-ctk/-ctv: q8_0 and q4_0
store rounded keys and values) and -fa off (another attention graph, other rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

from .kv_cache import cache_type, check_attention
from .numerics import DEFAULT, numerics

FLASH_ATTN = ("on", "off", "auto")


@dataclass(frozen=True)
class RunOptions:
    threads: int | None = None  # -t: generation (one token per pass); None: all cores
    threads_batch: int | None = None  # -tb: passes of several tokens (prompts); None: as -t
    n_ubatch: int = 512  # -ub: tokens per forward pass at most (llama.cpp's physical batch)
    cache_type_k: str = "f16"  # -ctk
    cache_type_v: str = "f16"  # -ctv
    flash_attn: str = "auto"  # -fa on|off|auto (auto: on, as our kernels are flash attention's)
    use_mmap: bool = True  # --no-mmap reads the file into memory instead
    use_mlock: bool = False  # --mlock pins the weights in RAM
    # Generation measures N threads against one and keeps the faster (threads.py): load on a core
    # must not make -t N slower than -t 1. Off: always -t (--no-adaptive-threads).
    adaptive_threads: bool = True
    # --numerics: exact (llama.cpp's AVX2 arithmetic bit for bit) or fast (numerics.py)
    numerics: str = DEFAULT.name

    def __post_init__(self):
        for name in ("threads", "threads_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{'-t' if name == 'threads' else '-tb'} must be at least 1, got {value}")
        if self.n_ubatch < 1:
            raise ValueError(f"-ub must be at least 1, got {self.n_ubatch}")
        cache_type(self.cache_type_k)
        cache_type(self.cache_type_v)
        if self.flash_attn not in FLASH_ATTN:
            raise ValueError(f"-fa takes on, off or auto, not {self.flash_attn!r}")
        check_attention(self.cache_type_v, self.flash)
        numerics(self.numerics)

    @property
    def flash(self) -> bool:
        return self.flash_attn != "off"

    def threads_for(self, n_tokens: int) -> int | None:
        """The thread count of a pass over n_tokens (-tb for batches, -t for single tokens)."""
        if n_tokens > 1 and self.threads_batch is not None:
            return self.threads_batch
        return self.threads

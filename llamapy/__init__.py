"""llamapy: llama.cpp's tools in Python, on GGUF models, with numba kernels.

    import llamapy
    model = llamapy.load()              # the default model, or load("path/to/model.gguf")
    for step in model.generate("The capital of France is", n_predict=16, temp=0):
        print(step.text, end="")
"""

import os

__version__ = "0.1.0"


def _numba_cache_dir() -> None:
    """numba caches compiled kernels beside the sources; where those are read-only (a system-wide
    install) send the cache to ~/.cache/llamapy/numba, so start-up stays fast after the first run.
    Must run before numba is imported."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.access(here, os.W_OK):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "llamapy", "numba")


def _named_cpu_features() -> None:
    """NUMBA_CPU_NAME=haswell alone still lets numba use every feature of the host (its feature list
    overrides the name); a named CPU should mean that CPU's own instruction set. Before numba import."""
    name = os.environ.get("NUMBA_CPU_NAME")
    if name and name != "host" and "NUMBA_CPU_FEATURES" not in os.environ:
        os.environ["NUMBA_CPU_FEATURES"] = ""  # empty: the named CPU's defaults


_numba_cache_dir()
_named_cpu_features()


def load(path=None, options=None):
    """Open a GGUF model (None: the default SmolLM2-135M-Instruct) with RunOptions (llamapy.options);
    see llamapy.model.Model."""
    from .model import load as _load

    return _load(path, options)


__all__ = ["__version__", "load"]

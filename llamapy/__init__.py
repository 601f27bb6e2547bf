"""llamapy: llama.cpp's tools in Python, on GGUF models, with numba kernels.

    import llamapy
    model = llamapy.load()              # the default model, or load("path/to/model.gguf")
    for step in model.generate("The capital of France is", n_predict=16, temp=0):
        print(step.text, end="")
"""

__version__ = "0.1.0"


def load(path=None):
    """Open a GGUF model (None: the default SmolLM2-135M-Instruct); see llamapy.model.Model."""
    from .model import load as _load

    return _load(path)


__all__ = ["load", "__version__"]

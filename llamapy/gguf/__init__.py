"""GGUF files: our own mmap reader (fast, validating); writing goes through gguf-py's GGUFWriter."""

from .reader import GGUFError, GGUFFile, TensorInfo

__all__ = ["GGUFError", "GGUFFile", "TensorInfo"]

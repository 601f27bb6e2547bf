"""Hugging Face checkpoint → GGUF (`llamapy convert`)."""

from .checkpoint import CheckpointError
from .core import OUTTYPES, ConvertResult, convert
from .families import FAMILIES, UnsupportedModel
from .vocab import TokenizerError

__all__ = ["FAMILIES", "OUTTYPES", "CheckpointError", "ConvertResult", "TokenizerError", "UnsupportedModel",
           "convert"]

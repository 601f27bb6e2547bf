"""llama.cpp's tokenizers: byte-level BPE and SentencePiece, built from GGUF metadata."""

from .decode import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["StreamDecoder", "Tokenizer"]

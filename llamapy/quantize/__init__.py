"""Quantizers: per-type quantizers, llama-quantize mixes, imatrix weighting."""

"""Pretraining data: stream raw corpora, clean and deduplicate them, tokenize into binary shards."""

from .prepare import PrepareOptions, prepare_corpus

__all__ = ["PrepareOptions", "prepare_corpus"]

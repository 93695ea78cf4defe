"""Objectives: small objects that turn a batch of token windows into a loss."""

# Importing an objective module registers its objectives.
from . import bptt_lm, causal_lm, denoising, electra, mlm, sentence_pairs, seq2seq  # noqa: F401
from .base import OBJECTIVES, Objective, get_objective, register

__all__ = ["OBJECTIVES", "Objective", "get_objective", "register"]

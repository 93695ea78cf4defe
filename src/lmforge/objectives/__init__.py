"""Objectives: small objects that turn a batch of token windows into a loss."""

from . import bptt_lm, causal_lm, mlm  # noqa: F401  (register themselves)
from .base import OBJECTIVES, Objective, get_objective, register

__all__ = ["OBJECTIVES", "Objective", "get_objective", "register"]

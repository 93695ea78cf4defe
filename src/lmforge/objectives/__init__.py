"""Objectives: small objects that turn a batch of token windows into a loss."""

from . import causal_lm  # noqa: F401  (registers itself)
from .base import OBJECTIVES, Objective, get_objective, register

__all__ = ["OBJECTIVES", "Objective", "get_objective", "register"]

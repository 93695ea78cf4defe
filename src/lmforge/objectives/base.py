"""The objective interface: the training engine asks an objective for windows of a given length,
hands it each batch of raw token windows and gets back a loss. Nothing else in the engine knows
what is being learned."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


class Objective:
    """Turns token windows into model inputs and a loss. Subclasses set ``name``."""

    name = "objective"

    def window_length(self, block_size: int) -> int:
        """Tokens per raw window drawn from the dataset for a model context of ``block_size``."""
        return block_size

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ConfigError if this objective cannot train ``model``."""

    def make_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """CPU tensors for one micro-batch, built from raw windows (B, window_length)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's predicted positions."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """RNG or curriculum state to checkpoint (objectives that sample masks use it)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str, **kwargs: Any) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)

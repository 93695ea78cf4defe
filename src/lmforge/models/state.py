"""A model's weights as saved: the state dict with tied copies stored once, strict loading with
a clear error, and reading a safetensors file. Shared by model folders, task heads, checkpoints
and the converters, so it sits below all of them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a model folder or checkpoint stores (the model's ``state_for_save``: tied
    copies stored once; a task model gives the backbone's names plus ``head.*``)."""
    return model.state_for_save()


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly (the model's ``load_saved_state``); any missing, unexpected or
    mis-shaped tensor is a clear error."""
    model.load_saved_state(state, source)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning truncation or corruption into a CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or unreadable weights file {path}: {str(exc).splitlines()[0]}") from None

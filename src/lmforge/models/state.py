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
    """State dict without the tied copy of the embedding (safetensors refuses shared storage).
    A task model (backbone + head) gives the backbone's names plus ``head.*``."""
    if hasattr(model, "state_for_save"):
        return model.state_for_save()
    state = model.state_dict()
    # Tied copies of the embedding are stored once (safetensors refuses shared storage).
    state.pop("mlm_head.embedding.weight", None)
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; any missing, unexpected or mis-shaped tensor is a clear error."""
    if hasattr(model, "load_saved_state"):
        return model.load_saved_state(state, source)
    expected = model_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {'; '.join(shapes[:3])}")
        raise CheckpointError(f"weights in {source} do not fit this architecture: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning truncation or corruption into a CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or unreadable weights file {path}: {str(exc).splitlines()[0]}") from None

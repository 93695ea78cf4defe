"""Hugging Face-style model folders: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``.

Weights are safetensors only (never pickle). Tied output weights are stored once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from .config import ModelConfig
from .lstm import LSTMLM
from .transformer import GPT

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME = "config.json", "model.safetensors", "tokenizer.json"


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    """The model class for ``cfg.arch``."""
    if cfg.arch == "encoder":
        from .encoder import Encoder
        return Encoder(cfg)
    if cfg.arch == "encoder-decoder":
        from .encoder_decoder import EncoderDecoder
        return EncoderDecoder(cfg)
    if cfg.arch == "lstm":
        return LSTMLM(cfg)
    return GPT(cfg)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the tied copy of the embedding (safetensors refuses shared storage)."""
    state = model.state_dict()
    # Tied copies of the embedding are stored once (safetensors refuses shared storage).
    state.pop("mlm_head.embedding.weight", None)
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; any missing, unexpected or mis-shaped tensor is a clear error."""
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


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the finished folder ``tmp`` at ``dest`` by renames only, so ``dest`` is never a
    half-written folder (the old one is moved aside first and deleted last)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def save_pretrained(model: torch.nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Write the model folder atomically (temp folder, then rename over the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.config.save(tmp / CONFIG_NAME)
        save_file(model_state(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            if isinstance(tokenizer, (str, Path)):
                shutil.copyfile(tokenizer, tmp / TOKENIZER_NAME)
            else:
                tokenizer.save(str(tmp / TOKENIZER_NAME))
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning truncation or corruption into a CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or unreadable weights file {path}: {str(exc).splitlines()[0]}") from None


def from_pretrained(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load an lmforge model folder (or a training run folder: its exported ``model/``)."""
    path = Path(path)
    if (path / "model" / CONFIG_NAME).is_file() and not (path / CONFIG_NAME).is_file():
        path = path / "model"
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} is not a model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = ModelConfig.load(path / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(cfg)
    load_model_state(model, load_weights(path / WEIGHTS_NAME), str(path))
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval()


def tokenizer_path(model_dir: str | Path) -> Path | None:
    """The tokenizer stored beside a model (model folder or run folder), if any."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / TOKENIZER_NAME, model_dir / "model" / TOKENIZER_NAME):
        if candidate.is_file():
            return candidate
    return None

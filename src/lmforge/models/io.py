"""Hugging Face-style model folders: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``.

Weights are safetensors only (never pickle). Tied output weights are stored once.
"""

from __future__ import annotations

import json
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
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"


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
    """The tensors a model folder or checkpoint stores (the model's ``state_for_save``: tied
    copies stored once; a task model gives the backbone's names plus ``head.*``)."""
    return model.state_for_save()


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly (the model's ``load_saved_state``); any missing, unexpected or
    mis-shaped tensor is a clear error."""
    model.load_saved_state(state, source)


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


def save_pretrained(model: torch.nn.Module, path: str | Path, tokenizer=None,
                    tokenizer_config: dict | None = None) -> Path:
    """Write the model folder atomically (temp folder, then rename over the old one).
    ``tokenizer_config`` (Hugging Face keys: chat_template, special token names) is kept as
    ``tokenizer_config.json`` beside the tokenizer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        config = {"lmforge": model.config.to_dict()}
        if hasattr(model, "spec"):  # a task model: its head's spec
            config["task"] = model.spec.to_dict()
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(model_state(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            if isinstance(tokenizer, (str, Path)):
                shutil.copyfile(tokenizer, tmp / TOKENIZER_NAME)
            else:
                tokenizer.save(str(tmp / TOKENIZER_NAME))
        if tokenizer_config:
            (tmp / TOKENIZER_CONFIG_NAME).write_text(
                json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
    """Load a model: an lmforge model folder (or a training run folder: its exported
    ``model/``), a Hugging Face model folder, or a GGUF file (see :mod:`lmforge.interop`)."""
    return load_model(path, device, dtype)[0]


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None):
    """(model, tokenizer or None, tokenizer_config dict) from any folder or file that
    :func:`from_pretrained` reads."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from ..interop.gguf import load_gguf
        return load_gguf(path, device=device, dtype=dtype)
    from ..interop.hf import is_hf_folder, load_hf
    if is_hf_folder(path):
        return load_hf(path, device=device, dtype=dtype)
    model = _load_lmforge(path, device, dtype)
    tok_path = tokenizer_path(path)
    tokenizer = None
    if tok_path is not None:
        from ..tokenization import load_tokenizer
        tokenizer = load_tokenizer(tok_path)
    tok_cfg = {}
    cfg_file = tok_path.parent / TOKENIZER_CONFIG_NAME if tok_path is not None else None
    if cfg_file is not None and cfg_file.is_file():
        try:
            tok_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {cfg_file}: {exc}") from None
    return model, tokenizer, tok_cfg


def _load_lmforge(path: Path, device, dtype) -> torch.nn.Module:
    if (path / "model" / CONFIG_NAME).is_file() and not (path / CONFIG_NAME).is_file():
        path = path / "model"
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} is not a model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = ModelConfig.load(path / CONFIG_NAME)
        task = json.loads((path / CONFIG_NAME).read_text()).get("task")
        model = build_model(cfg)
        if task is not None:
            from ..tasks.model import TaskModel, TaskSpec
            model = TaskModel(model, TaskSpec.from_dict(task))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
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

"""lmforge's own model folder format: ``config.json`` (an ``lmforge`` section) +
``model.safetensors`` (lmforge tensor names) + ``tokenizer.json``. A run's ``model/`` is written by
:func:`lmforge.interop.model_folder.save_pretrained`, which uses this format only for models with
no Hugging Face counterpart and otherwise a folder transformers loads.

Weights are safetensors only (never pickle). Tied output weights are stored once. Reading any
other kind of model (a Hugging Face folder, a GGUF file, a preset name) is :mod:`lmforge.hub`'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError, ConfigError
from ..files import atomic_dir
from .config import ModelConfig
from .lstm import LSTMLM
from .quantized import apply_quantized_layout, quantization_of
from .state import load_model_state, load_weights, model_state  # noqa: F401 (re-exported)
from .task_head import TaskModel, TaskSpec
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


def save_pretrained(model: torch.nn.Module, path: str | Path, tokenizer=None,
                    tokenizer_config: dict | None = None) -> Path:
    """Write the model folder atomically (temp folder, then rename over the old one).
    ``tokenizer_config`` (Hugging Face keys: chat_template, special token names) is kept as
    ``tokenizer_config.json`` beside the tokenizer."""
    config = {"lmforge": model.config.to_dict()}
    if hasattr(model, "spec"):  # a task model: its head's spec
        config["task"] = model.spec.to_dict()
    if quantization_of(model) is not None:  # rebuilt by load_lmforge_folder before loading
        config["quantization"] = quantization_of(model)
    with atomic_dir(path) as tmp:
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
    return Path(path)


def load_lmforge_folder(path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model of an lmforge model folder, or of a training run folder (its ``model/``);
    a folder with a ``task`` section in its config gives a :class:`TaskModel`, one with a
    ``quantization`` section the quantized model (see :mod:`lmforge.models.quantized`)."""
    path = Path(path)
    if (path / "model" / CONFIG_NAME).is_file() and not (path / CONFIG_NAME).is_file():
        path = path / "model"
    if not path.exists():
        raise CheckpointError(f"model not found: {path}")
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} is not a model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = ModelConfig.load(path / CONFIG_NAME)
        saved = json.loads((path / CONFIG_NAME).read_text())
        model = build_model(cfg)
        if saved.get("task") is not None:
            model = TaskModel(model, TaskSpec.from_dict(saved["task"]))
        if saved.get("quantization") is not None:  # quantized layers, shaped to load into
            apply_quantized_layout(model, saved["quantization"], str(path))
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

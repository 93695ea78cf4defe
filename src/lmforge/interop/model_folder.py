"""The model folder lmforge writes (a run's ``model/``, :func:`save_pretrained`): wherever the
model has a Hugging Face family (GPT-2, Llama, Qwen2, BERT, T5, BART and their task heads), the
folder is a Hugging Face folder that ``transformers.AutoModel*.from_pretrained`` loads as is
(``config.json`` with ``model_type``, weights under HF names, tokenizer files HF reads), and the
exact lmforge config sits beside the HF keys under ``"lmforge"`` (plus ``"task"`` for a task
head), so lmforge reads it back bit for bit. Other models (LSTMs, configs with no HF counterpart)
keep lmforge's own format: the ``"lmforge"`` config and lmforge tensor names, no ``model_type``.

    save_pretrained(model, "out/model", tokenizer)
    model, tok, tok_cfg = load_model_folder("out/model")   # or the run folder "out"
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from ..errors import CheckpointError, ConfigError
from ..files import atomic_dir
from ..models import io
from ..models.config import ModelConfig
from .hf import family_of, hf_layout, hf_table, read_safetensors, state_from_hf, write_hf_tokenizer

log = logging.getLogger(__name__)
EXTRA_PREFIX = "lmforge."  # lmforge tensors without a place in the Hugging Face class


def save_pretrained(model: torch.nn.Module, path: str | Path, tokenizer: Tokenizer | str | Path | None = None,
                    tokenizer_config: dict | None = None) -> Path:
    """Write ``model`` (and its tokenizer: an object or a tokenizer.json path) as a model folder,
    atomically: transformers-loadable where the model has a Hugging Face family, lmforge's own
    format otherwise (see the module docstring). Returns the folder."""
    if isinstance(tokenizer, (str, Path)):
        from ..tokenization import load_tokenizer
        tokenizer = load_tokenizer(tokenizer)
    try:
        layout = hf_layout(model, tokenizer, tokenizer_config)
    except ConfigError as exc:  # no HF counterpart: the lmforge format, which says so
        log.info(f"saving in lmforge's own format, not loadable by transformers: {exc}")
        return io.save_pretrained(model, path, tokenizer, tokenizer_config=tokenizer_config)
    # Tensors the HF class has no place for (a pooler under a token-classification head, ...)
    # are kept under lmforge's names with a prefix: transformers skips them, lmforge reads them.
    state = io.model_state(model)
    mapped = {e.ours for e in layout.table}
    weights = {**layout.state, **{EXTRA_PREFIX + k: v for k, v in state.items() if k not in mapped}}
    config = {**layout.config, "lmforge": model.config.to_dict()}
    if getattr(model, "spec", None) is not None:
        config["task"] = model.spec.to_dict()
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / io.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, str(tmp / io.WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model.config, layout.names, tokenizer_config, layout.family)
            if tokenizer_config:  # the model's own keys (chat template, token names) win
                written = json.loads((tmp / io.TOKENIZER_CONFIG_NAME).read_text(encoding="utf-8"))
                (tmp / io.TOKENIZER_CONFIG_NAME).write_text(json.dumps(
                    {**written, **tokenizer_config}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def model_folder(path: str | Path) -> Path:
    """``path``, or its ``model/`` when ``path`` is a training run folder."""
    path = Path(path)
    if (path / "model" / io.CONFIG_NAME).is_file() and not (path / io.CONFIG_NAME).is_file():
        return path / "model"
    return path


def has_hf_names(path: str | Path) -> bool:
    """Whether the lmforge model folder ``path`` (or a run folder's model/) stores its weights
    under Hugging Face names (config.json has both ``model_type`` and ``lmforge``)."""
    config = model_folder(path) / io.CONFIG_NAME
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data and "lmforge" in data


def load_model_folder(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model in an lmforge model folder or run folder, in either format, in eval mode."""
    folder = model_folder(path)
    if not has_hf_names(folder):
        return io.load_lmforge_folder(folder, device, dtype)
    data = json.loads((folder / io.CONFIG_NAME).read_text())
    where = str(folder)
    try:
        cfg = ModelConfig.from_dict(data["lmforge"], where=where)
        model = io.build_model(cfg)
        if data.get("task") is not None:
            from ..models.task_head import TaskModel, TaskSpec
            model = TaskModel(model, TaskSpec.from_dict(data["task"]))
        _, _, table = hf_table(model, family_of(cfg), (data.get("architectures") or [None])[0])
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    tensors = read_safetensors(folder)
    state = state_from_hf(table, tensors.get, where)
    state |= {k.removeprefix(EXTRA_PREFIX): v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    io.load_model_state(model, state, where)
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval()

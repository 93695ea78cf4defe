"""Load any model from anywhere: the one place that knows every kind of model source.

    model = from_pretrained("runs/gpt")                      # a training run (its model/)
    model, tok, tok_cfg = load_model("HuggingFaceTB/...")    # a Hugging Face folder
    model, tok, tok_cfg = load_model("smollm2.gguf")         # a GGUF file
    model, tok, tok_cfg = load_model("gpt2")                 # a preset: random weights, no tokenizer

It sits above :mod:`lmforge.models` (lmforge folders) and :mod:`lmforge.interop` (Hugging Face
and GGUF) so that neither has to import the other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .errors import CheckpointError
from .interop.gguf import load_gguf
from .interop.hf import is_hf_folder, load_hf
from .interop.model_folder import load_model_folder
from .models.config import PRESETS, preset
from .models.io import TOKENIZER_CONFIG_NAME, build_model, tokenizer_path
from .tokenization import load_tokenizer

log = logging.getLogger(__name__)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Load a model: an lmforge model folder (or a training run folder: its exported
    ``model/``), a Hugging Face model folder, a GGUF file, or a preset name (see
    ``lmforge models``; random weights)."""
    return load_model(path, device, dtype)[0]


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None):
    """(model, tokenizer or None, tokenizer_config dict) from any folder, file or preset name
    that :func:`from_pretrained` reads."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, device=device, dtype=dtype)
    if not path.exists():
        if str(path) in PRESETS:
            return _preset_model(str(path), device, dtype)
        raise CheckpointError(f"model not found: {path} (not a folder, .gguf file or preset; "
                              "see `lmforge models`)")
    if is_hf_folder(path):
        return load_hf(path, device=device, dtype=dtype)
    model = load_model_folder(path, device, dtype)  # either layout of lmforge's own folder
    tok_path = tokenizer_path(path)
    tokenizer = load_tokenizer(tok_path) if tok_path is not None else None
    tok_cfg = {}
    cfg_file = tok_path.parent / TOKENIZER_CONFIG_NAME if tok_path is not None else None
    if cfg_file is not None and cfg_file.is_file():
        try:
            tok_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {cfg_file}: {exc}") from None
    return model, tokenizer, tok_cfg


def _preset_model(name: str, device, dtype):
    """A preset's architecture with freshly initialised weights and no tokenizer."""
    log.warning("model '%s' is a preset name, not a saved model: its weights are random "
                "(untrained)", name)
    model = build_model(preset(name))
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval(), None, {}

"""Models: one config-driven Transformer and its presets, saved as Hugging Face-style folders."""

from .config import PRESETS, ModelConfig, preset
from .io import build_model, from_pretrained, save_pretrained
from .lstm import LSTMLM
from .transformer import GPT, KVCache

__all__ = ["GPT", "KVCache", "LSTMLM", "ModelConfig", "PRESETS", "preset", "build_model",
           "from_pretrained", "save_pretrained"]

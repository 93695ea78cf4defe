"""Models: one config-driven Transformer and its presets, and lmforge's own model folder format
(a run's model/ is written by lmforge.interop.model_folder, which transformers loads)."""

from .config import PRESETS, ModelConfig, preset
from .io import build_model, from_pretrained, save_pretrained
from .lstm import LSTMLM
from .transformer import GPT, KVCache

__all__ = ["GPT", "KVCache", "LSTMLM", "ModelConfig", "PRESETS", "preset", "build_model",
           "from_pretrained", "save_pretrained"]

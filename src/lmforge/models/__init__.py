"""Models: one config-driven Transformer and its presets, task heads, and lmforge's own model
folder format (a run's model/ is written by lmforge.interop.model_folder, which transformers loads).

Loading a model from anywhere (a folder, a run, a Hugging Face folder, a GGUF file or a preset
name) is :func:`lmforge.hub.from_pretrained`, one layer up."""

from .config import PRESETS, ModelConfig, preset
from .io import build_model, save_pretrained
from .lstm import LSTMLM
from .task_head import TaskModel, TaskSpec
from .transformer import GPT, KVCache

__all__ = ["GPT", "KVCache", "LSTMLM", "ModelConfig", "PRESETS", "TaskModel", "TaskSpec", "preset",
           "build_model", "save_pretrained"]

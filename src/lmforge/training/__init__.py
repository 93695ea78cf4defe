"""The training engine and its components (optimizer, schedules, checkpoints, metrics)."""

from .config import TrainConfig
from .engine import Trainer, load_run_config, pretrain

__all__ = ["TrainConfig", "Trainer", "load_run_config", "pretrain"]

"""The training run's configuration: one typed dataclass; every field is also a CLI flag."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .time_budget import UNPLANNED_STEPS, parse_duration

log = logging.getLogger(__name__)


# Fields with a fixed set of values (the CLI lists them in --help and checks them).
CHOICES = {"schedule": ("cosine", "linear", "constant", "wsd"), "optimizer": ("adamw", "sgd"),
           "sampling": ("random", "sequential"), "precision": ("auto", "fp32", "bf16", "fp16"),
           "parallel": ("ddp", "fsdp", "tp")}


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Everything that defines a training run (the model's shape lives in ``model_args``)."""

    data: str = _help("prepared dataset folder (from `lmforge prepare`)", "")
    out_dir: str = _help("run folder for checkpoints, metrics, plots and the final model", "runs/run")
    model: str = _help("preset name (see `lmforge models`) or a model folder to start from", "gpt-mini")
    model_args: dict = _help("architecture overrides, e.g. {n_layer: 4} (flags: --n-layer 4)", None)
    objective: str = _help("training objective", "causal_lm")
    objective_args: dict = _help("objective options as JSON, e.g. {\"mask_prob\": 0.15}", None)
    block_size: int | None = _help("tokens per training sequence (default: min(512, model context))", None)
    batch_size: int = _help("sequences per micro-batch", 16)
    grad_accum: int = _help("micro-batches per optimizer step", 1)
    max_steps: int | None = _help("optimizer steps to train for (default 1000, unless --epochs is given)", None)
    time: str | None = _help("wall-clock budget of the training loop, e.g. 90s, 30m, 2h: max_steps "
                             "follows from the speed measured over a few steps after warm-up so the "
                             "LR schedule ends with the budget (max_steps, if given, caps it); a hard "
                             "stop at the budget + 5% still saves and exports", None)
    epochs: float | None = _help("train for this many passes over the training set instead of "
                                 "max_steps (fine-tuning; evaluates each epoch unless eval_interval is set)", None)
    sampling: str = _help("random windows or sequential epochs", "random")
    optimizer: str = _help("adamw or sgd", "adamw")
    lr: float = _help("peak learning rate", 6e-4)
    min_lr: float | None = _help("final learning rate of decaying schedules (default lr/10)", None)
    schedule: str = _help("cosine, linear, constant or wsd (warmup-stable-decay)", "cosine")
    warmup_steps: int = _help("linear warmup steps", 100)
    decay_fraction: float = _help("share of steps spent decaying in the wsd schedule", 0.2)
    weight_decay: float = _help("decoupled weight decay (not on norms, biases, embeddings)", 0.1)
    beta1: float = _help("AdamW beta1", 0.9)
    beta2: float = _help("AdamW beta2", 0.95)
    eps: float = _help("AdamW epsilon", 1e-8)
    momentum: float = _help("SGD momentum", 0.9)
    grad_clip: float = _help("clip the global gradient norm to this (0 = off)", 1.0)
    head_lr: float | None = _help("learning rate of a task head (default: lr)", None)
    layer_decay: float = _help("layer-wise LR decay: block i of L trains at lr * decay^(L - i) "
                               "(embeddings at decay^(L + 1)); 1 = off", 1.0)
    dropout: float | None = _help("override the model's dropout", None)
    precision: str = _help("auto, fp32, bf16 (autocast) or fp16 (CUDA, with GradScaler)", "auto")
    compile: bool = _help("torch.compile the model", False)
    device: str = _help("auto, cpu, cuda, cuda:N or mps", "auto")
    threads: int = _help("CPU threads for torch (0 = torch's default)", 0)
    parallel: str = _help("under torchrun: ddp (replicated weights, gradients all-reduced), fsdp "
                          "(FSDP2: weights, gradients and optimizer state sharded) or tp (tensor "
                          "parallel attention and MLP linears)", "ddp")
    activation_checkpointing: bool = _help("recompute each block's activations in backward "
                                           "(less memory, about a third more compute)", False)
    dist_timeout: int = _help("seconds a rank waits for the others in a collective before the "
                              "job fails (torchrun runs)", 600)
    seed: int = _help("random seed (model init, sampling, dropout)", 1337)
    eval_interval: int = _help("evaluate every N steps (0 = only at the end)", 250)
    eval_batches: int = _help("validation batches per evaluation (a fixed set)", 20)
    log_interval: int = _help("log train loss every N steps", 10)
    save_interval: int = _help("checkpoint every N steps (0 = at evaluations and the end)", 0)
    keep_last: int = _help("checkpoints to keep besides the best-by-validation one", 2)
    best_metric: str = _help("validation metric that picks the best checkpoint and drives early "
                             "stopping (losses and perplexities: lower is better; others: higher)", "val_loss")
    patience: int = _help("stop after this many evaluations without a better best_metric (0 = off)", 0)
    export_best: bool = _help("export the best checkpoint's weights as the run's model (default: the last)", False)
    peak_tflops: float = _help("device peak TFLOP/s for the MFU estimate (0 = measure/guess)", 0.0)
    tensorboard: bool = _help("write TensorBoard event files", True)
    progress: bool = _help("progress bar on a terminal (in a log file or a pipe: step lines)", True)

    # The run length when neither max_steps nor epochs is given (a subclass may default to epochs).
    default_length = ("max_steps", 1000)

    def resolve_length(self) -> None:
        """Whichever of max_steps and epochs the user gave wins; both given: max_steps, with a
        warning; neither: ``default_length``."""
        if self.max_steps is not None and self.epochs is not None:
            log.warning(f"warning: both max_steps ({self.max_steps}) and epochs ({self.epochs:g}) "
                        "are given; max_steps wins")
            self.epochs = None
        if self.max_steps is None and self.epochs is None:
            if self.time is not None:  # planned from the measured speed once training runs
                self.max_steps = UNPLANNED_STEPS
            else:
                setattr(self, *self.default_length)

    def validate(self) -> "TrainConfig":
        self.resolve_length()
        positive = ("batch_size", "grad_accum", "eval_batches",
                    "log_interval", "keep_last", "dist_timeout")
        if self.max_steps is not None:
            positive += ("max_steps",)
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval", "warmup_steps", "threads", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}' must be >= 0, got {getattr(self, name)}")
        if self.block_size is not None and self.block_size <= 0:
            raise ConfigError(f"config field 'block_size' must be a positive integer, got {self.block_size}")
        if not self.lr > 0:
            raise ConfigError(f"config field 'lr' must be positive, got {self.lr}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"config field 'min_lr' must be in [0, lr], got {self.min_lr}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config field '{name}' must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"config field 'weight_decay' must be in [0, 1), got {self.weight_decay}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"config field 'decay_fraction' must be in (0, 1], got {self.decay_fraction}")
        if self.grad_clip < 0:
            raise ConfigError(f"config field 'grad_clip' must be >= 0, got {self.grad_clip}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"config field 'dropout' must be in [0, 1), got {self.dropout}")
        if self.time is not None:
            parse_duration(self.time)
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"config field 'epochs' must be positive, got {self.epochs}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ConfigError(f"config field 'head_lr' must be positive, got {self.head_lr}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"config field 'layer_decay' must be in (0, 1], got {self.layer_decay}")
        if not self.best_metric.startswith("val_"):
            raise ConfigError(f"config field 'best_metric' must name a validation metric "
                              f"(val_loss, val_accuracy, ...), got {self.best_metric!r}")
        if not self.data:
            raise ConfigError("config field 'data' is required: a folder made by `lmforge prepare`")
        return self

    @property
    def best_is_lower(self) -> bool:
        """Whether a lower ``best_metric`` is better (losses, perplexities, error rates)."""
        return any(word in self.best_metric for word in ("loss", "ppl", "perplexity", "error"))

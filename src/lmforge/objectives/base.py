"""The objective interface: the training engine asks an objective for windows of a given length,
hands it each batch of raw token windows and gets back a loss. Nothing else in the engine knows
what is being learned."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch

from ..config import options_from_dict
from ..data.dataset import RandomWindows, SequentialWindows, TokenShards, fixed_windows
from ..errors import ConfigError


@dataclasses.dataclass
class NoOptions:
    """An objective without options."""


def option(default: Any, help: str) -> Any:
    """A field of an objective's or task's options dataclass, with its help text."""
    return dataclasses.field(default=default, metadata={"help": help})


class Objective:
    """Turns token windows into model inputs and a loss. Subclasses set ``name``."""

    name = "objective"
    # Whether ``--compile`` may compile the whole loss (model + loss head) as one graph: only for
    # losses of fixed shapes (no data-dependent selection, which would recompile or break).
    compile_loss = False
    # Whether each row of ``make_batch``'s output depends only on the same row of its input (no
    # random draws over the batch, no padding to the batch's longest row). Then a data-parallel
    # rank's sampler reads only the rank's rows (``train_sampler(rows=...)``) and the run stays
    # equal to one process; otherwise every rank builds the global batch and keeps its rows.
    rank_local_rows = False
    # Whether the objective carries state from one batch to the next (per-stream recurrent
    # state), so that it must run in one process.
    carries_state = False
    # Whether the loss calls only the model's forward (FSDP and TP wrap forward; generation at
    # evaluation calls more).
    forward_only = True
    # The typed options (``--objective_args`` / ``--NAME.option`` flags), read as ``self.options``.
    Options: type = NoOptions
    noun = "objective"  # what error messages call it ("task" for fine-tuning tasks)

    def __init__(self, tokenizer=None, meta: dict | None = None, **options: Any):
        """``tokenizer`` (a ``tokenizers.Tokenizer``, if the dataset has one) and the dataset's
        ``meta`` give objectives their special token ids; ``options`` (from
        ``TrainConfig.objective_args``) fill ``self.options``, an instance of ``Options``."""
        self.tokenizer, self.meta = tokenizer, meta or {}
        self.options = options_from_dict(self.Options, options, where=f"{self.noun} '{self.name}'")

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        """Models the loss uses besides the trained one (e.g. a distillation teacher). The
        Trainer moves them to the run's device, puts them in eval mode and freezes them; they
        are neither optimized nor saved in checkpoints."""
        return {}

    def training_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the engine trains, checkpoints and evaluates for the built ``model``: the
        model itself, or a composite around it (ELECTRA adds a generator and a head) whose
        ``exported_model()`` is what the run exports."""
        return model

    def prepare_model(self, model: torch.nn.Module, data: TokenShards | None = None) -> None:
        """Fit a loaded model to the objective before training (e.g. add a missing head);
        called before ``check_model``, the optimizer and any checkpoint load. Default: nothing."""

    def window_length(self, block_size: int) -> int:
        """Tokens per raw window drawn from the dataset for a model context of ``block_size``."""
        return block_size

    def train_sampler(self, data: TokenShards, block_size: int, batch_size: int, seed: int,
                      sampling: str = "random", **rows):
        """The training batch source: ``next_batch()`` gives what ``make_batch`` takes, and
        ``state_dict()`` / ``load_state_dict()`` make its position part of a checkpoint.
        Default: random or sequential windows of ``window_length(block_size)`` tokens.
        ``rows=(lo, hi)`` (only where ``rank_local_rows``): read just those rows of each batch."""
        cls = RandomWindows if sampling == "random" else SequentialWindows
        return cls(data, self.window_length(block_size), batch_size, seed=seed, **rows)

    def eval_batches(self, data: TokenShards, block_size: int, batch_size: int, count: int) -> list:
        """A fixed list of ``count`` ready validation batches (the same at every evaluation)."""
        windows = fixed_windows(data, self.window_length(block_size), count * batch_size)
        return [self.make_batch(w) for w in windows.split(batch_size)]

    @contextlib.contextmanager
    def fixed_generator(self, seed: int = 1234):
        """Swap in a fixed ``self.generator`` while building validation batches, so their
        masks/noise are the same at every evaluation and training's generator never moves."""
        saved, self.generator = self.generator, torch.Generator().manual_seed(seed)
        try:
            yield
        finally:
            self.generator = saved

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ConfigError if this objective cannot train ``model``."""

    def make_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """CPU tensors for one micro-batch, built from raw windows (B, window_length)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's predicted positions."""
        raise NotImplementedError

    def eval_metrics(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
        """Extra validation metrics as (sum, count) pairs, averaged over the validation set
        (e.g. masked-token accuracy)."""
        return {}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: list, device: torch.device,
                 autocast_ctx) -> dict[str, float]:
        """Validation metrics over ready ``batches``: the mean loss (and its perplexity) and the
        averaged ``eval_metrics``. Task objectives override this to score whole-set metrics
        (F1, correlation, ...) from gathered predictions. ``autocast_ctx()`` gives the run's
        autocast context."""
        losses, sums = [], {}
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx():
                losses.append(self.loss(model, batch).item())
                for name, (total, count) in self.eval_metrics(model, batch).items():
                    acc = sums.setdefault(name, [0.0, 0])
                    acc[0], acc[1] = acc[0] + total, acc[1] + count
        val = float(sum(losses) / max(len(losses), 1))
        extra = {f"val_{name}": total / max(count, 1) for name, (total, count) in sums.items()}
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0)), **extra}

    def log_metrics(self) -> dict[str, float]:
        """Counters to log with the training loss (e.g. how many pairs were truncated)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """RNG or carried state to checkpoint (tensor values are stored as tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str, tokenizer=None, meta: dict | None = None, **options: Any) -> Objective:
    """Instantiate objective ``name`` with the dataset's tokenizer/meta and its options."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](tokenizer=tokenizer, meta=meta, **options)

"""The one training engine. It builds the run's components from a ``TrainConfig`` and loops:
draw windows, let the objective compute a loss, step the optimizer, evaluate, checkpoint.
It knows nothing about what the objective learns.

Launched by torchrun it runs on every rank (see :mod:`.distributed`): the parallelism is applied
to the model from outside, each rank trains on its rows of the global batch, losses and token
counts are summed over ranks, and only rank 0 logs and writes run files."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .. import __version__
from ..config import from_dict, load_file, save_yaml
from ..data.dataset import MissingSplitError, TokenShards
from ..errors import CheckpointError, ConfigError, DataError, DistributedError
from ..files import atomic_dir
from ..hub import from_pretrained
from ..models.config import ModelConfig, preset
from ..interop.model_folder import save_pretrained as save_model_folder
from ..models.io import build_model, tokenizer_path
from ..objectives import Objective, get_objective
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .metrics import MetricsLogger, Progress
from .optim import build_optimizer, lr_at
from .time_budget import HARD_STOP_TOLERANCE, UNPLANNED_STEPS, TimeBudget, parse_duration
from .plots import plot_loss
from ..runtime import (autocast, batch_flops, flops_per_token, peak_tflops, resolve_device,
                      resolve_precision)

CONFIG_FILE = "config.yaml"

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Components:
    """What a run's setup builds for the Trainer's loop: the model to train, the objective
    (which may own frozen models used in the loss, see ``Objective.frozen_modules``), the
    training and validation data the objective reads, and what is exported with the model."""

    model: torch.nn.Module
    objective: Objective
    train_data: Any
    val_data: Any = None
    export_tokenizer: Any = None  # a tokenizer file or object saved with the model
    tokenizer_config: dict = dataclasses.field(default_factory=dict)


def batch_tokens(batch: dict, default: int) -> int:
    """Real (unpadded) tokens a batch feeds the model: its attention mask's count when it has
    one (padded fine-tuning batches), else ``default`` (full windows)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else default


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Override the dropout of a built model: Dropout modules and attention's float rate."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        elif hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = p


def build_model_for(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """A fresh model from a preset, or one loaded from a model folder (fine-tuning, continued
    pretraining). ``model_args`` override preset fields; the vocab follows the dataset."""
    args = dict(cfg.model_args or {})
    if Path(cfg.model).is_dir():
        model = from_pretrained(cfg.model)
        if args:
            raise ConfigError("model_args cannot change the architecture of a pretrained model "
                              f"({cfg.model}); drop {', '.join(args)}")
        if cfg.dropout is not None:
            set_dropout(model, cfg.dropout)
        return model.train()
    args.setdefault("vocab_size", vocab_size)
    if cfg.dropout is not None:
        args["dropout"] = cfg.dropout
    return build_model(preset(cfg.model, **args))


def pretraining_components(cfg: TrainConfig) -> Components:
    """Pretraining: shards from ``cfg.data``, a preset or pretrained model, the objective."""
    train_data = TokenShards(cfg.data, "train")
    try:
        val_data = TokenShards(cfg.data, "val")
    except MissingSplitError:
        val_data = None
    tokenizer_file = Path(cfg.data) / "tokenizer.json"
    model = build_model_for(cfg, train_data.vocab_size)
    _check_compatible(cfg, train_data, model, tokenizer_file)
    tokenizer = None
    if tokenizer_file.is_file():
        from ..tokenization import load_tokenizer
        tokenizer = load_tokenizer(tokenizer_file)
    objective = get_objective(cfg.objective, tokenizer=tokenizer, meta=train_data.meta,
                              **(cfg.objective_args or {}))
    return Components(model, objective, train_data, val_data,
                      export_tokenizer=tokenizer_file if tokenizer_file.is_file() else None)


def _check_compatible(cfg: TrainConfig, train_data: TokenShards, model: torch.nn.Module,
                      tokenizer_file: Path) -> None:
    vocab, model_vocab = train_data.vocab_size, model.config.vocab_size
    if vocab > model_vocab:
        raise DataError(f"tokenizer/shard vocab mismatch: dataset {cfg.data} uses a "
                        f"vocab of {vocab} but the model has {model_vocab} embeddings")
    if Path(cfg.model).is_dir():
        model_tok = tokenizer_path(cfg.model)
        if model_tok is not None and tokenizer_file.is_file():
            from ..tokenization import load_tokenizer, tokenizer_sha256
            if tokenizer_sha256(load_tokenizer(model_tok)) != train_data.meta.get("tokenizer_sha256"):
                raise DataError(f"tokenizer/shard mismatch: dataset {cfg.data} was tokenized "
                                f"with a different tokenizer than model {cfg.model}")


class Trainer:
    """Builds model, objective, data, optimizer, logger and checkpointer; ``fit()`` trains."""

    command = "pretrain"  # the CLI command that resumes this kind of run

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg.validate()
        self.ranks = distributed.launch_ranks(cfg.parallel)
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = distributed.rank_device(resolve_device(cfg.device), self.ranks)
        distributed.init_process_group(self.ranks, self.device, cfg.dist_timeout)
        distributed.main_decides(lambda: self._check_run_dir(resume, overwrite))
        self.precision = resolve_precision(cfg.precision, self.device)
        seed_everything(cfg.seed)
        parts = self.setup()
        self.objective = parts.objective
        # Fit the built model to the objective (a missing head), then let the objective wrap it
        # (ELECTRA's generator + discriminator): the wrapped module is what trains.
        self.objective.prepare_model(parts.model, parts.train_data)
        self.model = self.objective.training_model(parts.model)
        self.train_data, self.val_data = parts.train_data, parts.val_data
        self.export_tokenizer, self.tokenizer_config = parts.export_tokenizer, parts.tokenizer_config
        mcfg: ModelConfig = self.model.config
        self.block_size = cfg.block_size or min(512, mcfg.context_length)
        if self.block_size > mcfg.context_length:
            raise ConfigError(f"config field 'block_size' ({self.block_size}) is larger than the "
                              f"model context ({mcfg.context_length}); lower it or raise "
                              "--context-length for a new model")
        self.objective.check_model(self.model)
        distributed.check_parallel(self.model, self.ranks, self.precision, self.objective)
        self.model.to(self.device)
        for frozen in self.objective.frozen_modules().values():  # e.g. a distillation teacher
            frozen.to(self.device).eval().requires_grad_(False)
        # FSDP and TP shard the model in place; rank 0 keeps an empty copy to export into.
        sharded = self.ranks.distributed and self.ranks.parallel != "ddp"
        self.skeleton = distributed.meta_copy(self.model) if sharded and self.ranks.is_main else None
        self._loaded, full_optimizer_state = self._load_before_sharding() if resume else (None, None)
        if cfg.activation_checkpointing:
            distributed.checkpoint_activations(self.model)
        if cfg.compile and self.ranks.distributed:
            distributed.compile_blocks(self.model)  # one process: the whole model, below
        distributed.parallelize(self.model, self.ranks, self.precision, self.device)
        if self.ranks.rank:
            torch.manual_seed(cfg.seed + self.ranks.rank)  # every rank its own dropout
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        if full_optimizer_state is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(self.model, self.optimizer, full_optimizer_state,
                                     options=StateDictOptions(full_state_dict=True))
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        if resume:
            self._keep_global_batch()
        # One global micro-batch stream, the same on every rank; each reads (row-local
        # objectives) or keeps (the others) its own rows of it.
        global_batch = cfg.batch_size * self.ranks.data_parallel
        self.rows_read_locally = self.ranks.data_parallel > 1 and self.objective.rank_local_rows
        rows = {"rows": self.ranks.row_range(global_batch)} if self.rows_read_locally else {}
        self.sampler = self.objective.train_sampler(self.train_data, self.block_size, global_batch,
                                                    cfg.seed, cfg.sampling, **rows)
        if cfg.epochs is not None:
            self._steps_from_epochs()
        self._finish_schedule(resume)
        # The validation windows of the global batch (every rank evaluates all of them).
        self.val_batches = (self.objective.eval_batches(self.val_data, self.block_size,
                                                        cfg.batch_size,
                                                        cfg.eval_batches * self.ranks.data_parallel)
                            if self.val_data is not None else None)
        compile_whole = cfg.compile and not self.ranks.distributed
        self.forward_model = torch.compile(self.model) if compile_whole else self.model
        if compile_whole and self.objective.compile_loss:  # the model and its loss as one graph
            self.loss_module = torch.compile(distributed.ObjectiveLoss(self.model, self.objective))
        else:
            self.loss_module = distributed.data_parallel(
                distributed.ObjectiveLoss(self.forward_model, self.objective), self.ranks, self.device)
        self.step, self.tokens_seen = 0, 0
        self.best_val, self.best_step, self.evals_since_best = math.inf, None, 0
        self._stop_signal = None
        self._resumed = resume
        if resume:
            self._resume()
        else:
            # Only now, with everything built: a run that fails to start leaves no folder
            # behind and (with --overwrite) the previous run untouched.
            distributed.main_decides(lambda: self._make_run_dir(overwrite))
            if self.ranks.is_main:
                save_yaml(self._resolved_config(), self.run_dir / CONFIG_FILE)

    # ---- set-up -------------------------------------------------------------------------
    def setup(self) -> Components:
        """The components of a pretraining run: shards from ``cfg.data``, a preset or
        pretrained model, the objective. Other kinds of run (fine-tuning) override this."""
        return pretraining_components(self.cfg)

    def _check_run_dir(self, resume: bool, overwrite: bool) -> None:
        if resume:
            if not (self.run_dir / CONFIG_FILE).is_file():
                raise CheckpointError(f"cannot resume: {self.run_dir} is not a run folder (no {CONFIG_FILE})")
            return
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"output folder {self.run_dir} is a file")
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()) and not overwrite:
            raise ConfigError(f"output folder {self.run_dir} already exists; pass --overwrite "
                              "to replace it or --resume to continue it")

    def _make_run_dir(self, overwrite: bool) -> None:
        self._check_run_dir(False, overwrite)  # nothing appeared there since the first check
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _finish_schedule(self, resume: bool) -> None:
        """Called once max_steps is known. Warns (on a new run) when warmup covers the whole
        run: the learning rate then never reaches its peak nor decays."""
        cfg = self.cfg
        if not resume and self.ranks.is_main and cfg.warmup_steps >= cfg.max_steps:
            log.warning(f"warning: warmup_steps ({cfg.warmup_steps}) covers the whole run of "
                        f"{cfg.max_steps} steps, so the learning rate never reaches its peak; "
                        "lower --warmup-steps")

    def _steps_from_epochs(self) -> None:
        """max_steps (and, unless set, eval_interval: once per epoch) from ``epochs``."""
        per_epoch = getattr(self.sampler, "batches_per_epoch", None)
        if per_epoch is None:
            raise ConfigError("config field 'epochs' needs a finite training set: use it for "
                              "fine-tuning or with --sampling sequential")
        steps_per_epoch = max(1, per_epoch // self.cfg.grad_accum)
        self.cfg.max_steps = max(1, math.ceil(self.cfg.epochs * steps_per_epoch))
        if not self.cfg.eval_interval:
            self.cfg.eval_interval = steps_per_epoch

    def _resolved_config(self) -> dict:
        data = dataclasses.asdict(self.cfg)
        data["block_size"] = self.block_size
        if self.cfg.epochs is not None:  # the user chose epochs: max_steps follows from them
            data["max_steps"] = None
        data["resolved"] = {"model_config": self.model.config.to_dict(), "device": str(self.device),
                            "precision": self.precision, "lmforge_version": __version__,
                            "torch_version": str(torch.__version__),
                            "parameters": self.model.num_parameters(),
                            "world_size": self.ranks.world_size, "max_steps": self.cfg.max_steps}
        return data

    def _keep_global_batch(self) -> None:
        """Resuming on another number of data-parallel ranks: keep the global batch (and so the
        data order and the loss curve) by changing the per-rank batch."""
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if latest is None or not (latest / "state.json").is_file():
            return
        saved = ckpt.read_state(latest)
        before, now = saved.get("data_parallel", 1), self.ranks.data_parallel
        global_batch = saved.get("global_batch")
        if global_batch is None or before == now:
            return
        if global_batch % now:
            raise ConfigError(f"checkpoint {latest} has a global batch of {global_batch} rows, "
                              f"which {now} data-parallel ranks cannot share evenly")
        self.cfg.batch_size = global_batch // now

    def _resume(self) -> None:
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if latest is None:
            return  # killed before the first checkpoint: start over from step 0
        if self._loaded is not None:
            state, tensors = self._loaded
        else:
            distributed.main_decides(lambda: ckpt.verify(latest))
            self._check_layout(latest)
            state, tensors = ckpt.load_checkpoint(latest, self.model, self.optimizer, verified=True)
        saved = ckpt.TrainState.from_files(state, tensors)
        if ModelConfig.from_dict(saved.model_config) != self.model.config:
            raise CheckpointError(f"checkpoint {latest} is of another architecture than this run's config")
        self.load_train_state(saved)

    def _load_before_sharding(self) -> tuple[tuple[dict, dict] | None, dict | None]:
        """A one-process (unsharded) checkpoint resumed under FSDP loads into the plain model
        before it is sharded; its optimizer state, as a full state dict keyed by parameter name,
        is sharded into the run's optimizer once that exists. Returns ((state, tensors), that
        optimizer state), or Nones when the checkpoint loads the usual way."""
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if (latest is None or not self.ranks.distributed or self.ranks.parallel != "fsdp"
                or ckpt.is_sharded(latest)):
            return None, None
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        distributed.main_decides(lambda: ckpt.verify(latest))
        optimizer = build_optimizer(self.model, self.cfg, self.device)
        loaded = ckpt.load_checkpoint(latest, self.model, optimizer, verified=True)
        return loaded, get_optimizer_state_dict(self.model, optimizer)

    def _check_layout(self, latest: Path) -> None:
        """Refuse a checkpoint whose weight layout this run cannot read: tensor-parallel
        checkpoints resume on the same TP degree only."""
        saved = ckpt.read_state(latest)
        before = saved.get("tensor_parallel", 1)
        now = self.ranks.world_size if self.ranks.distributed and self.ranks.parallel == "tp" else 1
        if before != now:
            raise CheckpointError(f"checkpoint {latest} was written with {before}-way tensor "
                                  f"parallelism and this run uses {now}; resume it with "
                                  f"--parallel {'tp' if before > 1 else 'ddp or fsdp'} on "
                                  f"{before if before > 1 else 'any number of'} rank(s)")

    # ---- the loop -----------------------------------------------------------------------
    @functools.cached_property
    def flops_per_token(self) -> float:
        """Training FLOPs per token of the model at the block size (for the logged MFU)."""
        return flops_per_token(self.model, self.block_size)

    def _train_step(self) -> tuple[float, int, float]:
        """One optimizer step: (mean loss, the job's tokens, the job's FLOPs)."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        total, tokens, flops = 0.0, 0, 0.0
        for micro in range(cfg.grad_accum):
            batch = self.objective.make_batch(self.sampler.next_batch())
            if not self.rows_read_locally:
                batch = self.ranks.own_rows(batch)
            micro_tokens = batch_tokens(batch, cfg.batch_size * self.block_size)
            tokens += micro_tokens
            flops += batch_flops(self.model, batch, micro_tokens, self.flops_per_token)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with distributed.gradient_sync(self.loss_module, self.model, micro == cfg.grad_accum - 1):
                with autocast(self.device, self.precision):
                    loss = self.loss_module(batch) / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            distributed.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        local_tokens = tokens
        if self.ranks.distributed:
            total, tokens = self._reduce_step(total, tokens)
        self.tokens_seen += tokens
        if not math.isfinite(total):
            raise DataError(f"loss became {total} at step {self.step}; lower lr or check the data")
        # The job's FLOPs: its tokens at this rank's FLOPs per token (no extra all-reduce).
        return total, tokens, flops * tokens / max(local_tokens, 1)

    def _reduce_step(self, loss: float, tokens: int) -> tuple[float, int]:
        """The step's loss averaged and its tokens summed over ranks; a Ctrl-C on any rank
        stops every rank after the same step."""
        world, replicas = self.ranks.world_size, self.ranks.world_size // self.ranks.data_parallel
        stop = float(self._stop_signal is not None)
        loss_sum, token_sum, stops = distributed.all_reduce_sum([loss, tokens, stop], self.device)
        if stops and self._stop_signal is None:
            self._stop_signal = signal.SIGINT
        return loss_sum / world, int(token_sum) // replicas

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The objective's validation metrics (by default the mean loss over the fixed
        validation batches, its perplexity and averaged extras such as MLM accuracy)."""
        if self.val_batches is None:
            return {}
        self.model.eval()
        try:
            return self.objective.evaluate(self.forward_model, self.val_batches, self.device,
                                           lambda: autocast(self.device, self.precision))
        finally:
            self.model.train()

    def _improved(self, value: float) -> bool:
        if math.isinf(self.best_val):
            return True
        return value < self.best_val if self.cfg.best_is_lower else value > self.best_val

    def save(self) -> Path:
        """Checkpoint the run (every rank calls this in a distributed run)."""
        state, tensors = self.train_state().files()
        if self.ranks.distributed:
            path = ckpt.save_sharded(self.ckpt_dir, self.step, self.model, self.optimizer, state,
                                     tensors, self.ranks.rank)
        else:
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.model, self.optimizer,
                                        state, tensors)
        if self.ranks.is_main:
            keep = {f"step-{self.best_step:08d}"} if self.best_step is not None else set()
            ckpt.prune(self.ckpt_dir, self.cfg.keep_last, keep)
        return path

    def train_state(self) -> ckpt.TrainState:
        """The run's position as one checkpointable object (every rank calls this in a
        distributed run: it gathers their RNG streams)."""
        json_rng, tensors = ckpt.rng_state()
        rank_rng = distributed.all_gather_object((json_rng, tensors)) if self.ranks.distributed else []
        for rank, (_, rng_tensors) in enumerate(rank_rng[1:], start=1):
            tensors.update({f"rank{rank}.{k}": v for k, v in rng_tensors.items()})
        return ckpt.TrainState(
            step=self.step, tokens_seen=self.tokens_seen, best_val=self.best_val,
            best_step=self.best_step, evals_since_best=self.evals_since_best, rng=json_rng,
            rng_tensors=tensors, rank_rng=[json_part for json_part, _ in rank_rng],
            data=self.sampler.state_dict(), objective=self.objective.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            model_config=self.model.config.to_dict(), config=dataclasses.asdict(self.cfg),
            layout=self._layout(), lmforge_version=__version__)

    def load_train_state(self, state: ckpt.TrainState) -> None:
        """Continue from ``state``: counters, best validation, this rank's RNG streams, the
        sampler's and the objective's positions, the loss scaler."""
        self.step, self.tokens_seen = state.step, state.tokens_seen
        self.best_val, self.best_step = state.best_val, state.best_step
        self.evals_since_best = state.evals_since_best
        rng = state.rank_rng_state(self.ranks.rank)
        if rng is not None:  # a rank the saving run did not have keeps its fresh dropout stream
            ckpt.set_rng_state(*rng)
        self.sampler.load_state_dict(state.data)
        self.objective.load_state_dict(state.objective)
        if self.scaler is not None and state.scaler is not None:
            self.scaler.load_state_dict(state.scaler)

    def _layout(self) -> dict:
        """The world a checkpoint was written by: what resuming needs to keep the global batch
        and to read the weights."""
        ranks = self.ranks
        tp = ranks.world_size if ranks.distributed and ranks.parallel == "tp" else 1
        return {"world_size": ranks.world_size, "data_parallel": ranks.data_parallel,
                "global_batch": self.cfg.batch_size * ranks.data_parallel,
                "parallel": ranks.parallel if ranks.distributed else None, "tensor_parallel": tp}

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self._stop_signal = signum

    def fit(self) -> dict:
        """Train to ``max_steps``; returns the final metrics. Ctrl-C or SIGTERM saves and stops
        cleanly."""
        cfg, ranks = self.cfg, self.ranks
        logger = MetricsLogger(self.run_dir, cfg.tensorboard, enabled=ranks.is_main)
        progress = Progress(cfg.max_steps, self.step, cfg.progress and ranks.is_main,
                            silent=not ranks.is_main)
        # MFU of the whole job: global tokens/s against the peak of all its devices.
        peak = (cfg.peak_tflops or peak_tflops(self.device.type, self.precision)) * ranks.world_size
        # Ctrl-C, and SIGTERM (a scheduler's preemption, torchrun stopping its workers): save
        # and stop cleanly after the current step.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.block_size * ranks.data_parallel
        self.model.train()
        metrics: dict = {}
        where = (f"{ranks.world_size} ranks ({ranks.parallel}, {self.device.type})"
                 if ranks.distributed else str(self.device))
        progress.write(f"training {self.model.num_parameters() / 1e6:.2f}M parameters on "
                       f"{where} ({self.precision}), {tokens_per_step} tokens/step, "
                       f"steps {self.step}->" + (f"{cfg.max_steps}" if cfg.max_steps < UNPLANNED_STEPS
                                                 else f"(planned for --time {cfg.time})"))
        window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
        window_loss, window_n = 0.0, 0
        # --time: plan max_steps from the measured speed (new runs; a resumed run keeps its plan).
        budget = None
        if cfg.time is not None and not self._resumed:
            cap = cfg.max_steps if cfg.max_steps < UNPLANNED_STEPS else None
            budget = TimeBudget(parse_duration(cfg.time), tokens_per_step, cap)
        try:
            while self.step < cfg.max_steps:
                loss, tokens, flops = self._train_step()
                if budget is not None and (planned := budget.after_step(self.step)) is not None:
                    self._plan_steps(planned, budget.plan, progress)
                window_tokens, window_flops = window_tokens + tokens, window_flops + flops
                window_loss, window_n = window_loss + loss, window_n + 1
                last = self.step == cfg.max_steps
                if self.step % cfg.log_interval == 0 or last or self.step == 1:
                    elapsed = time.perf_counter() - window_start
                    tps = window_tokens / max(elapsed, 1e-9)
                    mfu = window_flops / max(elapsed, 1e-9) / (peak * 1e12)
                    metrics = {"train_loss": window_loss / window_n, "lr": lr_at(self.step - 1, cfg),
                               "tokens_per_sec": tps, "mfu": mfu, "tokens": self.tokens_seen,
                               **self.objective.log_metrics()}
                    logger.log(self.step, **metrics)
                    progress.update(0, loss=f"{metrics['train_loss']:.4f}", tok_s=f"{tps:,.0f}",
                                    mfu=f"{100 * mfu:.1f}%")
                    if not progress.enabled:  # a log file or a pipe: plain lines, no bar
                        progress.write(f"step {self.step}/{cfg.max_steps} | loss {metrics['train_loss']:.4f} "
                                       f"| {tps:,.0f} tok/s | MFU {100 * mfu:.1f}%")
                    window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
                    window_loss, window_n = 0.0, 0
                progress.update(1)
                evaluate = last or (cfg.eval_interval and self.step % cfg.eval_interval == 0)
                if evaluate and self.val_batches is not None:
                    val = self.evaluate()
                    metrics.update(val)
                    logger.log(self.step, **val)
                    extra = "".join(f", {k.removeprefix('val_')} {v:.4f}" for k, v in val.items()
                                    if k not in ("val_loss", "val_ppl"))
                    ppl = f", ppl {val['val_ppl']:.2f}" if "val_ppl" in val else ""
                    progress.write(f"step {self.step}: val loss {val['val_loss']:.4f}{ppl}{extra}")
                    if cfg.best_metric not in val:
                        raise ConfigError(f"config field 'best_metric' is {cfg.best_metric!r}, but "
                                          f"validation reports only {', '.join(val)}")
                    if self._improved(val[cfg.best_metric]):
                        self.best_val, self.best_step = val[cfg.best_metric], self.step
                        self.evals_since_best = 0
                    else:
                        self.evals_since_best += 1
                        if cfg.patience and self.evals_since_best >= cfg.patience:
                            progress.write(f"early stopping at step {self.step}: {cfg.best_metric} "
                                           f"has not improved on {self.best_val:.4f} (step "
                                           f"{self.best_step}) for {cfg.patience} evaluations")
                            self.save()
                            break
                save_due = cfg.save_interval and self.step % cfg.save_interval == 0
                if last or save_due or (not cfg.save_interval and evaluate):
                    self.save()
                if self._stop_signal is not None:
                    break
                if budget is not None and budget.overdue() and self.step < cfg.max_steps:
                    progress.write(f"time budget {cfg.time} (+{100 * HARD_STOP_TOLERANCE:.0f}%) "
                                   f"used up at step {self.step}/{cfg.max_steps}: stopping")
                    if self.val_batches is not None:
                        val = self.evaluate()
                        metrics.update(val)
                        logger.log(self.step, **val)
                    self.save()
                    break
        except Exception as exc:
            if ranks.distributed and distributed.is_lost_rank(exc):
                raise self._lost_rank(exc) from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if budget is not None:
                progress.write(f"time budget {cfg.time}: the training loop ran {budget.elapsed():.1f} s "
                               f"({self.step} steps)")
            progress.close()
            logger.close()
        loop_seconds = budget.elapsed() if budget is not None else None  # before export
        interrupted = self._stop_signal is not None
        if interrupted:
            self.save()
            progress.write(f"interrupted at step {self.step}: checkpoint saved; continue with "
                           f"`lmforge {self.command} --resume {self.run_dir}`")
        best = None if math.isinf(self.best_val) else self.best_val
        if cfg.export_best and self.best_step is not None and self.best_step != self.step:
            best_ckpt = self.ckpt_dir / f"step-{self.best_step:08d}"
            distributed.main_decides(lambda: ckpt.verify(best_ckpt))
            ckpt.load_model_weights(best_ckpt, self.model, verified=True)
            progress.write(f"exporting the best checkpoint (step {self.best_step}, "
                           f"{cfg.best_metric} {best:.4f})")
        self.export()
        if budget is not None:
            metrics["time_budget"] = {**(budget.plan or {}), "elapsed_s": loop_seconds,
                                      "hard_stopped": self.step < cfg.max_steps}
        return {**metrics, "step": self.step, "interrupted": interrupted,
                f"best_{cfg.best_metric}": best, "best_step": self.best_step}

    def _plan_steps(self, planned: int, plan: dict, progress) -> None:
        """Fix max_steps from the time budget's measurement; the config records the plan."""
        self.cfg.max_steps = planned
        progress.set_total(planned)
        progress.write(f"time budget {self.cfg.time}: {plan['tokens_per_sec']:,.0f} tok/s "
                       f"({plan['seconds_per_step'] * 1e3:.1f} ms/step over {plan['measured_steps']} "
                       f"steps) -> max_steps {planned}")
        if self.ranks.is_main:
            data = self._resolved_config()
            data["resolved"]["time_budget"] = plan
            save_yaml(data, self.run_dir / CONFIG_FILE)

    def _lost_rank(self, exc: BaseException) -> DistributedError:
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        kept = f"the last checkpoint ({latest.name}) is intact" if latest else "no checkpoint was written"
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0])  # gloo's source line
        return DistributedError(
            f"rank {self.ranks.rank} stopped at step {self.step}: another rank died or did not "
            f"answer within {self.cfg.dist_timeout} s ({reason[:120]}); {kept}: continue with "
            f"`lmforge {self.command} --resume {self.run_dir}`")

    def export(self) -> Path:
        """The usable model folder (``RUN_DIR/model``) and the loss curve PNG, written by rank 0
        (a sharded model is gathered to it first)."""
        out = self.run_dir / "model"
        model = self.model
        if self.ranks.distributed and self.ranks.parallel != "ddp":
            model = distributed.gathered_model(self.model, self.skeleton, self.ranks)
        if self.ranks.is_main:
            save_model_folder(model.exported_model(), out, self.export_tokenizer,
                              tokenizer_config=self.tokenizer_config)
            for name, part in model.companion_models().items():  # e.g. ELECTRA's generator
                save_companion(part, self.run_dir / name)
            try:
                plot_loss(self.run_dir)
            except DataError:
                pass
        distributed.barrier()
        return out


def save_companion(module: torch.nn.Module, out: Path) -> None:
    """A companion model's weights (``model.safetensors``) and config (``config.json``)."""
    with atomic_dir(out) as tmp:
        config = module.config.to_dict() if hasattr(module, "config") else {}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})


def load_run_config(run_dir: str | Path, overrides: dict | None = None,
                    cls: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """The saved config (a ``cls``) of a run, with ``overrides`` (e.g. a larger max_steps)
    applied; a new max_steps replaces the saved epochs and the other way round."""
    data = load_file(Path(run_dir) / CONFIG_FILE)
    data.pop("resolved", None)
    overrides = dict(overrides or {})
    for given, other in (("max_steps", "epochs"), ("epochs", "max_steps")):
        if given in overrides and other not in overrides:
            data.pop(other, None)
    data.update(overrides)
    data["out_dir"] = str(run_dir)
    return from_dict(cls, data, where=str(Path(run_dir) / CONFIG_FILE))


def pretrain(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Python entry point of `lmforge pretrain`: build a Trainer and fit it."""
    return Trainer(cfg, resume=resume, overwrite=overwrite).fit()

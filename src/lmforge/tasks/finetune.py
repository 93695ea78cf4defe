"""Fine-tuning runs: the one training engine with a task objective and a task model.

``FinetuneConfig`` adds the task's data and head options to ``TrainConfig`` (every field is a
flag of `lmforge finetune`); ``FinetuneTrainer`` only replaces how data, model and objective are
set up, then evaluates the exported (best) model once more and writes ``eval.json`` (and a
confusion-matrix PNG for classification). ``finetune(cfg, seeds)`` repeats a run per seed and
reports mean and standard deviation.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..hub import load_model
from ..models.config import preset
from ..models.io import build_model
from ..models.lora import apply_lora, merge_lora, trainable_parameters
from ..models.task_head import TaskModel, TaskSpec
from ..config import with_defaults
from ..training.config import TrainConfig
from ..training.engine import Components, Trainer, load_run_config, set_dropout
from .base import TaskObjective, get_task

log = logging.getLogger(__name__)


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


# TrainConfig with fine-tuning defaults (BERT's recipe, scaled for small models).
FinetuneTraining = with_defaults(
    TrainConfig, "FinetuneTraining", "TrainConfig's fields with fine-tuning defaults.",
    data=("", "training file: .tsv/.csv/.jsonl (GLUE folders recognised), CoNLL, SQuAD JSON, or "
              "NAME=FILE,NAME=FILE (one example per line per class)"),
    out_dir=("runs/finetune", "run folder"),
    model=("", "pretrained model (lmforge or Hugging Face folder, run folder, .gguf) or a preset "
               "name with --tokenizer (random init)"),
    epochs=(None, "passes over the training set (default 3, unless --max-steps is given)"),
    batch_size=(32, "examples per micro-batch"),
    lr=(1e-4, "peak learning rate of the body"),
    min_lr=(0.0, "final learning rate"),
    schedule=("linear", "cosine, linear, constant or wsd"),
    warmup_steps=(0, "linear warmup steps (default: warmup_ratio of the run)"),
    weight_decay=(0.01, "decoupled weight decay"),
    beta2=0.999,
    eval_interval=(0, "evaluate every N steps (0 = once per epoch)"),
    eval_batches=(1, "(unused: fine-tuning evaluates the whole validation set)"),
    best_metric=("auto", "metric for the best checkpoint and early stopping (default: the "
                         "task's, e.g. val_accuracy)"),
    export_best=(True, "export the best checkpoint's weights"),
    keep_last=(1, "checkpoints kept besides the best"),
    log_interval=(20, "log every N steps"),
)


@dataclass
class FinetuneConfig(FinetuneTraining):
    """A fine-tuning run: TrainConfig's fields (with fine-tuning defaults) plus the task's."""

    default_length = ("epochs", 3.0)

    task: str = _help("classification, regression, token-classification, qa, seq2seq or sft", "classification")
    val_data: str = _help("validation file (default: hold out val_fraction of the training data)", "")
    val_fraction: float = _help("share of training examples held out when there is no val_data", 0.1)
    max_train_examples: int = _help("train on a fixed random subset of this many examples (0 = all)", 0)
    tokenizer: str | None = _help("tokenizer for a preset model (default: the model's own)", None)
    from_scratch: bool = _help("same architecture and tokenizer as --model, randomly initialized", False)
    text_column: str | None = _help("text column/field (default: sentence, text, sentence1, ...)", None)
    text_pair_column: str | None = _help("second text of a pair (default: sentence2, ... if present)", None)
    label_column: str | None = _help("label column/field (default: label, score, ...)", None)
    encoding: str = _help("encoding of the data files", "utf-8")
    pooling: str = _help("sequence representation: auto, pooler, cls, mean or last", "auto")
    class_weights: str | None = _help("'balanced' weighs classes by inverse frequency", None)
    task_args: dict = _help("task options as JSON (e.g. {\"doc_stride\": 128} for qa)", None)
    trainable_layers: int | None = _help("train only the last N Transformer blocks and the head "
                                         "(0 = frozen body; default: all)", None)
    lora_r: int = _help("LoRA rank (0 = full fine-tuning)", 0)
    lora_alpha: float = _help("LoRA scale numerator (update scaled by alpha / r)", 16.0)
    lora_dropout: float = _help("dropout on the LoRA input", 0.0)
    lora_targets: str = _help("comma-separated linear layer names or globs for LoRA", "attn.qkv,attn.proj")
    warmup_ratio: float = _help("share of the steps spent warming up, if warmup_steps is 0", 0.1)

    def validate(self) -> "FinetuneConfig":
        if not self.data:
            raise ConfigError("config field 'data' is required: the training file")
        if not self.model:
            raise ConfigError("config field 'model' is required: a pretrained model folder or a preset")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"config field 'val_fraction' must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"config field 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if self.max_train_examples < 0:
            raise ConfigError(f"config field 'max_train_examples' must be >= 0, got {self.max_train_examples}")
        if self.lora_r < 0:
            raise ConfigError(f"config field 'lora_r' must be >= 0, got {self.lora_r}")
        if self.trainable_layers is not None and self.trainable_layers < 0:
            raise ConfigError(f"config field 'trainable_layers' must be >= 0, got {self.trainable_layers}")
        saved = self.best_metric
        self.best_metric = "val_loss" if saved == "auto" else saved
        super().validate()
        self.best_metric = saved
        return self


def fixed_pick(count: int, n: int) -> set[int]:
    """``n`` of ``count`` indices drawn at random with seed 0: the same for every run seed (and
    both arms of an experiment)."""
    return set(np.random.default_rng(0).permutation(count)[:n].tolist())


def split_validation(rows: list, fraction: float) -> tuple[list, list]:
    """A fixed random hold-out."""
    val = fixed_pick(len(rows), max(1, int(round(fraction * len(rows)))))
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def subsample(rows: list, n: int) -> list:
    """A fixed random subset, in the original order."""
    keep = fixed_pick(len(rows), n)
    return [r for i, r in enumerate(rows) if i in keep]


class FinetuneTrainer(Trainer):
    """The engine with a task: labeled files in, a task model out."""

    command = "finetune"

    def setup(self) -> Components:
        """The components of a fine-tuning run: the task objective over the labeled files, the
        backbone with the task's head (LoRA or frozen layers applied)."""
        cfg: FinetuneConfig = self.cfg
        backbone, tokenizer, tok_cfg = self._load_backbone()
        max_length = cfg.block_size or min(512, backbone.config.context_length)
        task_cls = get_task(cfg.task)
        existing = getattr(backbone, "spec", None)
        if existing is not None:  # a task model: keep its head when the task is the same
            if existing.task != task_cls.head:
                backbone = backbone.backbone
                existing = None
        options = dict(cfg.task_args or {})
        if task_cls.head in ("classification", "regression"):
            options |= dict(text_column=cfg.text_column, text_pair_column=cfg.text_pair_column,
                            label_column=cfg.label_column, encoding=cfg.encoding)
            if task_cls.head == "classification":
                options |= dict(class_weights=cfg.class_weights,
                                labels=existing.labels if existing is not None else None)
        elif existing is not None and existing.labels:
            options["labels"] = existing.labels
        if task_cls.head is None:  # generative tasks: the chat template, special tokens
            options |= dict(tokenizer_config=tok_cfg, encoding=cfg.encoding)
        objective: TaskObjective = task_cls(tokenizer, backbone.kind, max_length, **options)
        train_rows = objective.read(cfg.data)
        if cfg.val_data:
            val_rows = objective.read(cfg.val_data)
        elif len(train_rows) < 2:  # holding one out would leave nothing to train on
            raise DataError(f"{cfg.data}: only {len(train_rows)} example; fine-tuning needs at "
                            "least 2 (some are held out for validation), or a val_data file")
        else:
            train_rows, val_rows = split_validation(train_rows, cfg.val_fraction)
        if 0 < cfg.max_train_examples < len(train_rows):
            train_rows = subsample(train_rows, cfg.max_train_examples)
        objective.fit_labels(train_rows)
        self.train_examples = len(train_rows)
        if cfg.best_metric == "auto":
            cfg.best_metric = objective.default_metric
        model = backbone
        if task_cls.head is not None:
            spec = dict(objective.spec_options())
            spec["extra"] = {"max_length": max_length, **spec.get("extra", {})}
            model = backbone if existing is not None else TaskModel(
                backbone, TaskSpec(task=task_cls.head, pooling=cfg.pooling, **spec))
        train_data = objective.featurize(train_rows, training=True)
        val_data = objective.featurize(val_rows, training=False)
        if not train_data:
            raise DataError(f"{cfg.data}: no usable training examples")
        self._restrict_training(model)
        self.val_rows = val_rows
        return Components(model, objective, train_data, val_data, export_tokenizer=tokenizer,
                          tokenizer_config=tok_cfg)

    def _load_backbone(self):
        cfg: FinetuneConfig = self.cfg
        from ..tokenization import load_tokenizer
        if Path(cfg.model).exists():
            model, tokenizer, tok_cfg = load_model(cfg.model)
            if cfg.tokenizer:
                tokenizer = load_tokenizer(cfg.tokenizer)
            if tokenizer is None:
                raise DataError(f"no tokenizer found with the model {cfg.model}; pass --tokenizer")
            if cfg.from_scratch:  # same shape, fresh weights (seeded by the run's seed)
                inner = getattr(model, "backbone", model)
                model = build_model(copy.deepcopy(inner.config))
        else:
            if not cfg.tokenizer:
                raise ConfigError(f"model '{cfg.model}' is not a folder; a preset needs --tokenizer")
            tokenizer, tok_cfg = load_tokenizer(cfg.tokenizer), {}
            args = dict(cfg.model_args or {})
            args.setdefault("vocab_size", tokenizer.get_vocab_size())
            model = build_model(preset(cfg.model, **args))
        if cfg.dropout is not None:
            set_dropout(model, cfg.dropout)
        if tokenizer.get_vocab_size() > model.config.vocab_size:
            raise DataError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                            f"{model.config.vocab_size} embeddings: not the model's tokenizer")
        return model.train(), tokenizer, tok_cfg

    def _restrict_training(self, model: torch.nn.Module) -> None:
        """LoRA and frozen layers: only what is left trainable gets optimizer state."""
        cfg: FinetuneConfig = self.cfg
        if cfg.lora_r:
            targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
            apply_lora(model, targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        elif cfg.trainable_layers is not None:
            body = getattr(model, "backbone", model)
            depth = body.config.n_layer
            keep = depth - min(cfg.trainable_layers, depth)
            for name, p in body.named_parameters():
                block = name.split(".")
                trainable = (cfg.trainable_layers > 0 and "blocks" in block[0]
                             and int(block[1]) >= keep)
                trainable |= cfg.trainable_layers > 0 and name.startswith(("ln_f", "enc_ln_f", "dec_ln_f"))
                p.requires_grad_(trainable)
        trainable, total = trainable_parameters(model)
        self.trainable = (trainable, total)
        if trainable == 0:
            raise ConfigError("nothing to train: every parameter is frozen")

    def _finish_schedule(self, resume: bool) -> None:
        cfg: FinetuneConfig = self.cfg
        if not resume and not cfg.warmup_steps and cfg.warmup_ratio:
            cfg.warmup_steps = int(cfg.warmup_ratio * cfg.max_steps)
        super()._finish_schedule(resume)

    def export(self) -> Path:
        cfg: FinetuneConfig = self.cfg
        if cfg.lora_r:  # export the merged model; keep training's LoRA-wrapped one as it is
            live, self.model = self.model, copy.deepcopy(self.model)
            merge_lora(self.model)
            try:
                return super().export()
            finally:
                self.model = live
        return super().export()

    def fit(self) -> dict:
        trainable, total = self.trainable
        if trainable < total:
            print(f"training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
        started = time.perf_counter()
        result = super().fit()
        seconds = time.perf_counter() - started  # training with its evaluations
        if self.best_step is not None and self.best_step == self.step and "val_loss" in result:
            final = {k: v for k, v in result.items() if k.startswith("val_")}  # just evaluated
        else:
            final = self.evaluate()  # the exported (best) weights
        report = {"task": self.cfg.task, "best_metric": self.cfg.best_metric, "step": self.step,
                  "best_step": self.best_step, "trainable_parameters": trainable,
                  "parameters": total, "train_examples": self.train_examples,
                  "train_seconds": round(seconds, 1), **final}
        if not self.ranks.is_main:  # under torchrun every rank holds the same report
            return {**result, **final, "best_metric": self.cfg.best_metric,
                    "train_examples": self.train_examples}
        (self.run_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        matrix = getattr(self.objective, "last_confusion", None)
        if matrix is not None:
            from .metrics import plot_confusion
            plot_confusion(matrix, self.objective.labels, self.run_dir / "confusion.png",
                           title=f"{self.cfg.task}: validation")
        return {**result, **final, "best_metric": self.cfg.best_metric,
                "train_examples": self.train_examples}


def finetune(cfg: FinetuneConfig, seeds: list[int] | None = None, *, overwrite: bool = False,
             resume: bool = False) -> dict:
    """One run, or one per seed under OUT_DIR/seed-N with their mean and std in summary.json."""
    if not seeds:
        return FinetuneTrainer(cfg, overwrite=overwrite, resume=resume).fit()
    runs = []
    for seed in seeds:
        run_cfg = replace(cfg, seed=seed, out_dir=str(Path(cfg.out_dir) / f"seed-{seed}"))
        runs.append(FinetuneTrainer(run_cfg, overwrite=overwrite, resume=resume).fit())
    names = [k for k, v in runs[0].items() if k.startswith("val_") and isinstance(v, (int, float))]
    summary = {"seeds": seeds, "runs": runs,
               "mean": {k: float(np.mean([r[k] for r in runs])) for k in names},
               "std": {k: float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0
                       for k in names}}
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> FinetuneConfig:
    """The config a run in ``run_dir`` recorded, with ``overrides`` on top, to continue it."""
    return load_run_config(run_dir, overrides, FinetuneConfig)


def format_summary(summary: dict) -> str:
    lines = [f"{'metric':<22} {'mean':>10} {'std':>10}   ({len(summary['seeds'])} seeds)"]
    for k, mean in summary["mean"].items():
        lines.append(f"{k:<22} {mean:>10.4f} {summary['std'][k]:>10.4f}")
    return "\n".join(lines)


__all__ = ["FinetuneConfig", "FinetuneTrainer", "finetune", "format_summary", "resume_config"]

"""Distillation runs: a student learns from a frozen teacher through the one training engine.

Two kinds of run, picked by ``data``:

* a labeled task file (as `lmforge finetune` reads): task-specific distillation. The teacher is
  a fine-tuned task model; the student fine-tunes on the task with the teacher's logits as soft
  targets (:class:`TaskDistillTrainer`, a :class:`~lmforge.tasks.finetune.FinetuneTrainer`).
* a prepared dataset folder (`lmforge prepare`): task-agnostic distillation of a language model,
  next-token logits for decoders, masked-token logits and/or MiniLM relations for encoders
  (:class:`CorpusDistillTrainer`, the pretraining :class:`~lmforge.training.Trainer`).

The student is a preset, the teacher with some blocks kept (``keep:K`` every K-th,
``layers:0,2,4``: DistilBERT's initialisation) or a model folder.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import with_defaults
from ..data.dataset import MissingSplitError, TokenShards
from ..errors import ConfigError, DataError
from ..hub import load_model
from ..models.config import PRESETS, preset
from ..models.io import build_model
from ..models.layers import block_list, every_kth, keep_layers
from ..objectives.distill import (CausalLMAdapter, Distillation, DistillOptions, MaskedLMAdapter)
from ..tasks.distill import task_distillation
from ..tasks.finetune import FinetuneConfig, FinetuneTrainer
from ..training.engine import CONFIG_FILE, Components, Trainer, load_run_config, set_dropout


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


DistillTraining = with_defaults(
    FinetuneConfig, "DistillTraining", "FinetuneConfig's fields with distillation defaults.",
    data=("", "training data: a labeled task file (task distillation, formats as `lmforge "
              "finetune`) or a prepared dataset folder (language-model distillation)"),
    out_dir=("runs/distill", "run folder"),
    model=("", "(set from --student)"),
    eval_batches=(20, "validation batches per evaluation (prepared datasets; task files are "
                      "evaluated whole)"),
)


@dataclass
class DistillConfig(DistillTraining):
    """A distillation run: the fine-tuning fields plus teacher, student and the loss weights."""

    teacher: str = _help("teacher model: a fine-tuned task model for task files, a language "
                         "model or encoder for prepared datasets (folder, run, .gguf)", "")
    student: str = _help("student: keep:K (every K-th teacher layer), layers:0,2,4 (those "
                         "teacher layers), a preset name, or a model folder", "keep:2")
    temperature: float = _help("softmax temperature of the logit KL (scaled by T^2)", 2.0)
    alpha: float = _help("weight of the hard-label loss; 1 - alpha weighs the logit KL "
                         "(1 = train on labels only)", 0.5)
    hidden_weight: float = _help("weight of the MSE between mapped block outputs (equal widths)", 0.0)
    attention_weight: float = _help("weight of the MiniLM last-layer attention and value "
                                    "relation KL", 0.0)
    relation_heads: int = _help("relation heads of the attention transfer (0 = the teacher's "
                                "heads)", 0)

    def validate(self) -> "DistillConfig":
        if not self.teacher:
            raise ConfigError("config field 'teacher' is required: the model to distil")
        if not self.student:
            raise ConfigError("config field 'student' is required: keep:K, layers:I,J,..., a "
                              "preset or a model folder")
        self.options().validate()
        if not self.model:
            self.model = self.teacher  # FinetuneConfig requires one; the student replaces it
        if self.corpus and self.max_steps is None and self.epochs is None:
            self.max_steps = 1000  # windows are drawn at random: no epochs to count
        return super().validate()

    @property
    def corpus(self) -> bool:
        """Whether ``data`` is a prepared dataset (language-model distillation)."""
        return (Path(self.data) / "meta.json").is_file()

    def options(self, layer_map: list[int] | None = None) -> DistillOptions:
        return DistillOptions(temperature=self.temperature, alpha=self.alpha,
                              hidden_weight=self.hidden_weight,
                              attention_weight=self.attention_weight,
                              relation_heads=self.relation_heads, layer_map=layer_map)


# ---- the student --------------------------------------------------------------------------
def parse_student(spec: str, n_layer: int) -> list[int] | None:
    """Teacher layers a ``keep:K`` or ``layers:I,J,...`` student keeps (None: another kind)."""
    kind, _, value = spec.partition(":")
    if kind not in ("keep", "layers") or not _:
        return None
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"student {spec!r}: expected keep:K or layers:I,J,... with integers") from None
    if kind == "keep":
        if len(numbers) != 1:
            raise ConfigError(f"student {spec!r}: keep takes one number (every K-th layer)")
        return every_kth(n_layer, numbers[0])
    return numbers


def make_student(spec: str, teacher: torch.nn.Module, *, from_scratch: bool = False
                 ) -> tuple[torch.nn.Module, list[int] | None]:
    """(student, the teacher layers it kept or None) for ``spec``: ``keep:K``, ``layers:...``
    (the teacher's blocks, DistilBERT init), a preset (random init, the teacher's vocabulary)
    or a model folder/file. ``from_scratch``: the same architecture with fresh weights (a
    task model loses its head; fine-tuning adds a new one)."""
    indices = parse_student(spec, len(block_list(teacher)))
    if indices is not None:
        student = keep_layers(teacher, indices)
    elif Path(spec).exists():
        student = load_model(spec)[0]
    elif spec in PRESETS:
        body = getattr(teacher, "backbone", teacher)
        args = {"vocab_size": body.config.vocab_size}
        if body.kind == "encoder":  # an encoder student speaks the teacher's segment scheme
            args["type_vocab_size"] = body.config.type_vocab_size
        student = build_model(preset(spec, **args))
        indices = None
    else:
        raise ConfigError(f"student must be keep:K, layers:I,J,..., a preset (see `lmforge "
                          f"models`) or a model folder; got {spec!r}")
    if from_scratch:
        body = getattr(student, "backbone", student)
        student = build_model(copy.deepcopy(body.config))
    return student, indices


def _load_teacher(path: str):
    if not Path(path).exists():
        raise DataError(f"teacher not found: {path}")
    return load_model(path)


def _report(trainer, teacher: torch.nn.Module, layers: list[int] | None, result: dict) -> dict:
    """distill.json: what was distilled into what, with the final metrics."""
    cfg: DistillConfig = trainer.cfg
    report = {"teacher": cfg.teacher, "student": cfg.student, "kept_layers": layers,
              "from_scratch": cfg.from_scratch,
              "teacher_parameters": teacher.num_parameters(),
              "student_parameters": trainer.model.num_parameters(),
              "teacher_layers": len(block_list(teacher)),
              "student_layers": len(block_list(trainer.model)),
              "options": asdict(cfg.options()), "step": result.get("step"),
              **{k: v for k, v in result.items() if k.startswith("val_")}}
    if trainer.ranks.is_main:
        (trainer.run_dir / "distill.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


class TaskDistillTrainer(FinetuneTrainer):
    """Task-specific distillation: fine-tuning's data, task and head, the teacher's logits."""

    command = "distill"

    def setup(self) -> Components:
        cfg: DistillConfig = self.cfg
        self.teacher, self.teacher_tokenizer, self.teacher_tok_cfg = _load_teacher(cfg.teacher)
        self.student, self.kept = make_student(cfg.student, self.teacher, from_scratch=cfg.from_scratch)
        parts = super().setup()  # reads the task with the student from _load_backbone
        parts.objective = task_distillation(parts.objective, self.teacher, cfg.options(self.kept))
        return parts

    def _load_backbone(self):
        cfg: DistillConfig = self.cfg
        tokenizer, tok_cfg = self.teacher_tokenizer, self.teacher_tok_cfg
        if cfg.tokenizer:
            from ..tokenization import load_tokenizer
            tokenizer = load_tokenizer(cfg.tokenizer)
        if tokenizer is None:
            raise DataError(f"no tokenizer found with the teacher {cfg.teacher}; pass --tokenizer")
        if cfg.dropout is not None:
            set_dropout(self.student, cfg.dropout)
        return self.student.train(), tokenizer, tok_cfg

    def fit(self) -> dict:
        result = super().fit()
        _report(self, self.teacher, self.kept, result)
        return result


class CorpusDistillTrainer(Trainer):
    """Language-model distillation on a prepared dataset: next-token logits (decoders) or
    masked-token logits and relations (encoders)."""

    command = "distill"

    def setup(self) -> Components:
        cfg: DistillConfig = self.cfg
        if cfg.best_metric == "auto":
            cfg.best_metric = "val_loss"  # the student's own loss (perplexity for decoders)
        train_data = TokenShards(cfg.data, "train")
        try:
            val_data = TokenShards(cfg.val_data or cfg.data, "val")
        except MissingSplitError:
            val_data = None if not cfg.val_data else TokenShards(cfg.val_data, "train")
        teacher, teacher_tok, tok_cfg = _load_teacher(cfg.teacher)
        if getattr(teacher, "spec", None) is not None:
            raise ConfigError("a prepared dataset distils a language model or encoder; this "
                              "teacher is a fine-tuned task model (pass a task file as --data)")
        tokenizer = _dataset_tokenizer(cfg.data, train_data, teacher, teacher_tok)
        self.teacher = teacher
        student, self.kept = make_student(cfg.student, teacher, from_scratch=cfg.from_scratch)
        if cfg.dropout is not None:
            set_dropout(student, cfg.dropout)
        options = cfg.options(self.kept)
        from ..objectives import get_objective
        if teacher.is_decoder:
            inner, adapter = get_objective("causal_lm", tokenizer=tokenizer, meta=train_data.meta), CausalLMAdapter()
        elif teacher.is_encoder:
            inner = get_objective("mlm", tokenizer=tokenizer, meta=train_data.meta)
            heads = teacher.has_mlm_head() and getattr(student, "has_mlm_head", lambda: False)()
            if not heads and (options.alpha < 1 or not options.uses_teacher):
                raise ConfigError("masked-LM logit distillation needs masked-LM heads on teacher "
                                  "and student; without them use --alpha 1 with "
                                  "--attention-weight and/or --hidden-weight")
            adapter = MaskedLMAdapter(logits=heads)
        else:
            raise ConfigError(f"cannot distil a {teacher.kind} on a prepared dataset")
        if options.alpha < 1 and student.config.vocab_size != teacher.config.vocab_size:
            raise ConfigError(f"logit distillation needs one vocabulary: teacher "
                              f"{teacher.config.vocab_size} tokens, student {student.config.vocab_size}")
        objective = Distillation(inner, teacher, adapter, options)
        tokenizer_file = Path(cfg.data) / "tokenizer.json"
        return Components(student.train(), objective, train_data, val_data,
                          export_tokenizer=tokenizer_file if tokenizer_file.is_file() else teacher_tok,
                          tokenizer_config=tok_cfg)

    def _finish_schedule(self, resume: bool) -> None:
        cfg: DistillConfig = self.cfg
        if not resume and not cfg.warmup_steps and cfg.warmup_ratio:
            cfg.warmup_steps = int(cfg.warmup_ratio * cfg.max_steps)
        super()._finish_schedule(resume)

    def fit(self) -> dict:
        started = time.perf_counter()
        result = super().fit()
        result["train_seconds"] = round(time.perf_counter() - started, 1)
        _report(self, self.teacher, self.kept, result)
        return result


def _dataset_tokenizer(data: str, shards: TokenShards, teacher, teacher_tok):
    """The dataset's tokenizer, refused if the teacher was trained with another one."""
    from ..tokenization import load_tokenizer, tokenizer_sha256
    file = Path(data) / "tokenizer.json"
    tokenizer = load_tokenizer(file) if file.is_file() else teacher_tok
    if shards.vocab_size > teacher.config.vocab_size:
        raise DataError(f"dataset {data} uses a vocab of {shards.vocab_size} but the teacher has "
                        f"{teacher.config.vocab_size} embeddings: prepare it with the teacher's tokenizer")
    sha = shards.meta.get("tokenizer_sha256")
    if teacher_tok is not None and sha and tokenizer_sha256(teacher_tok) != sha:
        raise DataError(f"dataset {data} was tokenized with a different tokenizer than the "
                        "teacher: prepare it with the teacher's tokenizer")
    return tokenizer


def distill(cfg: DistillConfig, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Run one distillation (task or corpus, by ``cfg.data``); returns the final metrics. The
    run folder holds the student in ``model/``, metrics, and ``distill.json``."""
    trainer_cls = CorpusDistillTrainer if cfg.corpus else TaskDistillTrainer
    return trainer_cls(cfg, overwrite=overwrite, resume=resume).fit()


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> DistillConfig:
    """The config a distillation run recorded, with ``overrides``, to continue it."""
    if not (Path(run_dir) / CONFIG_FILE).is_file():
        from ..errors import CheckpointError
        raise CheckpointError(f"cannot resume: {run_dir} is not a run folder (no {CONFIG_FILE})")
    return load_run_config(run_dir, overrides, DistillConfig)


__all__ = ["DistillConfig", "CorpusDistillTrainer", "TaskDistillTrainer", "distill",
           "make_student", "parse_student", "resume_config"]

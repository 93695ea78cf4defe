"""`lmforge finetune`: fine-tune a pretrained model on a labeled task through the one engine."""

from __future__ import annotations

import argparse

from ..config import (add_dataclass_flags, add_option_flags, flags_to_dict, from_dict, given_option_flags,
                      load_file, merge_option_flags)
from ..errors import ConfigError
from ..training.config import CHOICES
from .flags import examples, task_names
from .summary import print_run_summary


def register(sub) -> None:
    from ..tasks.finetune import FinetuneConfig
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained model on a labeled task",
        description="Fine-tune --model (lmforge or Hugging Face folder, run folder, .gguf, or a "
                    "preset with --tokenizer) on --task with a training file and a validation "
                    "file. Writes the best model to OUT/model, metrics to OUT/eval.json "
                    "(and confusion.png for classification). Every field is a flag; --config "
                    "reads a YAML/TOML file of the same fields.",
        epilog=examples(
            "lmforge finetune --model models/all-MiniLM-L6-v2 --data train.tsv --val-data dev.tsv "
            "--out runs/sst2",
            "lmforge finetune --model runs/bert --task token-classification --data train.conll "
            "--val-data dev.conll --epochs 5 --out runs/ner",
            "lmforge finetune --resume runs/sst2"))
    p.add_argument("--config", help="YAML or TOML file of fine-tuning fields")
    p.add_argument("--seeds", help="comma-separated seeds: one run per seed under OUT/seed-N, "
                                   "then mean and std of the validation metrics")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_dataclass_flags(p, FinetuneConfig, skip=("objective", "objective_args", "sampling",
                                                 "eval_batches"),
                        choices={**CHOICES, "task": task_names()}, names={"out_dir": ("--out", "-o")})
    add_option_flags(p, task_options(), "task", "task_args", skip=SET_BY_FINETUNE)
    p.set_defaults(func=run)


# Task options that fine-tuning fills itself (from its own flags, the model, the data).
SET_BY_FINETUNE = ("labels", "tokenizer_config", "text_column", "text_pair_column", "label_column",
                   "encoding", "class_weights")


def task_options() -> dict[str, type]:
    """Each task's options dataclass: its ``--TASK.option`` flags."""
    from ..tasks.base import all_tasks
    return {name: cls.Options for name, cls in all_tasks().items()}


def run(args: argparse.Namespace) -> int:
    from ..tasks.finetune import FinetuneConfig, finetune, format_summary, resume_config
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.resume:
        if given_option_flags(args, task_options()):
            raise ConfigError("task options cannot change when resuming a run")
        cfg = resume_config(args.resume, flags_to_dict(args, FinetuneConfig))
        result = finetune(cfg, resume=True)
    else:
        data = load_file(args.config) if args.config else {}
        data.update(flags_to_dict(args, FinetuneConfig))
        task_args = merge_option_flags(args, task_options(), data.get("task", "classification"),
                                       "task", data.get("task_args"))
        if task_args is not None:
            data["task_args"] = task_args
        cfg = from_dict(FinetuneConfig, data, where=args.config or "command line")
        result = finetune(cfg, seeds, overwrite=args.overwrite)
    if seeds:
        print(format_summary(result))
        print(f"runs: {cfg.out_dir}/seed-N; mean and std in {cfg.out_dir}/summary.json")
        return 0
    print_run_summary("finetune", cfg.out_dir, result)
    return 130 if result.get("interrupted") else 0

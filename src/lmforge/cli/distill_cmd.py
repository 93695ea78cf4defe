"""`lmforge distill`: train a smaller student from a teacher through the one engine."""

from __future__ import annotations

import argparse

from ..config import add_dataclass_flags, flags_to_dict, from_dict, load_file
from ..training.config import CHOICES
from .flags import examples, task_names
from .summary import print_run_summary

# Fine-tuning fields that make no sense here: the student replaces --model; LoRA and frozen
# layers would keep the student from learning what the teacher knows.
SKIP = ("objective", "objective_args", "sampling", "model", "task_args", "lora_r", "lora_alpha",
        "lora_dropout", "lora_targets", "trainable_layers")


def register(sub) -> None:
    from ..compression.distill import DistillConfig
    p = sub.add_parser(
        "distill", help="distil a teacher into a smaller student (task or language model)",
        description="Train --student with --teacher's help: logit distillation (KL at "
                    "--temperature, mixed with the hard-label loss by --alpha), hidden-state "
                    "MSE (--hidden-weight) and MiniLM attention/value relations "
                    "(--attention-weight). --data is a labeled task file (the teacher is a "
                    "fine-tuned task model, as `lmforge finetune` writes) or a dataset from "
                    "`lmforge prepare` (the teacher is a language model or encoder). The "
                    "student is keep:K (every K-th teacher layer), layers:0,2,4, a preset or a "
                    "model folder. Writes the student to OUT/model, metrics and OUT/distill.json.",
        epilog=examples(
            "lmforge distill --teacher runs/minilm-sst2 --student keep:2 --data SST-2/train.tsv "
            "--val-data SST-2/dev.tsv --out runs/sst2-3layer",
            "lmforge distill --teacher SmolLM2-135M-Instruct.Q4_1.gguf --student keep:2 "
            "--data data/smol --max-steps 300 --block-size 128 --out runs/smol-15",
            "lmforge distill --teacher models/bert --student layers:0,5,11 --data data/wiki "
            "--alpha 1 --attention-weight 1 --out runs/bert-3",
            "lmforge distill --resume runs/sst2-3layer"))
    p.add_argument("--config", help="YAML or TOML file of distillation fields")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_dataclass_flags(p, DistillConfig, skip=SKIP, choices={**CHOICES, "task": task_names()},
                        names={"out_dir": ("--out", "-o")})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compression.distill import DistillConfig, distill, resume_config
    if args.resume:
        cfg = resume_config(args.resume, flags_to_dict(args, DistillConfig))
        result = distill(cfg, resume=True)
    else:
        data = load_file(args.config) if args.config else {}
        data.update(flags_to_dict(args, DistillConfig))
        cfg = from_dict(DistillConfig, data, where=args.config or "command line")
        result = distill(cfg, overwrite=args.overwrite)
    if cfg.corpus:
        print_run_summary("distill", cfg.out_dir, result, objective="mlm" if result.get("val_mlm_acc") is not None else "causal_lm")
    else:
        print_run_summary("distill", cfg.out_dir, result, task=cfg.task)
    return 130 if result.get("interrupted") else 0

"""`lmforge pretrain`: train a model with any objective through the one training engine."""

from __future__ import annotations

import argparse

from ..config import (add_dataclass_flags, add_option_flags, coerce, flags_to_dict, from_dict,
                      given_option_flags, load_file, merge_option_flags)
from ..errors import ConfigError
from ..models.config import CHOICES as MODEL_CHOICES
from ..models.config import ModelConfig
from ..training import TrainConfig, load_run_config, pretrain
from ..training.config import CHOICES
from ..training.recipes import load_recipe, merge_fields, recipe_names
from .flags import examples, objective_names
from .summary import print_run_summary

MODEL_FLAGS_SKIP = ("dropout",)  # TrainConfig.dropout covers it


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain a language model on a prepared dataset",
        description="Train a model with an objective (causal_lm) on a dataset made by "
                    "`lmforge prepare`. Every config field is a flag; --config reads a YAML/TOML "
                    "file of the same fields; flags override the file. Architecture flags (and "
                    "--model-args) override the preset's values for a new model.",
        epilog=examples(
            "lmforge pretrain --data data/shakespeare --model gpt-mini --max-steps 2000 "
            "--out runs/shakespeare",
            "lmforge pretrain --data data/wiki --model bert-mini --objective mlm --n-layer 4 "
            "--out runs/bert",
            "lmforge pretrain --recipe budget-encoder --time 30m --data data/wiki --out runs/cram",
            "lmforge pretrain --model minilm-folder --objective mlm --data data/reviews "
            "--max-steps 2000 --out runs/dapt",
            "lmforge pretrain --resume runs/shakespeare --max-steps 4000"))
    p.add_argument("--config", help="YAML or TOML file of training fields")
    p.add_argument("--recipe", choices=recipe_names(),
                   help="a named bundle of defaults (model, objective, schedule, ...): "
                        "budget-encoder = Cramming-style BERT for a --time budget; "
                        "--config and flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_dataclass_flags(p, TrainConfig, choices={**CHOICES, "objective": objective_names()},
                        names={"out_dir": ("--out", "-o")})
    add_dataclass_flags(p, ModelConfig, group="model architecture (new models only)",
                        skip=MODEL_FLAGS_SKIP, choices=MODEL_CHOICES,
                        default_note="from the preset")
    add_option_flags(p, objective_options(), "objective", "objective_args")
    p.set_defaults(func=run)


def objective_options() -> dict[str, type]:
    """Each objective's options dataclass: its ``--NAME.option`` flags."""
    from ..objectives import OBJECTIVES
    return {name: cls.Options for name, cls in OBJECTIVES.items()}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config file < flags. Model architecture flags go to ``model_args``."""
    data = load_file(args.config) if args.config else {}
    if getattr(args, "recipe", None):
        data = merge_fields(load_recipe(args.recipe), data)
    model_args = dict(data.pop("model_args", None) or {})
    flags = flags_to_dict(args, TrainConfig)
    if "model_args" in flags:  # --model-args JSON, under the architecture flags
        model_args.update(coerce(TrainConfig, "model_args", flags.pop("model_args")) or {})
    model_args.update(flags_to_dict(args, ModelConfig))
    for key in MODEL_FLAGS_SKIP:
        model_args.pop(key, None)
    data.update(flags)
    objective_args = merge_option_flags(args, objective_options(), data.get("objective", "causal_lm"),
                                        "objective", data.get("objective_args"))
    if objective_args is not None:
        data["objective_args"] = objective_args
    if model_args:
        data["model_args"] = model_args
    where = args.config or (f"recipe {args.recipe}" if getattr(args, "recipe", None) else "command line")
    return from_dict(TrainConfig, data, where=where)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        overrides = flags_to_dict(args, TrainConfig)
        if flags_to_dict(args, ModelConfig) or "model_args" in overrides:
            raise ConfigError("architecture flags cannot change when resuming a run")
        if args.recipe:
            raise ConfigError("--recipe cannot change when resuming a run (the run keeps its config)")
        if given_option_flags(args, objective_options()):
            raise ConfigError("objective options cannot change when resuming a run")
        cfg = load_run_config(args.resume, overrides)
        result = pretrain(cfg, resume=True)
    else:
        cfg = config_from_args(args)
        result = pretrain(cfg, overwrite=args.overwrite)
    print_run_summary("pretrain", cfg.out_dir, result, objective=cfg.objective)
    return 130 if result.get("interrupted") else 0

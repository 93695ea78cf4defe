"""`lmforge compare`: n-gram, LSTM and Transformer perplexity side by side on one dataset."""

from __future__ import annotations

import argparse

from ..config import add_dataclass_flags, flags_to_dict, from_dict, load_file
from ..evaluation.compare import RESULT_JSON, RESULT_PNG, CompareConfig, compare, format_table
from .flags import examples


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare n-gram, LSTM and Transformer perplexity on one dataset",
        description="Fit Kneser-Ney n-grams and train an LSTM (bptt_lm) and a Transformer "
                    "(causal_lm) on the train split of a dataset made by `lmforge prepare`, "
                    "score every token of its val split with each, and print a table of "
                    f"perplexity, parameters and training time; writes {RESULT_JSON} and "
                    f"{RESULT_PNG} into --out. Every field is a flag; --config reads a YAML/TOML "
                    "file of the same fields.",
        epilog=examples("lmforge compare data/wikitext2 --out runs/compare",
                        "lmforge compare data/wikitext2 --ngram-orders 3,5 --lstm-steps 0 --gpt-steps 300"))
    p.add_argument("data", nargs="?", help="prepared dataset folder (train and val splits)")
    p.add_argument("--config", help="YAML or TOML file of compare fields")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_dataclass_flags(p, CompareConfig, skip=("data",), names={"out": ("--out", "-o")},
                        choices={"precision": ("auto", "fp32", "bf16")})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = load_file(args.config) if args.config else {}
    flags = flags_to_dict(args, CompareConfig)
    if flags.pop("data", None):
        data["data"] = args.data
    data.update(flags)
    cfg = from_dict(CompareConfig, data, where=args.config or "command line")
    result = compare(cfg, overwrite=args.overwrite)
    print()
    print(format_table(result))
    print(f"\nwrote {cfg.out}/{RESULT_JSON} and {cfg.out}/{RESULT_PNG}")
    return 0

"""Entry point of the `lmforge` command: subcommand registry and one-line error reporting."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback

from .. import __version__
from ..config import BoolFlag, InvertedBoolFlag
from ..errors import LMForgeError
from .flags import HelpFormatter, add_spellings, examples, expand_bool_flags

# Subcommand -> (module exposing register(subparsers), one-line help). Only the module of the
# command being run is imported, so `lmforge prepare` or `lmforge --help` never loads torch.
COMMANDS = {
    "quickstart": ("quickstart_cmd", "train a tokenizer and a small GPT on Shakespeare, then sample"),
    "tokenizer": ("tokenizer_cmd", "train, inspect and use tokenizers"),
    "prepare": ("prepare_cmd", "clean, deduplicate, tokenize and shard a corpus"),
    "prepare-merge": ("prepare_merge_cmd", "join datasets prepared in parts into one"),
    "models": ("models_cmd", "list model presets with parameter counts"),
    "pretrain": ("pretrain_cmd", "pretrain a model with an objective on a prepared dataset"),
    "plan": ("plan_cmd", "FLOPs, memory per GPU (DDP vs FSDP) and time to a token budget"),
    "scale": ("scale_cmd", "scaling laws: plan, run and fit a sweep, predict a bigger run"),
    "generate": ("generate_cmd", "generate text from a trained model"),
    "chat": ("chat_cmd", "chat with a model in the terminal (history, streaming, /save)"),
    "score": ("score_cmd", "log-probability and perplexity of text under a model"),
    "fill-mask": ("fill_mask_cmd", "top-k predictions for [MASK] tokens (encoders)"),
    "embed": ("embed_cmd", "sentence embeddings to .npy or JSONL"),
    "compare": ("compare_cmd", "n-gram vs LSTM vs Transformer perplexity on one dataset"),
    "plot": ("plot_cmd", "draw a run's train/validation loss curve as PNG"),
    "convert": ("convert_cmd", "convert models between lmforge, Hugging Face and GGUF"),
    "compress": ("compress_cmd", "quantize / prune a model and compare size, speed and quality"),
    "finetune": ("finetune_cmd", "fine-tune a pretrained model on a labeled task"),
    "distill": ("distill_cmd", "distil a teacher into a smaller, faster student"),
    "predict": ("predict_cmd", "predict with a fine-tuned model, file or stdin -> JSONL"),
    "evaluate": ("evaluate_cmd", "metrics of a fine-tuned model on a labeled file"),
    "experiment": ("experiment_cmd", "pretrain-vs-scratch: does pretraining help on a task?"),
    "serve": ("serve_cmd", "OpenAI-compatible API server and web playground"),
}
COMMAND_MODULES = [module for module, _ in COMMANDS.values()]


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, negative numbers like ``-1e-3`` as values, and the
    flag convention of :mod:`.flags` (both spellings, boolean flags bare or with a value,
    examples kept as written in --help)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
        # store_true/store_false flags, in groups too (they share the registry), become BoolFlags.
        self.register("action", "store_true", BoolFlag)
        self.register("action", "store_false", InvertedBoolFlag)

    def parse_known_args(self, args=None, namespace=None):
        add_spellings(self)
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(expand_bool_flags(self, args), namespace)

    def format_help(self) -> str:
        add_spellings(self)
        return super().format_help()

    def format_usage(self) -> str:
        add_spellings(self)
        return super().format_usage()

    def _get_option_tuples(self, option_string):
        """Abbreviations: one match per flag, though each flag has two spellings."""
        seen, unique = set(), []
        for match in super()._get_option_tuples(option_string):
            if id(match[0]) not in seen:
                seen.add(id(match[0]))
                unique.append(match)
        return unique

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` set, one whose other subcommands are stubs (so their
    modules, and torch, are not imported just to run one command)."""
    parser = Parser(
        prog="lmforge",
        description="Pretrain Transformer language models from raw text and use them.",
        epilog="Every command: flags as --kebab-case or --snake_case; boolean flags bare or with "
               "a value (--compile, --compile false); --out/-o for where results go; "
               "`lmforge COMMAND --help` ends with examples.\n\n" + examples(
                   "lmforge quickstart", "lmforge models", "lmforge pretrain --help"),
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        importlib.import_module(f".{module_name}", __package__).register(sub)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``, if any (the first word that is not a flag)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    parser = build_parser(only=command or "")
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("LMFORGE_DEBUG") == "1"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except LMForgeError as exc:
        if debug:
            traceback.print_exc()
        print(f"lmforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

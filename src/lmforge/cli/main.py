"""Entry point of the `lmforge` command: subcommand registry and one-line error reporting."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback

from ..errors import LMForgeError

# Each module exposes register(subparsers); order is the order shown in --help.
COMMAND_MODULES = [
    "quickstart_cmd",
    "tokenizer_cmd",
    "prepare_cmd",
    "models_cmd",
    "pretrain_cmd",
    "generate_cmd",
    "score_cmd",
    "plot_cmd",
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and negative numbers like ``-1e-3`` as values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lmforge",
        description="Pretrain Transformer language models from raw text and use them.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(name):
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
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

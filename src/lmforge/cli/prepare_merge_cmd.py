"""``lmforge prepare-merge``: join datasets prepared in parts into one dataset folder."""

from __future__ import annotations

import argparse
import time

from ..data.prepare import merge_prepared
from .flags import add_out_flag, examples
from .prepare_cmd import format_summary


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare-merge", help="join datasets prepared in parts (prepare --num-parts) into one",
        description="Join the part folders of `lmforge prepare --num-parts K --part I` (or any "
                    "datasets prepared with the same tokenizer) into OUT: shards renumbered in "
                    "part order and hard-linked (copied across filesystems), one meta.json. "
                    "No token is re-read; deduplication held within each part.",
        epilog=examples("lmforge prepare-merge data/part-0 data/part-1 data/part-2 --out data/wiki"))
    p.add_argument("parts", nargs="+", metavar="PART", help="prepared dataset folders")
    add_out_flag(p, required=True, metavar="DIR", help="merged dataset folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary")
    p.set_defaults(func=_merge)


def _merge(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    meta = merge_prepared(args.parts, args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(format_summary(meta, time.perf_counter() - start, args.out))
    return 0

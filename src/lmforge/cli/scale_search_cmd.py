"""`lmforge scale search`: architecture search under a parameter, FLOP or latency budget by
successive halving, each trial trained through the scaling sweep's machinery (resumable)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..config import add_dataclass_flags, flags_to_dict, from_dict
from .flags import add_out_flag, examples


def register(actions: argparse._SubParsersAction) -> None:
    """Add ``search`` to the actions of ``lmforge scale``."""
    from ..scaling.search import SearchOptions
    p = actions.add_parser(
        "search", help="architecture search under a budget (successive halving)",
        description="Sample configs (depth, width, heads, MLP ratio, learning rate) that satisfy "
                    "a parameter, FLOPs-per-token or measured-latency limit, train them all on "
                    "--min-tokens, keep the best 1/eta by validation loss, train those on eta x "
                    "the tokens, and so on for --rungs rungs. Writes OUT/search.csv (every "
                    "trial), OUT/best.yaml (the winner as a `lmforge pretrain --config` file) "
                    "and prints a leaderboard. Run it again to continue a search that was cut "
                    "short: finished trials are never trained again.",
        epilog=examples(
            "lmforge scale search --data data/ --max-params 2e5 --out search/",
            "lmforge scale search --data data/ --depths 2,4,6 --widths 64,128 --heads 2,4 "
            "--lrs 1e-3,3e-3 --max-latency-ms 5 --trials 12 --out search/",
            "lmforge scale search --data data/ --max-flops-per-token 3e6 --min-tokens 2e5 "
            "--max-tokens 2e6 --eta 3 --out search/",
            "lmforge pretrain --config search/best.yaml --data data/ --max-steps 5000 --out runs/best"))
    add_dataclass_flags(p, SearchOptions)
    add_out_flag(p, required=True, metavar="DIR",
                 help="search folder: search.csv, best.yaml, search.jsonl, runs/ (a folder of an "
                      "earlier search continues it)")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="train at most N trials in this call (run again to go on)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..scaling.search import SearchOptions, run_search
    opts = from_dict(SearchOptions, flags_to_dict(args, SearchOptions), where="command line")
    terminal = sys.stderr.isatty()

    def on_row(row: dict) -> None:
        if terminal:
            print(f"rung {row['rung']}: {row['trial']} val loss {row['loss']:.4f} "
                  f"({row['tokens']:,} tokens, {row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    result = run_search(opts, args.out, max_runs=args.max_runs, device=args.device,
                        progress=terminal, on_row=on_row)
    print(summary(result))
    return 130 if result["interrupted"] else 0


def summary(result: dict) -> str:
    """The human end of `lmforge scale search`: leaderboard, where the files are, what next."""
    from ..scaling.search import format_leaderboard
    out = shlex.quote(result["out"])
    lines = [f"\n{result['trials']} trials of {result['candidates']} configs within the "
             f"constraint; rungs of {', '.join(f'{t:,}' for t in result['rung_tokens'])} tokens; "
             f"{len(result['trained'])} trained now, {result['skipped']} already done"]
    if result["rows"]:
        lines += ["", format_leaderboard(result)]
    if not result["complete"]:
        why = "interrupted" if result["interrupted"] else "stopped at --max-runs"
        lines += ["", f"search {why} with {result['remaining']} trials to go; continue with "
                      f"the same command (finished trials are kept)"]
        return "\n".join(lines)
    best = result["best"]
    lines += ["", f"best: {best['trial']} (val loss {best['loss']:.4f}, {best['params']:,} "
                  f"parameters)",
              f"results  {result['csv']}", f"config   {result['best_yaml']}",
              f"next: lmforge pretrain --config {out}/best.yaml --data DATA --max-steps N "
              f"--out runs/best"]
    return "\n".join(lines)

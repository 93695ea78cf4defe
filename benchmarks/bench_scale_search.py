"""`lmforge scale search` on a real char-level corpus, as RESULTS.md records it: 27 configs of
depth x width x head size x MLP ratio x learning rate under a parameter cap, successive halving
with eta 3 over 3 rungs (rung 0: --min-tokens per config), one CPU thread.

    python benchmarks/bench_scale_search.py --data /work/scale/data [--quick] [--out DIR]

Prints the leaderboard, the best config, the CPU and the wall time, and writes
benchmarks/scale_search.json (the search folder itself goes to --out). Run it again with the
same --out to continue a search that was cut short; a finished one is only re-reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lmforge.scaling.search import format_leaderboard, scale_search  # noqa: E402
from lmforge.scaling.sweep import cpu_name  # noqa: E402

SPACE = dict(depths="1,2,3,4,6", widths="32,48,64,96", head_dims="16,32", mlp_ratios="2,4",
             lrs="1e-3,3e-3,1e-2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/scale/data", help="prepared char-level dataset")
    ap.add_argument("--out", default="/tmp/lmforge-scale-search", help="search folder")
    ap.add_argument("--max-params", type=float, default=1.5e5, help="parameter cap")
    ap.add_argument("--min-tokens", type=float, default=65536, help="rung-0 tokens per config")
    ap.add_argument("--trials", type=int, default=27)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="9 configs, 2 rungs, 16k tokens at rung 0")
    ap.add_argument("--json", default=None, help="where the figures go (default: "
                    "benchmarks/scale_search.json, with --quick scale_search_quick.json)")
    args = ap.parse_args()
    args.json = args.json or str(HERE / ("scale_search_quick.json" if args.quick else "scale_search.json"))
    torch.set_num_threads(args.threads)
    trials, rungs, min_tokens = (9, 2, 16384) if args.quick else (args.trials, 3, int(args.min_tokens))
    start = time.perf_counter()
    result = scale_search(args.data, args.out, trials=trials, eta=3, rungs=rungs,
                          min_tokens=min_tokens, max_params=args.max_params, batch_size=16,
                          block_size=128, eval_batches=20, warmup_steps=50, threads=args.threads,
                          precision="auto", seed=1337, **SPACE)
    wall = time.perf_counter() - start
    board = format_leaderboard(result, top=15)
    best = result["best"]
    print(board)
    print(f"\nbest: {best['trial']} val loss {best['loss']:.4f} ({best['params']:,} parameters)")
    print(f"{result['candidates']} configs within --max-params {args.max_params:g}; "
          f"{len(result['trained'])} trials trained in {wall:.0f} s on {cpu_name()} "
          f"({args.threads} thread(s)); rungs {result['rung_tokens']} tokens")
    print(Path(result["best_yaml"]).read_text())
    report = {"cpu": cpu_name(), "threads": args.threads, "wall_seconds": round(wall, 1),
              "trained_now": len(result["trained"]),
              "trial_seconds": round(sum(r["seconds"] or 0 for r in result["rows"]), 1),
              "candidates": result["candidates"], "rung_tokens": result["rung_tokens"],
              "space": SPACE, "max_params": args.max_params,
              "best": {k: v for k, v in best.items() if k not in ("spec", "run_dir")},
              "rows": [{k: v for k, v in r.items() if k not in ("spec", "run_dir")}
                       for r in result["rows"]], "leaderboard": board,
              "best_yaml": Path(result["best_yaml"]).read_text()}
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""`lmforge plot RUN_DIR`: (re)draw a run's loss curve as a PNG."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..training.plots import plot_loss
from .flags import add_out_flag, examples


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's train/validation loss curve as PNG",
                       description="Read RUN_DIR/metrics.jsonl and write RUN_DIR/loss.png.",
                       epilog=examples("lmforge plot runs/shakespeare",
                                       "lmforge plot runs/shakespeare --out shakespeare-loss.png"))
    p.add_argument("run_dir", help="a run folder made by `lmforge pretrain` or `lmforge finetune`")
    add_out_flag(p, metavar="PNG", help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not Path(args.run_dir).is_dir():
        raise DataError(f"run folder not found: {args.run_dir}")
    try:
        print(plot_loss(args.run_dir, args.out))
    except OSError as exc:  # --out in a folder that cannot exist or be written
        raise DataError(f"cannot write {args.out or 'the plot'}: {exc.strerror}") from None
    return 0

"""`lmforge evaluate`: a fine-tuned model's metrics on a labeled file, as a table and JSON."""

from __future__ import annotations

import json

from ..errors import DataError
from ..files import atomic_write_text
from .flags import add_out_flag, examples
from .inference import add_model_flags, add_task_flags, load_task


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a fine-tuned model on a labeled file",
        description="Score a fine-tuned task model on a labeled file in its task's format; print "
                    "the metrics as a table and save them as JSON.",
        epilog=examples("lmforge evaluate --model runs/sst2 --data data/sst2/dev.tsv",
                        "lmforge evaluate --model runs/ner --data test.conll --out test-metrics.json"))
    add_model_flags(p)
    p.add_argument("--data", required=True, help="labeled file in the task's format")
    add_out_flag(p, aliases=("--output",), metavar="FILE",
                 help="JSON file for the metrics (also --output)")
    add_task_flags(p)
    p.add_argument("--label-column", dest="label_column",
                   help="label column/field (default: label, score, ...)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..tasks.inference import evaluate_file
    model, objective, device, autocast_ctx = load_task(args)
    report = evaluate_file(model, objective, args.data, args.batch_size, device, autocast_ctx)
    metrics = {k: v for k, v in report.items() if k not in ("data", "examples", "windows")}
    width = max(len(k) for k in metrics)
    # Examples as the file holds them (a QA question or a long NER sentence may span several
    # model windows: those are counted apart).
    rows, windows = report["examples"], report["windows"]
    print(f"{args.data}: {rows} examples" + (f" in {windows} model windows" if windows != rows else ""))
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4f}")
    if args.out:
        try:
            atomic_write_text(args.out, json.dumps({"data": args.data, "examples": rows,
                                                    **metrics}, indent=2) + "\n")
        except OSError as exc:
            raise DataError(f"cannot write {args.out}: {exc.strerror}") from None
    return 0

"""`lmforge evaluate`: a fine-tuned model's metrics on a labeled file, as a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from .inference import add_model_flags, add_task_flags, load_task


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a fine-tuned model on a labeled file",
        description="Score a fine-tuned task model on a labeled file in its task's format; print "
                    "the metrics as a table and save them as JSON.")
    add_model_flags(p, precision="auto")
    p.add_argument("--data", required=True, help="labeled file")
    p.add_argument("--output", "-o", help="JSON file for the metrics")
    add_task_flags(p)
    p.add_argument("--label-column", dest="label_column")
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
    if args.output:
        Path(args.output).write_text(json.dumps({"data": args.data, "examples": rows,
                                                 **metrics}, indent=2) + "\n")
    return 0

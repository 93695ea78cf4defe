"""Accuracy and inference speed (examples/s) of task models on one labeled file, measured in
one process with the models interleaved (so machine noise hits them alike): the SST-2 teacher
against its distilled students.

    python benchmarks/distill_speed.py --data dev.tsv --json out.json teacher=RUN student=RUN ...
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lmforge.api import PRECISION, _task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="NAME=PATH of fine-tuned task models")
    p.add_argument("--data", required=True, help="labeled task file (e.g. SST-2 dev.tsv)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per model (best kept)")
    p.add_argument("--precision", default=PRECISION, help="auto, fp32 or bf16")
    p.add_argument("--json", help="write the table as JSON here")
    args = p.parse_args()
    rows = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        model, objective, where, ctx = _task(path, None, "cpu", args.precision, None)
        feats = objective.featurize(objective.read(args.data), training=False)
        batches = objective.eval_batches(feats, 0, args.batch_size, 0)
        metrics = objective.evaluate(model, batches, where, ctx)
        rows[name] = {"path": path, "layers": model.config.n_layer,
                      "parameters": model.num_parameters(), "examples": len(feats),
                      "accuracy": metrics.get("val_accuracy"), "seconds": [],
                      "_run": (model, objective, batches, where, ctx)}
    for _ in range(args.repeats):  # interleaved: noise from other processes hits every model
        for row in rows.values():
            model, objective, batches, where, ctx = row["_run"]
            start = time.perf_counter()
            objective.outputs(model, batches, where, ctx)
            row["seconds"].append(time.perf_counter() - start)
    first = next(iter(rows.values()))
    for row in rows.values():
        del row["_run"]
        row["examples_per_s"] = row["examples"] / min(row["seconds"])
        row["speedup"] = row["examples_per_s"] / (first["examples"] / min(first["seconds"]))
        row["accuracy_kept"] = row["accuracy"] / first["accuracy"] if first["accuracy"] else None
    print(f"{'model':<16}{'layers':>7}{'params':>10}{'accuracy':>10}{'kept':>8}{'ex/s':>9}{'speedup':>9}")
    for name, r in rows.items():
        print(f"{name:<16}{r['layers']:>7}{r['parameters'] / 1e6:>9.1f}M{r['accuracy']:>10.4f}"
              f"{r['accuracy_kept']:>8.3f}{r['examples_per_s']:>9.1f}{r['speedup']:>8.2f}x")
    print(f"threads {torch.get_num_threads()}, precision {args.precision}, batch {args.batch_size}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "precision": args.precision, "models": rows}, f, indent=2)


if __name__ == "__main__":
    main()

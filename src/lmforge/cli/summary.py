"""The few human lines `pretrain` and `finetune` end with: final metrics, where things are, and
the next command to run. The figures themselves stay in the run's files (metrics.jsonl,
eval.json)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

MASKED_OBJECTIVES = ("mlm", "nsp", "sop")  # models that fill masks rather than generate


def _metric_lines(result: dict) -> list[str]:
    rows = []
    if isinstance(result.get("train_loss"), (int, float)):
        rows.append(("train loss", result["train_loss"]))
    for key, value in result.items():
        if key.startswith("val_") and isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(("val " + key.removeprefix("val_").replace("_", " "), value))
    if not rows:
        return []
    width = max(len(name) for name, _ in rows) + 2
    lines = ["final metrics (val = validation set):" if any(k.startswith("val_") for k in result)
             else "final metrics:"]
    lines += [f"  {name:<{width}}{value:.4f}" for name, value in rows]
    return lines


def run_summary(command: str, run_dir: str | Path, result: dict, *, task: str | None = None,
                objective: str | None = None) -> str:
    """The end-of-run summary of ``lmforge pretrain`` or ``finetune`` for ``result`` (what
    :func:`~lmforge.training.pretrain` / ``finetune`` return)."""
    run = Path(run_dir)
    q = shlex.quote(str(run))
    step = result.get("step")
    if result.get("interrupted"):
        return (f"\n{command} interrupted at step {step}; continue with "
                f"`lmforge {command} --resume {q}`")
    lines = [f"\n{command} finished at step {step}"]
    best_step = result.get("best_step")
    metric = result.get("best_metric")
    if not isinstance(metric, str):
        metric = next((k.removeprefix("best_") for k in result if k.startswith("best_val_")), "val_loss")
    best = result.get(f"best_{metric}")
    if best_step is not None and best_step != step and isinstance(best, (int, float)):
        lines[0] += f" (best {metric.removeprefix('val_')} {best:.4f} at step {best_step})"
    lines += _metric_lines(result)
    where = [("model", run / "model")]
    for name in ("eval", "distill"):
        if (run / f"{name}.json").is_file():
            where.append((name, run / f"{name}.json"))
    where.append(("metrics", run / "metrics.jsonl"))
    plots = [run / name for name in ("loss.png", "confusion.png") if (run / name).is_file()]
    if plots:
        where.append(("plots", ", ".join(map(str, plots))))
    width = max(len(name) for name, _ in where) + 2
    lines += [f"{name:<{width}}{path}" for name, path in where]
    if command == "finetune" or task is not None:
        lines.append(f"next: lmforge predict --model {q} --data FILE    "
                     f"(or lmforge evaluate --model {q} --data LABELED_FILE)")
    elif objective == "electra":  # the exported discriminator has no masked-LM head
        lines.append(f"next: lmforge finetune --model {q} --data TRAIN_FILE --out runs/finetune")
    elif objective in MASKED_OBJECTIVES:
        lines.append(f'next: lmforge fill-mask --model {q} --text "The [MASK] is bright."')
    else:
        lines.append(f'next: lmforge generate --model {q} --prompt "Once upon a time"')
    return "\n".join(lines)


def print_run_summary(command: str, run_dir: str | Path, result: dict, **kwargs) -> None:
    """Print :func:`run_summary` once per job (rank 0 of a torchrun job)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_summary(command, run_dir, result, **kwargs))

"""Does pretraining help? The same architecture fine-tuned on the same task and budget from a
pretrained checkpoint and from random initialization, over several seeds: final metrics (mean
± std and the gap in points) and both learning curves, as a table, JSON and a PNG."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from .finetune import FinetuneConfig, finetune


def read_curve(run_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if metric in record:
            steps.append(record["step"])
            values.append(record[metric])
    return steps, values


def pretrain_vs_scratch(cfg: FinetuneConfig, seeds: list[int], overwrite: bool = False) -> dict:
    """Fine-tune ``cfg.model`` as is and re-initialized, once per seed; returns the summary."""
    out = Path(cfg.out_dir)
    results = {}
    for init, scratch in (("pretrained", False), ("scratch", True)):
        run = replace(cfg, from_scratch=scratch, out_dir=str(out / init))
        results[init] = finetune(run, seeds, overwrite=overwrite)
    metric = results["pretrained"]["runs"][0].get("best_metric") or cfg.best_metric
    if metric == "auto":
        metric = next(k for k in results["pretrained"]["mean"] if k != "val_loss")
    curves = {init: [read_curve(out / init / f"seed-{s}", metric) for s in seeds] for init in results}
    summary = {"metric": metric, "seeds": seeds, "model": cfg.model, "task": cfg.task, "data": cfg.data,
               "val_data": cfg.val_data,
               **{init: {"mean": r["mean"][metric], "std": r["std"][metric],
                         "per_seed": [run[metric] for run in r["runs"]]} for init, r in results.items()}}
    scale = 1 if "loss" in metric else 100  # points for accuracy-like metrics
    summary["gap_points"] = scale * (summary["pretrained"]["mean"] - summary["scratch"]["mean"])
    atomic_write_text(out / "experiment.json", json.dumps(summary, indent=2) + "\n")
    plot_curves(curves, metric, out / "curves.png", title=f"{cfg.task}: pretrained vs scratch")
    return summary


def plot_curves(curves: dict, metric: str, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for color, (init, runs) in zip(("tab:blue", "tab:orange"), curves.items()):
        for i, (steps, values) in enumerate(runs):
            ax.plot(steps, values, color=color, alpha=0.35, lw=1)
        if runs and all(len(r[1]) == len(runs[0][1]) for r in runs) and runs[0][1]:
            ax.plot(runs[0][0], np.mean([r[1] for r in runs], axis=0), color=color, lw=2,
                    label=f"{init} (mean of {len(runs)})")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_experiment(summary: dict) -> str:
    m = summary["metric"]
    rows = [f"{'init':<12} {m + ' mean':>22} {'std':>8}   per seed"]
    for init in ("pretrained", "scratch"):
        r = summary[init]
        rows.append(f"{init:<12} {r['mean']:>22.4f} {r['std']:>8.4f}   "
                    + ", ".join(f"{v:.4f}" for v in r["per_seed"]))
    rows.append(f"gap (pretrained - scratch): {summary['gap_points']:+.2f} points")
    return "\n".join(rows)

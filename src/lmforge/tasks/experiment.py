"""Does pretraining help? The same architecture fine-tuned on the same task and budget from a
pretrained checkpoint and from random initialization, over several seeds: final metrics (mean
± std and the gap in points) and both learning curves, as a table, JSON and a PNG. With label
counts: the same at every count of labeled examples (fixed nested subsets), a label-efficiency
curve per arm with error bars, and a third arm for a continued-pretraining checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..files import atomic_file, atomic_write_text
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


def parse_label_counts(text: str) -> list[int | str]:
    """'100,300,1000,all' -> [100, 300, 1000, 'all'] (ascending, 'all' last)."""
    from ..errors import ConfigError
    counts: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            counts.append("all")
            continue
        try:
            value = int(float(part))
        except ValueError:
            raise ConfigError(f"--label-counts must be counts or 'all', got {part!r}") from None
        if value < 2 or value != float(part):
            raise ConfigError(f"--label-counts must be whole numbers >= 2, got {part!r}")
        counts.append(value)
    if not counts:
        raise ConfigError("--label-counts needs at least one count")
    numbers = sorted({c for c in counts if c != "all"})
    return numbers + (["all"] if "all" in counts else [])


def label_efficiency(cfg: FinetuneConfig, seeds: list[int], label_counts: list[int | str], *,
                     continued: str | None = None, overwrite: bool = False) -> dict:
    """Every arm (pretrained ``cfg.model``, its random-init twin, and ``continued`` when given)
    fine-tuned at every label count over ``seeds``. The subsets are nested: the first n of one
    fixed permutation of the training rows (``max_train_examples``), the same for every arm and
    seed. A finished (arm, count) with the same seeds is read back, not trained again."""
    out = Path(cfg.out_dir)
    arms = {"pretrained": (cfg.model, False), "scratch": (cfg.model, True)}
    if continued:
        arms["continued"] = (continued, False)
    table: dict = {arm: {} for arm in arms}
    metric = None
    examples: dict = {}
    for count in label_counts:
        for arm, (model, scratch) in arms.items():
            folder = out / arm / f"labels-{count}"
            summary_file = folder / "summary.json"
            result = json.loads(summary_file.read_text()) if summary_file.is_file() else None
            if result is None or result.get("seeds") != seeds or overwrite:
                run = replace(cfg, model=model, from_scratch=scratch, out_dir=str(folder),
                              max_train_examples=0 if count == "all" else int(count))
                result = finetune(run, seeds, overwrite=True)
            if metric is None:
                metric = result["runs"][0].get("best_metric") or cfg.best_metric
                if metric == "auto":
                    metric = next(k for k in result["mean"] if k != "val_loss")
            examples[str(count)] = result["runs"][0].get("train_examples", count)
            table[arm][str(count)] = {"mean": result["mean"][metric], "std": result["std"][metric],
                                      "per_seed": [r[metric] for r in result["runs"]]}
    scale = 1 if "loss" in metric else 100
    summary = {"metric": metric, "seeds": seeds, "label_counts": [str(c) for c in label_counts],
               "train_examples": examples, "model": cfg.model, "continued": continued,
               "task": cfg.task, "data": cfg.data, "val_data": cfg.val_data, "arms": table,
               "gap_points": {str(c): scale * (table["pretrained"][str(c)]["mean"]
                                                - table["scratch"][str(c)]["mean"])
                              for c in label_counts}}
    if continued:
        summary["continued_gap_points"] = {
            str(c): scale * (table["continued"][str(c)]["mean"] - table["pretrained"][str(c)]["mean"])
            for c in label_counts}
    atomic_write_text(out / "label_efficiency.json", json.dumps(summary, indent=2) + "\n")
    plot_label_efficiency(summary, out / "label_efficiency.png")
    return summary


def plot_label_efficiency(summary: dict, path: Path) -> Path:
    """Metric over the number of labeled examples (log axis), mean ± std over seeds per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    counts = summary["label_counts"]
    x = [summary["train_examples"][c] for c in counts]
    scale = 1 if "loss" in summary["metric"] else 100
    for color, (arm, rows) in zip(("tab:blue", "tab:orange", "tab:green"), summary["arms"].items()):
        means = [scale * rows[c]["mean"] for c in counts]
        stds = [scale * rows[c]["std"] for c in counts]
        ax.errorbar(x, means, yerr=stds, color=color, marker="o", capsize=4, label=arm)
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n:,}" for n in x], rotation=30)
    ax.set_xlabel("labeled training examples")
    ax.set_ylabel(summary["metric"] + ("" if scale == 1 else " (points)"))
    ax.set_title(f"{summary['task']}: label efficiency (mean ± std over {len(summary['seeds'])} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def format_label_efficiency(summary: dict) -> str:
    m, counts = summary["metric"], summary["label_counts"]
    scale = 1 if "loss" in m else 100
    head = f"{'labels':<10}" + "".join(f"{arm:>22}" for arm in summary["arms"]) + f"{'gap (pre - scratch)':>22}"
    rows = [f"{m} (mean ± std over {len(summary['seeds'])} seeds)", head]
    for c in counts:
        n = summary["train_examples"][c]
        cells = "".join(f"{scale * r[c]['mean']:>14.2f} ± {scale * r[c]['std']:<5.2f}"
                        for r in summary["arms"].values())
        rows.append(f"{n:<10,}{cells}{summary['gap_points'][c]:>+22.2f}")
    return "\n".join(rows)

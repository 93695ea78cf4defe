"""PNG plots of a run: the loss curve people would rather see than read."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .metrics import read_metrics


def plot_loss(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot train and validation loss against step from ``metrics.jsonl`` into ``loss.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        raise DataError(f"no loss values in {run_dir / 'metrics.jsonl'}")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(f"lmforge: {run_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out

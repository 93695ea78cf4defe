"""PNG plots of a scaling fit: isoFLOP curves, the fitted surface's contours with the
compute-optimal frontier, and residuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_file
from .fit import Table, chinchilla_loss, compute_optimal, isoflop_optimal


def _save(fig, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_isoflop(t: Table, fit: dict, path: Path) -> Path:
    """Loss over N per compute level with each slice's parabola and vertex; beside it, the
    slice optima N_opt(C) with both approaches' power laws."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    levels = sorted(set(t.level.tolist()))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(2, len(levels))))
    slices = {s["level"]: s for s in fit["approach2"]["slices"]}
    for color, lv in zip(colors, levels):
        idx = np.where(t.level == lv)[0]
        C = float(np.exp(np.log(t.C[idx]).mean()))
        ax.scatter(t.N[idx], t.loss[idx], color=color, zorder=3, label=f"C = {C:.2g}")
        s = slices.get(lv)
        if s is not None and s["convex"]:
            x = np.linspace(np.log(t.N[idx].min()) - 0.2, np.log(t.N[idx].max()) + 0.2, 100)
            ax.plot(np.exp(x), np.polyval(s["parabola"], x), color=color, lw=1)
            if s["inside"]:
                ax.scatter([s["N_opt"]], [s["loss_opt"]], marker="*", s=140, color=color,
                           edgecolor="k", zorder=4)
        # The fitted law along this slice: D follows N as in the slice's runs (C / FLOPs per
        # token, a straight line in log-log), or C / 6N for a single run.
        n = np.geomspace(t.N[idx].min() / 1.5, t.N[idx].max() * 1.5, 100)
        if len(set(t.N[idx].tolist())) > 1:
            slope, icpt = np.polyfit(np.log(t.N[idx]), np.log(t.D[idx]), 1)
            d = np.exp(icpt + slope * np.log(n))
        else:
            d = C / (6 * n)
        ax.plot(n, chinchilla_loss(fit, n, d), color=color, lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters N ({fit.get('params', 'total')})")
    ax.set_ylabel("final validation loss")
    ax.set_title("isoFLOP slices: parabolas (solid), approach-3 law (dotted), optima (stars)")
    ax.legend(fontsize=8)
    used = [s for s in fit["approach2"]["slices"] if s["convex"] and s["inside"]]
    Cs = np.geomspace(t.C.min() / 2, t.C.max() * 8, 100)
    ax2.scatter([s["C"] for s in used], [s["N_opt"] for s in used], color="C0", zorder=3,
                label="slice optima (approach 2)")
    n2, _, _ = isoflop_optimal(fit["approach2"], Cs)
    if np.isfinite(n2).all():
        ax2.plot(Cs, n2, color="C0", label=f"approach 2: N* ~ C^{fit['approach2']['a']:.2f}")
    n3, _ = compute_optimal(fit, Cs)
    ax2.plot(Cs, n3, color="C3", ls="--", label=f"approach 3: N* ~ C^{fit['a']:.2f}")
    ax2.set_xscale("log"), ax2.set_yscale("log")
    ax2.set_xlabel("compute C (FLOPs)"), ax2.set_ylabel("compute-optimal N*")
    ax2.legend(fontsize=8)
    ax2.set_title("compute-optimal model size")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_contours(t: Table, fit: dict, path: Path, target: dict | None = None) -> Path:
    """Contours of the fitted L(N, D) over log N and log D, lines of equal compute, the
    compute-optimal frontier, the runs, and a predicted run (``target``: N, D)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5.5))
    n = np.geomspace(t.N.min() / 3, t.N.max() * 10, 200)
    d = np.geomspace(t.D.min() / 3, t.D.max() * 10, 200)
    NN, DD = np.meshgrid(n, d)
    LL = chinchilla_loss(fit, NN, DD)
    levels = np.quantile(LL, np.linspace(0.02, 0.9, 14))
    cs = ax.contour(NN, DD, LL, levels=np.unique(levels), cmap="viridis", linewidths=0.8)
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    for C in np.geomspace(t.C.min(), t.C.max() * 16, 5):
        ax.plot(n, C / (6 * n), color="0.75", lw=0.6, ls=":")
    Cs = np.geomspace(6 * n.min() * d.min(), 6 * n.max() * d.max(), 200)
    nopt, dopt = compute_optimal(fit, Cs)
    keep = (nopt >= n.min()) & (nopt <= n.max()) & (dopt >= d.min()) & (dopt <= d.max())
    ax.plot(nopt[keep], dopt[keep], color="C3", lw=2, label="compute-optimal frontier")
    sc = ax.scatter(t.N, t.D, c=t.loss, cmap="viridis", edgecolor="k", zorder=3, label="runs")
    if target is not None:
        ax.scatter([target["N"]], [target["D"]], marker="*", s=200, color="C1", edgecolor="k",
                   zorder=4, label="prediction")
    fig.colorbar(sc, ax=ax, label="observed loss")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlim(n.min(), n.max()), ax.set_ylim(d.min(), d.max())
    ax.set_xlabel(f"parameters N ({fit.get('params', 'total')})"), ax.set_ylabel("tokens D")
    ax.set_title(f"L(N, D) = {fit['E']:.3g} + {fit['A']:.3g}/N^{fit['alpha']:.3f} + "
                 f"{fit['B']:.3g}/D^{fit['beta']:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_residuals(t: Table, fit: dict, path: Path) -> Path:
    """Observed / predicted loss - 1 for every run, over compute, coloured by N."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    resid = 100 * (t.loss / chinchilla_loss(fit, t.N, t.D) - 1)
    sc = ax.scatter(t.C, resid, c=np.log10(t.N), cmap="plasma", edgecolor="k")
    fig.colorbar(sc, ax=ax, label="log10 N")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)"), ax.set_ylabel("observed / fitted loss - 1 (%)")
    ax.set_title(f"approach-3 residuals (RMSE of log loss {fit['rmse_log']:.4f})")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_all(t: Table, fit: dict, folder: Path, target: dict | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_isoflop(t, fit, folder / "isoflop.png"),
            plot_contours(t, fit, folder / "contours.png", target),
            plot_residuals(t, fit, folder / "residuals.png")]

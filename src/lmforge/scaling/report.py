"""The scale commands as functions (plan, run, fit, predict) and their human summaries."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import atomic_write_text
from .family import Family
from .fit import CONSTANTS, PUBLISHED, chinchilla_loss, fit_table, make_table, predict, read_rows
from .grid import ScalePlanOptions, load_plan, make_grid, save_plan
from .sweep import read_results

FIT_FILE = "fit.json"
PREDICTION_FILE = "prediction.json"


def plan_sweep(opts: ScalePlanOptions, out: str | Path | None = None, *, overwrite: bool = False,
               measure: bool = True) -> dict:
    """`lmforge scale plan`: the grid (saved as OUT/plan.json when ``out`` is given)."""
    plan = make_grid(opts, measure=measure)
    if out is not None:
        save_plan(plan, out, overwrite)
    return plan


def fit_sweep(source: str | Path, *, out: str | Path | None = None, params: str = "total",
              bootstrap: int = 200, seed: int = 0, plots: bool = True) -> dict:
    """`lmforge scale fit`: fit a sweep folder or a CSV/JSONL table; writes OUT/fit.json and the
    plots (OUT defaults to the sweep folder; a table is only printed unless ``out`` is given)."""
    source = Path(source)
    rows = read_rows(source)
    fit = fit_table(rows, params=params, bootstrap=bootstrap, seed=seed, where=str(source))
    fit["source"] = str(source)
    folder = Path(out) if out is not None else (source if source.is_dir() else None)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / FIT_FILE, json.dumps(fit, indent=1))
        fit["files"] = [str(folder / FIT_FILE)]
        if plots:
            from .plots import plot_all
            table = make_table(rows, params, str(source))
            fit["files"] += [str(p) for p in plot_all(table, fit, folder)]
    return fit


def load_fit(source: str | Path, params: str = "total") -> tuple[dict, Path | None]:
    """A fit from a fit.json, or a sweep folder's fit.json (fitted now when missing or older
    than its results). Returns (fit, sweep folder or None)."""
    source = Path(source)
    if source.is_dir():
        path = source / FIT_FILE
        results = source / "results.jsonl"
        if path.is_file() and (not results.is_file() or path.stat().st_mtime >= results.stat().st_mtime):
            fit = _read_json(path)
            if fit.get("params") == params:
                return fit, source
        return fit_sweep(source, params=params), source
    if source.suffix == ".json" and source.is_file():
        return _read_json(source), None
    if source.is_file():
        return fit_sweep(source, params=params, plots=False), None
    raise DataError(f"no fit, sweep folder or table at {source}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(k in data for k in CONSTANTS):
        raise DataError(f"{path} is not a scaling fit (no E, A, B, alpha, beta)")
    return data


def parse_compute(text: str | float, fit: dict) -> float:
    """FLOPs from '1e15' or 'Kx' (K times the largest compute of the fitted runs)."""
    text = str(text).strip().lower()
    try:
        if text.endswith("x"):
            return float(text[:-1]) * fit["C_range"][1]
        value = float(text)
    except (ValueError, KeyError):
        raise ConfigError(f"--compute must be FLOPs (1e15) or a multiple of the largest swept "
                          f"compute (4x), got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"--compute must be positive, got {text!r}")
    return value


def predict_sweep(source: str | Path, *, compute: str | float | None = None, N: float | None = None,
                  D: float | None = None, params: str = "total", out: str | Path | None = None,
                  overwrite: bool = False) -> dict:
    """`lmforge scale predict`: the loss and compute-optimal shape for a budget beyond the sweep.
    With a sweep folder, also the family member to train (the one the fit predicts lowest at
    that compute, D = C / its FLOPs per token) and its loss; ``out`` writes that run as a
    one-run plan (OUT/plan.json) with the prediction (OUT/prediction.json), for `scale run`."""
    fit, sweep = load_fit(source, params)
    if compute is None and (N is None or D is None):
        raise ConfigError("give --compute, or both --params-count and --tokens")
    C = parse_compute(compute, fit) if compute is not None else None
    result = predict(fit, compute=C, N=N, D=D) if C is not None else predict(fit, N=N, D=D)
    result["params"] = params
    if C is not None and sweep is not None and (sweep / "plan.json").is_file():
        plan = load_plan(sweep)
        member, spec = _best_member(plan, fit, C, params)
        run = predict(fit, N=spec["params"] if params == "total" else spec["non_embedding_params"],
                      D=spec["tokens"])
        result["run"] = {**spec, "predicted_loss": run["loss"],
                         "interval": run.get("intervals", {}).get("loss")}
        if out is not None:
            out = Path(out)
            new = {**plan, "runs": [spec], "levels": [C], "est_seconds": None,
                   "predicted_from": str(sweep)}
            speed = plan.get("tokens_per_second", {}).get(member.name)
            if speed:
                spec["est_seconds"] = spec["tokens"] / speed
                new["est_seconds"] = spec["est_seconds"]
            save_plan(new, out, overwrite)
            record = {"made_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "from": str(sweep),
                      "fit": {k: fit[k] for k in CONSTANTS}, "params": params,
                      "runs": {spec["name"]: result["run"]}}
            atomic_write_text(out / PREDICTION_FILE, json.dumps(record, indent=1))
            result["plan"] = str(out / "plan.json")
    elif out is not None:
        raise ConfigError("--out writes the predicted run's plan: it needs a sweep folder (with "
                          "plan.json) as the source and --compute")
    return result


def _best_member(plan: dict, fit: dict, C: float, params: str):
    """The family member with the lowest fitted loss at compute ``C``, and its run spec."""
    from .grid import run_lr, options_from_plan
    family = Family.from_dict(plan["family"])
    opts = options_from_plan(plan)
    tokens_per_step = opts.batch_size * opts.block_size
    best = None
    for shape in family.members():
        steps = int(round(C / shape.flops_per_token / tokens_per_step))
        if steps < opts.min_steps:
            continue
        n = shape.params if params == "total" else shape.non_embedding
        loss = float(chinchilla_loss(fit, n, steps * tokens_per_step))
        if best is None or loss < best[0]:
            best = (loss, shape, steps)
    if best is None:
        raise ConfigError(f"no member of the family trains for --min-steps at compute {C:.3g}")
    _, shape, steps = best
    tokens = steps * tokens_per_step
    spec = {"name": f"predict-{shape.name}", "level": 0, "compute": C, "n_layer": shape.n_layer,
            "n_embd": shape.n_embd, "n_head": shape.n_head, "params": shape.params,
            "non_embedding_params": shape.non_embedding, "flops_per_token": shape.flops_per_token,
            "tokens": tokens, "steps": steps, "flops": shape.flops_per_token * tokens,
            "lr": run_lr(opts, shape.n_embd), "warmup_steps": min(opts.warmup_steps, max(1, steps // 10))}
    return shape, spec


def prediction_checks(folder: str | Path) -> list[dict]:
    """For a folder made by `scale predict --out`: each finished run's predicted and observed
    loss and the relative error."""
    path = Path(folder) / PREDICTION_FILE
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    rows = {r["name"]: r for r in read_results(folder)}
    checks = []
    for name, pred in record.get("runs", {}).items():
        if name in rows:
            got = rows[name]["loss"]
            checks.append({"name": name, "predicted": pred["predicted_loss"],
                           "interval": pred.get("interval"), "observed": got,
                           "error_pct": 100 * (got / pred["predicted_loss"] - 1),
                           "predicted_at": record.get("made_at")})
    return checks


# ---- summaries -------------------------------------------------------------------------------
def _iv(fit: dict, key: str, fmt: str) -> str:
    lo, hi = fit.get("intervals", {}).get(key, (None, None))
    return f"[{format(lo, fmt)}, {format(hi, fmt)}]" if lo is not None and math.isfinite(lo) else ""


def format_fit(fit: dict) -> str:
    lines = [f"{fit['runs']} runs, C {fit['C_range'][0]:.3g}-{fit['C_range'][1]:.3g} FLOPs, "
             f"N {fit['N_range'][0]:,.0f}-{fit['N_range'][1]:,.0f} ({fit['params']} parameters), "
             f"D {fit['D_range'][0]:.3g}-{fit['D_range'][1]:.3g} tokens", "",
             f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta (Huber delta {fit['huber_delta']:g} on "
             f"log loss, L-BFGS, {len(fit.get('bootstrap', []))} bootstrap refits for 95% intervals)",
             f"{'':<8}{'fitted':>12}{'95% interval':>26}" + "".join(f"{name:>22}" for name in PUBLISHED)]
    fmts = {"E": ".3f", "A": ".4g", "B": ".4g", "alpha": ".3f", "beta": ".3f"}
    for k in CONSTANTS:
        lines.append(f"{k:<8}{format(fit[k], fmts[k]):>12}{_iv(fit, k, fmts[k]):>26}"
                     + "".join(f"{format(c[k], fmts[k]):>22}" for c in PUBLISHED.values()))
    lines.append(f"compute-optimal: N* ~ C^{fit['a']:.3f} {_iv(fit, 'a', '.3f')}, D* ~ C^{fit['b']:.3f} "
                 f"{_iv(fit, 'b', '.3f')} (Chinchilla: 0.46 / 0.54)")
    for f in fit.get("frontier", []):
        ni, di = f["N_interval"], f["D_interval"]
        lines.append(f"  C {f['C']:.3g}: N* {f['N_opt']:,.0f}"
                     + (f" [{ni[0]:,.0f}, {ni[1]:,.0f}]" if ni[0] is not None else "")
                     + f", D* {f['D_opt']:.3g}" + (f" [{di[0]:.3g}, {di[1]:.3g}]" if di[0] is not None else ""))
    lines.append(f"fit quality: RMSE of log loss {fit['rmse_log']:.4f}, largest residual "
                 f"{fit['max_abs_residual_pct']:.2f}%")
    other = fit.get("other_convention")
    if other:
        lines.append(f"with {other['params']} parameters: E {other['E']:.3f}, A {other['A']:.4g}, "
                     f"B {other['B']:.4g}, alpha {other['alpha']:.3f} {_iv(other, 'alpha', '.3f')}, "
                     f"beta {other['beta']:.3f}, N* ~ C^{other['a']:.3f} (RMSE {other['rmse_log']:.4f})")
    a2 = fit["approach2"]
    lines.append("")
    lines.append(f"approach 2 (isoFLOP parabolas): {a2['used']} of {len(a2['slices'])} slices have an "
                 "optimum inside their sizes")
    for s in a2["slices"]:
        where = "" if s["inside"] else ("  (no minimum inside the slice: not used)" if s["convex"]
                                         else "  (not convex: not used)")
        lines.append(f"  C {s['C']:.3g}: N_opt {s['N_opt']:,.0f}, D_opt {s['D_opt']:.3g}, "
                     f"loss {s['loss_opt']:.4f}{where}")
    if "a" in a2:
        lines.append(f"  N_opt ~ C^{a2['a']:.3f} {_iv(a2, 'a', '.3f')}, D_opt ~ C^{a2['b']:.3f} "
                     f"{_iv(a2, 'b', '.3f')}, L_opt(C) ~ C^-{a2['gamma']:.4f}")
    k = fit["kaplan"]
    lines += ["", f"Kaplan: L(N, D) = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D: N_c {k['N_c']:.3g}, "
              f"alpha_N {k['alpha_N']:.3f} (L(N) = (N_c/N)^alpha_N), D_c {k['D_c']:.3g}, alpha_D "
              f"{k['alpha_D']:.3f} (L(D) = (D_c/D)^alpha_D)"]
    if fit.get("files"):
        lines += ["", "wrote " + ", ".join(fit["files"])]
    return "\n".join(lines)


def format_prediction(p: dict) -> str:
    iv = p.get("intervals", {})

    def rng(key, fmt):
        lo, hi = iv.get(key, (None, None))
        return f" [{format(lo, fmt)}, {format(hi, fmt)}]" if lo is not None else ""

    lines = []
    if "compute" in p:
        lines.append(f"compute {p['compute']:.3g} FLOPs: compute-optimal N* {p['N_opt']:,.0f}"
                     f"{rng('N_opt', ',.0f')}, D* {p['D_opt']:.3g}{rng('D_opt', '.3g')} tokens "
                     f"(C = 6ND), loss {p['loss']:.4f}{rng('loss', '.4f')}")
        a2 = p.get("approach2", {})
        if a2 and math.isfinite(a2.get("N_opt", math.nan)):
            lines.append(f"approach 2: N_opt {a2['N_opt']:,.0f}, D_opt {a2['D_opt']:.3g}, loss "
                         f"{a2['loss_opt']:.4f}")
    else:
        lines.append(f"N {p['N']:,.0f}, D {p['D']:.3g}: loss {p['loss']:.4f}{rng('loss', '.4f')}")
    if "kaplan_loss" in p:
        lines.append(f"Kaplan form: loss {p['kaplan_loss']:.4f}")
    run = p.get("run")
    if run:
        ivr = run.get("interval")
        lines.append(f"train: {run['name']} ({run['n_layer']} layers, width {run['n_embd']}, "
                     f"{run['params']:,} parameters) on {run['tokens']:,} tokens ({run['steps']:,} "
                     f"steps): predicted loss {run['predicted_loss']:.4f}"
                     + (f" [{ivr[0]:.4f}, {ivr[1]:.4f}]" if ivr and ivr[0] is not None else ""))
    if p.get("plan"):
        lines.append(f"wrote {p['plan']}: train it with `lmforge scale run {Path(p['plan']).parent}`")
    return "\n".join(lines)

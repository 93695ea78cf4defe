"""Scaling-law fits of a table of runs (N parameters, D tokens, final loss L).

- Approach 3 (Hoffmann et al. 2022, "Chinchilla"): L(N, D) = E + A/N^alpha + B/D^beta, fitted by
  minimising the Huber loss (delta 1e-3) between log-predicted and log-observed loss with L-BFGS
  from a grid of starting points, in the parametrisation log L = LSE(a - alpha log N,
  b - beta log D, e) (A = e^a, B = e^b, E = e^e). Compute-optimal allocation under C = 6ND:
  N*(C) = G (C/6)^(beta/(alpha+beta)), D*(C) = (C/6) / N*(C), G = (alpha A / (beta B))^(1/(alpha+beta)).
- Approach 2: per isoFLOP slice a parabola of L over log N (and over log D); its vertex is the
  slice's optimum; then power laws N_opt = k C^a and D_opt = k' C^b over the slices, and the
  slice minima's L_opt(C) = (C_c / C)^gamma (Kaplan's compute law).
- Kaplan et al. 2020: L(N, D) = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D, whose limits are
  L(N) = (N_c/N)^alpha_N (data unlimited) and L(D) = (D_c/D)^alpha_D (model unlimited).
- Bootstrap (resampling runs; within each slice for approach 2) gives 95% intervals of every
  constant, of the compute-optimal allocation and of predictions.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

HUBER_DELTA = 1e-3
# Published constants (nats per token of their corpora and tokenizers: the shape of the law
# compares, the values only loosely).
PUBLISHED = {
    "Hoffmann 2022": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "Besiroglu 2024 refit": {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.348, "beta": 0.366},
}
CONSTANTS = ("E", "A", "B", "alpha", "beta")


# ---- reading a table -------------------------------------------------------------------------
@dataclass
class Table:
    """Runs as arrays: N (parameters in the chosen convention), D (tokens), C (FLOPs), loss;
    ``level`` groups isoFLOP slices (-1: none given)."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    level: np.ndarray
    N_other: np.ndarray | None = None  # the other parameter convention, when known

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, idx) -> "Table":
        other = self.N_other[idx] if self.N_other is not None else None
        return Table(self.N[idx], self.D[idx], self.C[idx], self.loss[idx], self.level[idx], other)


def _number(row: dict, key: str, where: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {key!r} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{where}: column {key!r} must be positive and finite, got {value!r}")
    return value


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a sweep folder (results.jsonl), a .jsonl or a .csv table."""
    path = Path(path)
    if path.is_dir():
        from .sweep import read_results
        rows = read_results(path)
        if not rows:
            raise DataError(f"{path} has no finished runs yet (results.jsonl); run "
                            f"`lmforge scale run {path}`")
        return rows
    if not path.is_file():
        raise DataError(f"no such table or sweep folder: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise DataError(f"{path}: not JSON lines ({exc})") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise DataError(f"{path} has no rows (a CSV with columns N, D or C, and loss)")
    return rows


def make_table(rows: list[dict], params: str = "total", where: str = "table") -> Table:
    """Columns: ``N`` (or ``params``), ``D`` (or ``tokens``) or ``C`` (FLOPs; D = C / 6N),
    ``loss``; optional ``N_non_embedding``, ``level``/``compute`` (the isoFLOP slice)."""
    if params not in ("total", "non-embedding"):
        raise ConfigError(f"params must be total or non-embedding, got {params!r}")
    N, D, C, L, level, other = [], [], [], [], [], []
    for i, row in enumerate(rows, 1):
        at = f"{where} row {i}"
        keys = {k.strip(): v for k, v in row.items() if k is not None}
        n = _number(keys, "N", at) or _number(keys, "params", at)
        n_ne = _number(keys, "N_non_embedding", at)
        d = _number(keys, "D", at) or _number(keys, "tokens", at)
        c = _number(keys, "C", at) or _number(keys, "flops", at)
        loss = _number(keys, "loss", at)
        if n is None or loss is None or (d is None and c is None):
            raise DataError(f"{at}: needs columns N (parameters), D (tokens) or C (FLOPs), and "
                            f"loss; has {', '.join(keys) or 'none'}")
        if params == "non-embedding":
            if n_ne is None:
                raise DataError(f"{at}: --params non-embedding needs an N_non_embedding column")
            n, n_ne = n_ne, n
        d = d if d is not None else c / (6 * n)
        c = c if c is not None else 6 * n * d
        N.append(n), D.append(d), C.append(c), L.append(loss), other.append(n_ne)
        lv = keys.get("level")
        try:
            level.append(int(float(lv)) if lv not in (None, "") else -1)
        except (TypeError, ValueError):
            raise DataError(f"{at}: column 'level' must be an integer slice number, got {lv!r}") from None
    table = Table(np.array(N), np.array(D), np.array(C), np.array(L), np.array(level),
                  np.array(other, dtype=float) if all(o is not None for o in other) else None)
    if len(table) < 5:
        raise DataError(f"{where}: {len(table)} runs; a fit of 5 constants needs at least 5")
    if (table.level < 0).all():
        table.level = _slices_by_compute(table.C)
    return table


def _slices_by_compute(C: np.ndarray, tolerance: float = 0.15) -> np.ndarray:
    """isoFLOP slices of a table without levels: runs within ``tolerance`` in log C."""
    order = np.argsort(C)
    level = np.empty(len(C), dtype=int)
    current, start = -1, None
    for i in order:
        if start is None or math.log(C[i] / start) > tolerance:
            current, start = current + 1, C[i]
        level[i] = current
    return level


# ---- approach 3 ------------------------------------------------------------------------------
def _objective(theta, logN, logD, logL, delta):
    """Huber loss of log-predicted vs log-observed loss and its gradient, for a batch of
    parameter vectors ``theta`` (S, 5) = (a, b, e, alpha, beta) and data (n,) or (S, n)."""
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    t = np.stack(np.broadcast_arrays(a - alpha * logN, b - beta * logD, e + 0 * logN))
    top = t.max(axis=0)
    w = np.exp(t - top)
    s = w.sum(axis=0)
    r = top + np.log(s) - logL
    w /= s
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)
    g = np.where(small, r, delta * np.sign(r))
    grad = np.stack([(g * w[0]).sum(1), (g * w[1]).sum(1), (g * w[2]).sum(1),
                     -(g * w[0] * logN).sum(1), -(g * w[1] * logD).sum(1)], axis=1)
    return value, grad


def batched_lbfgs(fun, X0: np.ndarray, *, memory: int = 10, max_iter: int = 500,
                  ftol: float = 1e-10, gtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS (two-loop recursion, Armijo backtracking) run independently from every row of
    ``X0`` at once: ``fun(X) -> (values (S,), gradients (S, k))``. One scipy L-BFGS-B call per
    start costs ~0.1 s of Python overhead; thousands of starts (and bootstrap refits) in lockstep
    take about a second. Returns (X, values)."""
    X = np.array(X0, float)
    S, k = X.shape
    F, G = fun(X)
    hist_s, hist_y = np.zeros((S, memory, k)), np.zeros((S, memory, k))
    rho = np.zeros((S, memory))
    count = np.zeros(S, int)  # history entries per start
    active = np.isfinite(F)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.where(active)[0]
        g = G[idx]
        q = g.copy()
        alphas = np.zeros((len(idx), memory))
        n = count[idx]
        for j in range(memory):  # newest first; slot (n - 1 - j) % memory
            slot = (n - 1 - j) % memory
            use = j < np.minimum(n, memory)
            sj, yj = hist_s[idx, slot], hist_y[idx, slot]
            a_j = np.where(use, rho[idx, slot] * (sj * q).sum(1), 0.0)
            q -= a_j[:, None] * yj
            alphas[:, j] = a_j
        last = (n - 1) % memory
        sl, yl = hist_s[idx, last], hist_y[idx, last]
        yy = (yl * yl).sum(1)
        gamma = np.where((n > 0) & (yy > 0), (sl * yl).sum(1) / np.where(yy > 0, yy, 1), 1e-3)
        r = gamma[:, None] * q
        for j in reversed(range(memory)):  # oldest first
            slot = (n - 1 - j) % memory
            use = j < np.minimum(n, memory)
            b_j = rho[idx, slot] * (hist_y[idx, slot] * r).sum(1)
            r += np.where(use, alphas[:, j] - b_j, 0.0)[:, None] * hist_s[idx, slot]
        d = -r
        slope = (g * d).sum(1)
        bad = ~(slope < 0)
        d[bad], slope[bad] = -g[bad], -(g[bad] ** 2).sum(1)
        x0, f0 = X[idx], F[idx]
        x_new, f_new, g_new = x0.copy(), f0.copy(), g.copy()
        # Armijo backtracking: the full step for every start in one call, then the starts that
        # need shorter steps try 2^-1 ... 2^-4 at once, then 2^-5 ... 2^-20 (three calls in all).
        pending = np.ones(len(idx), bool)
        for steps in (np.ones(1), 0.5 ** np.arange(1, 5), 0.5 ** np.arange(5, 21)):
            p = np.where(pending)[0]
            if not len(p):
                break
            cand = (x0[p, None, :] + steps[None, :, None] * d[p, None, :]).reshape(-1, k)
            fc, gc = fun(cand, np.repeat(idx[p], len(steps)))
            fc, gc = fc.reshape(len(p), len(steps)), gc.reshape(len(p), len(steps), k)
            good = np.isfinite(fc) & (fc <= f0[p, None] + 1e-4 * steps[None] * slope[p, None])
            first = good.argmax(1)
            found = good.any(1)
            rows = p[found]
            x_new[rows] = cand.reshape(len(p), len(steps), k)[found, first[found]]
            f_new[rows], g_new[rows] = fc[found, first[found]], gc[found, first[found]]
            pending[rows] = False
        moved = ~pending
        s_vec, y_vec = x_new - x0, g_new - g
        sy = (s_vec * y_vec).sum(1)
        store = moved & (sy > 1e-20)
        slot = count[idx] % memory
        hist_s[idx[store], slot[store]] = s_vec[store]
        hist_y[idx[store], slot[store]] = y_vec[store]
        rho[idx[store], slot[store]] = 1.0 / sy[store]
        count[idx[store]] += 1
        X[idx], F[idx], G[idx] = x_new, f_new, g_new
        change = np.abs(f0 - f_new) <= ftol * np.maximum(np.maximum(np.abs(f0), np.abs(f_new)), 1.0)
        done = ~moved | (moved & change) | (np.abs(g_new).max(1) <= gtol)
        active[idx[done]] = False
    return X, F


# Hoffmann et al.'s grid of initialisations (alpha, beta, e, a, b).
INIT_GRID = {"alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
             "e": (-1.0, -0.5, 0.0, 0.5, 1.0), "a": (0, 5, 10, 15, 20, 25), "b": (0, 5, 10, 15, 20, 25)}


def _minimize(starts, logN, logD, logL, delta) -> list[tuple[float, np.ndarray]]:
    """Every start with batched L-BFGS, the best one polished by scipy's L-BFGS-B; the optima
    best first. ``logN`` etc. are (n,) for one data set or (S, n) for one per start."""
    from scipy.optimize import minimize
    starts = np.asarray(starts, float)
    per_start = np.ndim(logN) == 2

    def fun(X, rows=None):
        if per_start:
            sel = rows if rows is not None else slice(None)
            return _objective(X, logN[sel], logD[sel], logL[sel], delta)
        return _objective(X, logN, logD, logL, delta)

    # Every start for 30 iterations, then the best 64 to convergence: the starts that trail
    # after 30 steps sit in the law's degenerate ridges (alpha or beta -> 0) and never win.
    X, F = batched_lbfgs(fun, starts, max_iter=30)
    F = np.where(np.isfinite(F) & np.isfinite(X).all(1), F, np.inf)
    best = np.argsort(F)[:64]
    X, F = batched_lbfgs(fun, X[best], max_iter=300)
    order = [i for i in np.argsort(F) if np.isfinite(F[i]) and np.all(np.isfinite(X[i]))]
    found = [(float(F[i]), X[i]) for i in order]
    if not per_start:  # scipy's L-BFGS-B finishes the 5 best (the ridges converge slowly)
        for j in range(min(5, len(found))):
            res = minimize(lambda x: tuple(v[0] for v in _objective(x, logN, logD, logL, delta)),
                           found[j][1], jac=True, method="L-BFGS-B",
                           options={"maxiter": 2000, "gtol": 1e-12, "ftol": 1e-15})
            if np.isfinite(res.fun) and res.fun <= found[j][0]:
                found[j] = (float(res.fun), res.x)
        found.sort(key=lambda item: item[0])
    return found


def _constants(theta: np.ndarray) -> dict:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def fit_chinchilla(t: Table, *, delta: float = HUBER_DELTA, starts=None, keep: int = 5) -> dict:
    """Approach 3 from every start of the grid (or ``starts``): the best fit's constants, its
    objective, and the ``keep`` best distinct optima (bootstrap refits start from them)."""
    logN, logD, logL = np.log(t.N), np.log(t.D), np.log(t.loss)
    if starts is None:
        starts = [(a, b, e, al, be) for al, be, e, a, b in itertools.product(*INIT_GRID.values())]
    found = _minimize(starts, logN, logD, logL, delta)
    if not found:
        raise DataError("the scaling-law fit did not converge from any starting point")
    best = found[0][1]
    distinct: list[np.ndarray] = []
    for _, x in found:
        if all(np.abs(x - y).max() > 1e-3 for y in distinct):
            distinct.append(x)
        if len(distinct) == keep:
            break
    return {**_constants(best), "objective": found[0][0], "theta": best.tolist(),
            "starts": [x.tolist() for x in distinct]}


def chinchilla_loss(c: dict, N, D):
    return c["E"] + c["A"] / np.asarray(N, float) ** c["alpha"] + c["B"] / np.asarray(D, float) ** c["beta"]


def compute_optimal(c: dict, C) -> tuple[np.ndarray, np.ndarray]:
    """N*(C), D*(C) of the fitted law under C = 6ND."""
    C = np.asarray(C, float)
    s = c["alpha"] + c["beta"]
    if c["alpha"] <= 0 or c["beta"] <= 0:
        return np.full_like(C, np.nan), np.full_like(C, np.nan)
    G = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1 / s)
    N = G * (C / 6) ** (c["beta"] / s)
    return N, C / 6 / N


# ---- approach 2 ------------------------------------------------------------------------------
def fit_isoflop(t: Table) -> dict:
    """Parabola per slice (L over log N, and over log D) and power laws of the vertices."""
    slices = []
    for lv in sorted(set(t.level.tolist())):
        idx = np.where(t.level == lv)[0]
        if len(set(t.N[idx].tolist())) < 3:
            continue
        C = float(np.exp(np.log(t.C[idx]).mean()))
        x, y = np.log(t.N[idx]), t.loss[idx]
        pN = np.polyfit(x, y, 2)
        pD = np.polyfit(np.log(t.D[idx]), y, 2)
        ok = pN[0] > 0 and pD[0] > 0
        n_opt = math.exp(-pN[1] / (2 * pN[0])) if pN[0] > 0 else float("nan")
        d_opt = math.exp(-pD[1] / (2 * pD[0])) if pD[0] > 0 else float("nan")
        inside = ok and t.N[idx].min() <= n_opt <= t.N[idx].max()
        l_opt = float(np.polyval(pN, math.log(n_opt))) if ok else float("nan")
        slices.append({"level": int(lv), "C": C, "runs": int(len(idx)), "N_opt": n_opt,
                       "D_opt": d_opt, "loss_opt": l_opt, "parabola": pN.tolist(),
                       "parabola_D": pD.tolist(), "convex": bool(ok), "inside": bool(inside)})
    used = [s for s in slices if s["convex"] and s["inside"]]
    out = {"slices": slices, "used": len(used)}
    if len(used) >= 2:
        logC = np.log([s["C"] for s in used])
        a, kN = np.polyfit(logC, np.log([s["N_opt"] for s in used]), 1)
        b, kD = np.polyfit(logC, np.log([s["D_opt"] for s in used]), 1)
        g, kL = np.polyfit(logC, np.log([s["loss_opt"] for s in used]), 1)
        out.update({"a": float(a), "N_coef": float(math.exp(kN)), "b": float(b),
                    "D_coef": float(math.exp(kD)), "gamma": float(-g), "L_coef": float(math.exp(kL))})
    return out


def isoflop_optimal(fit2: dict, C):
    C = np.asarray(C, float)
    if "a" not in fit2:
        return np.full_like(C, np.nan), np.full_like(C, np.nan), np.full_like(C, np.nan)
    return (fit2["N_coef"] * C ** fit2["a"], fit2["D_coef"] * C ** fit2["b"],
            fit2["L_coef"] * C ** -fit2["gamma"])


# ---- Kaplan ----------------------------------------------------------------------------------
def _kaplan_log(theta, logN, logD):
    lnNc, lnDc, aN, aD = theta
    return aD * np.logaddexp((aN / aD) * (lnNc - logN), lnDc - logD)


def fit_kaplan(t: Table, delta: float = HUBER_DELTA) -> dict:
    """Kaplan's joint form by the same Huber loss on log loss, batched L-BFGS from a grid of
    starts (central-difference gradients: four parameters)."""
    logN, logD, logL = np.log(t.N), np.log(t.D), np.log(t.loss)

    def value(X):
        lnNc, lnDc, aN, aD = (X[:, i:i + 1] for i in range(4))
        ok = (aN > 1e-4) & (aD > 1e-4) & (np.abs(lnNc) < 200) & (np.abs(lnDc) < 200)
        aD_safe = np.where(ok, aD, 1.0)
        r = aD_safe * np.logaddexp((aN / aD_safe) * (lnNc - logN), lnDc - logD) - logL
        h = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(1)
        return np.where(ok[:, 0], h, np.inf)

    def fun(X, rows=None):
        eps = 1e-6
        with np.errstate(invalid="ignore"):  # inf - inf outside the valid region
            grads = np.stack([(value(X + eps * e) - value(X - eps * e)) / (2 * eps)
                          for e in np.eye(4)], axis=1)
        return value(X), np.where(np.isfinite(grads), grads, 0.0)

    starts = np.array(list(itertools.product((5, 10, 15, 20, 30), (5, 10, 15, 20, 30),
                                             (0.05, 0.1, 0.3), (0.05, 0.1, 0.3))), float)
    X, F = batched_lbfgs(fun, starts, max_iter=200)
    F = np.where(np.isfinite(F), F, np.inf)
    lnNc, lnDc, aN, aD = X[int(F.argmin())]
    return {"N_c": float(math.exp(lnNc)), "D_c": float(math.exp(lnDc)), "alpha_N": float(aN),
            "alpha_D": float(aD), "objective": float(F.min())}


def kaplan_loss(k: dict, N, D):
    theta = (math.log(k["N_c"]), math.log(k["D_c"]), k["alpha_N"], k["alpha_D"])
    return np.exp(_kaplan_log(theta, np.log(np.asarray(N, float)), np.log(np.asarray(D, float))))


# ---- everything, with intervals --------------------------------------------------------------
def _interval(samples) -> list[float]:
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return [None, None]  # no bootstrap (JSON null, not NaN)
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def bootstrap_chinchilla(t: Table, fit: dict, resamples: list[np.ndarray],
                         delta: float = HUBER_DELTA) -> np.ndarray:
    """Approach-3 refits of ``resamples`` (arrays of run indices), each from the full fit's
    distinct optima, all in one batched L-BFGS; rows of (E, A, B, alpha, beta)."""
    if not resamples:
        return np.empty((0, 5))
    starts = np.asarray(fit["starts"], float)
    K = len(starts)
    idx = np.repeat(np.stack(resamples), K, axis=0)
    logN, logD, logL = np.log(t.N)[idx], np.log(t.D)[idx], np.log(t.loss)[idx]

    def fun(X, rows=None):
        sel = rows if rows is not None else slice(None)
        return _objective(X, logN[sel], logD[sel], logL[sel], delta)

    X, F = batched_lbfgs(fun, np.tile(starts, (len(resamples), 1)))
    F = np.where(np.isfinite(F), F, np.inf).reshape(len(resamples), K)
    best = X.reshape(len(resamples), K, 5)[np.arange(len(resamples)), F.argmin(1)]
    return np.array([[_constants(x)[k] for k in CONSTANTS] for x in best])


def _fit_one(t: Table, bootstrap: int, seed: int, delta: float) -> dict:
    c = fit_chinchilla(t, delta=delta)
    rng = np.random.default_rng(seed)
    levels = np.unique(t.level)
    resamples, boot2 = [], []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(t), len(t))
        if len(np.unique(t.N[idx])) >= 3 and len(np.unique(t.D[idx])) >= 3:
            resamples.append(idx)
        # Approach 2: resample runs within each slice.
        within = np.concatenate([rng.choice(np.where(t.level == lv)[0], (t.level == lv).sum())
                                 for lv in levels])
        f2 = fit_isoflop(t.subset(within))
        if "a" in f2:
            boot2.append([f2["a"], f2["b"], f2["gamma"], f2["N_coef"], f2["D_coef"], f2["L_coef"]])
    samples = bootstrap_chinchilla(t, c, resamples, delta)
    residual = np.log(t.loss) - np.log(chinchilla_loss(c, t.N, t.D))
    out = {k: c[k] for k in CONSTANTS}
    out["intervals"] = {k: _interval(samples[:, i]) for i, k in enumerate(CONSTANTS)}
    s = samples[:, 3] + samples[:, 4]
    out["a"] = c["beta"] / (c["alpha"] + c["beta"])  # N* ~ C^a
    out["b"] = c["alpha"] / (c["alpha"] + c["beta"])  # D* ~ C^b
    out["intervals"]["a"] = _interval(samples[:, 4] / s)
    out["intervals"]["b"] = _interval(samples[:, 3] / s)
    # Compute-optimal allocation with intervals at each slice's compute and 10x beyond.
    draws = [dict(zip(CONSTANTS, row)) for row in samples]
    levels_c = sorted({float(np.exp(np.log(t.C[t.level == lv]).mean())) for lv in levels})
    out["frontier"] = []
    for C in levels_c + [10 * max(levels_c)]:
        n_opt, d_opt = compute_optimal(c, C)
        opt = [compute_optimal(d, C) for d in draws]
        out["frontier"].append({"C": C, "N_opt": float(n_opt), "D_opt": float(d_opt),
                                "N_interval": _interval([o[0] for o in opt]),
                                "D_interval": _interval([o[1] for o in opt])})
    out["huber_objective"] = c["objective"]
    out["rmse_log"] = float(np.sqrt(np.mean(residual ** 2)))
    out["max_abs_residual_pct"] = float(100 * np.max(np.abs(np.expm1(residual))))
    out["bootstrap"] = samples.tolist()
    out["approach2"] = fit_isoflop(t)
    if boot2:
        b2 = np.array(boot2)
        out["approach2"]["intervals"] = {k: _interval(b2[:, i]) for i, k in
                                         enumerate(("a", "b", "gamma", "N_coef", "D_coef", "L_coef"))}
        out["approach2"]["bootstrap"] = b2.tolist()
    out["kaplan"] = fit_kaplan(t, delta)
    return out


def fit_table(rows: list[dict], *, params: str = "total", bootstrap: int = 200, seed: int = 0,
              delta: float = HUBER_DELTA, where: str = "table") -> dict:
    """The fits of a table of runs, in the chosen parameter convention and (when the table has
    both) in the other one too."""
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {bootstrap}")
    t = make_table(rows, params, where)
    result = _fit_one(t, bootstrap, seed, delta)
    result.update({"params": params, "runs": len(t), "huber_delta": delta,
                   "C_range": [float(t.C.min()), float(t.C.max())],
                   "N_range": [float(t.N.min()), float(t.N.max())],
                   "D_range": [float(t.D.min()), float(t.D.max())], "published": PUBLISHED})
    if t.N_other is not None:
        other = "non-embedding" if params == "total" else "total"
        alt = _fit_one(make_table(rows, other, where), min(bootstrap, 100), seed, delta)
        result["other_convention"] = {"params": other, **{k: alt[k] for k in
                                      (*CONSTANTS, "a", "b", "intervals", "rmse_log")}}
    return result


def predict(fit: dict, *, compute: float | None = None, N: float | None = None,
            D: float | None = None) -> dict:
    """The loss (with its bootstrap interval) at ``N`` and ``D``, or the compute-optimal shape
    N*(C), D*(C) and its loss at ``compute``."""
    samples = np.asarray(fit.get("bootstrap") or [], float).reshape(-1, 5)
    draws = [dict(zip(CONSTANTS, row)) for row in samples]
    out: dict = {}
    if compute is not None:
        n, d = compute_optimal(fit, compute)
        N, D = float(n), float(d)
        out.update({"compute": compute, "N_opt": N, "D_opt": D})
        if draws:
            opt = [compute_optimal(c, compute) for c in draws]
            out["intervals"] = {"N_opt": _interval([o[0] for o in opt]),
                                "D_opt": _interval([o[1] for o in opt])}
        n2, d2, l2 = isoflop_optimal(fit.get("approach2", {}), compute)
        out["approach2"] = {"N_opt": float(n2), "D_opt": float(d2), "loss_opt": float(l2)}
    if N is None or D is None:
        raise ConfigError("predict needs a compute budget, or both N and D")
    out.update({"N": N, "D": D, "loss": float(chinchilla_loss(fit, N, D))})
    if draws:
        out.setdefault("intervals", {})["loss"] = _interval([chinchilla_loss(c, N, D) for c in draws])
    if "kaplan" in fit:
        out["kaplan_loss"] = float(kaplan_loss(fit["kaplan"], N, D))
    return out

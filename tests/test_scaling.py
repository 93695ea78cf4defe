"""Scaling laws: the fitters recover known constants, the grid's compute matches 6ND plus the
attention term, a sweep resumes where it stopped, and the commands round-trip their files."""

from __future__ import annotations

import json
import math
import signal
import time

import numpy as np
import pytest

from _util import make_char_dataset, popen_cli, run_cli
from lmforge.scaling.family import Family
from lmforge.scaling.fit import (compute_optimal, fit_isoflop, fit_kaplan, fit_table, kaplan_loss,
                                 make_table, predict)
from lmforge.scaling.grid import ScalePlanOptions, make_grid, parse_duration
from lmforge.scaling.report import fit_sweep, predict_sweep, prediction_checks
from lmforge.scaling.sweep import read_results, run_sweep, train_config

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def synthetic_rows(true: dict, noise: float, seed: int = 0) -> list[dict]:
    """An isoFLOP grid (4 levels x 6 sizes) whose losses follow ``true`` times log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for level, C in enumerate([1e18, 3e18, 1e19, 3e19]):
        for N in np.geomspace(3e7, 1e9, 6):
            D = C / (6 * N)
            loss = true["E"] + true["A"] / N ** true["alpha"] + true["B"] / D ** true["beta"]
            rows.append({"N": N, "D": D, "C": C, "level": level, "loss": loss * math.exp(rng.normal(0, noise))})
    return rows


def test_approach3_recovers_exact_constants():
    fit = fit_table(synthetic_rows(CHINCHILLA, noise=0.0), bootstrap=0)
    for key, value in CHINCHILLA.items():
        assert fit[key] == pytest.approx(value, rel=2e-3), key
    assert fit["rmse_log"] < 1e-5
    assert fit["intervals"]["E"] == [None, None]  # no bootstrap: JSON null, not NaN


def test_approach3_with_noise_recovers_constants_within_intervals():
    """0.5% noise on 24 runs: exponents within 0.05, E within 5%, each true value inside its
    bootstrap 95% interval, and the compute-optimal exponent a = beta/(alpha+beta) within 0.05."""
    fit = fit_table(synthetic_rows(CHINCHILLA, noise=0.005), bootstrap=60)
    assert abs(fit["alpha"] - 0.34) < 0.05 and abs(fit["beta"] - 0.28) < 0.05
    assert fit["E"] == pytest.approx(1.69, rel=0.05)
    for key, value in CHINCHILLA.items():
        lo, hi = fit["intervals"][key]
        assert lo <= value <= hi, (key, lo, hi)
    assert abs(fit["a"] - 0.28 / 0.62) < 0.05
    # Approach 2 on the same runs: the optimum's exponent, from parabolas alone.
    assert fit["approach2"]["used"] == 4
    assert abs(fit["approach2"]["a"] - 0.28 / 0.62) < 0.08


def test_compute_optimal_allocation_minimises_the_law():
    c = CHINCHILLA
    N, D = compute_optimal(c, 1e21)
    assert 6 * N * D == pytest.approx(1e21)
    ns = np.geomspace(N / 3, N * 3, 401)
    losses = c["E"] + c["A"] / ns ** c["alpha"] + c["B"] / (1e21 / 6 / ns) ** c["beta"]
    assert ns[losses.argmin()] == pytest.approx(N, rel=0.01)
    # Hoffmann et al.'s constants give about 20 tokens per parameter near 1e23 FLOPs... and an
    # N* exponent of beta / (alpha + beta).
    N2, _ = compute_optimal(c, 1e22)
    assert math.log(N2 / N) / math.log(10) == pytest.approx(0.28 / 0.62, abs=1e-9)


def test_kaplan_form_recovered():
    true = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    rows = []
    for N in np.geomspace(1e6, 1e9, 6):
        for D in np.geomspace(1e8, 1e11, 5):
            rows.append({"N": N, "D": D, "loss": float(kaplan_loss(true, N, D))})
    k = fit_kaplan(make_table(rows))
    assert k["alpha_N"] == pytest.approx(0.076, rel=0.02)
    assert k["alpha_D"] == pytest.approx(0.095, rel=0.02)
    assert float(kaplan_loss(k, 3e7, 1e10)) == pytest.approx(float(kaplan_loss(true, 3e7, 1e10)), rel=1e-3)


def test_table_with_compute_column_and_slices():
    """A user table with C instead of D: D = C / 6N, slices found from C alone."""
    rows = [{"N": r["N"], "C": r["C"], "loss": r["loss"]} for r in synthetic_rows(CHINCHILLA, 0.0)]
    t = make_table(rows)
    assert len(set(t.level.tolist())) == 4
    assert np.allclose(t.D, t.C / (6 * t.N))
    assert fit_isoflop(t)["used"] == 4


def test_fit_cli_json_on_a_csv(tmp_path):
    rows = synthetic_rows(CHINCHILLA, 0.002, seed=1)
    csv_path = tmp_path / "runs.csv"
    csv_path.write_text("N,C,loss\n" + "".join(f"{r['N']},{r['C']},{r['loss']}\n" for r in rows))
    proc = run_cli("scale", "fit", csv_path, "--json", "--bootstrap", "20")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"E", "A", "B", "alpha", "beta"} <= set(out)
    assert abs(out["alpha"] - 0.34) < 0.05 and abs(out["beta"] - 0.28) < 0.05
    lo, hi = out["intervals"]["alpha"]
    assert lo < out["alpha"] < hi
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())  # a table: nothing written

    bad = tmp_path / "bad.csv"
    bad.write_text("N,D,loss,level\n" + "1e6,1e8,3.0,x\n" * 6)
    proc = run_cli("scale", "fit", bad)
    assert proc.returncode == 2 and "'level'" in proc.stderr and "Traceback" not in proc.stderr

    few = tmp_path / "few.csv"
    few.write_text("N,D,loss\n1e6,1e8,3.0\n2e6,1e8,2.9\n")
    proc = run_cli("scale", "fit", few)
    assert proc.returncode == 2 and "at least 5" in proc.stderr and "Traceback" not in proc.stderr


# ---- the grid and the sweep on a tiny dataset -----------------------------------------------
@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp("scale") / "data", chars=120_000)


def tiny_options(data, **changes) -> ScalePlanOptions:
    base = dict(data=str(data), compute="2e9,4e9", sizes=3, spread=2.0, widths="16,24,32,48",
                head_dim=16, batch_size=8, block_size=32, min_steps=20, warmup_steps=5,
                eval_batches=4, threads=1)
    return ScalePlanOptions(**{**base, **changes})


def test_grid_compute_is_6ND_plus_attention(char_data):
    plan = make_grid(tiny_options(char_data), measure=False)
    assert len(plan["levels"]) == 2 and len(plan["runs"]) == 6
    fam = Family.from_dict(plan["family"])
    for run in plan["runs"]:
        cfg = fam.config(run["n_layer"], run["n_embd"])
        D, N = run["tokens"], run["params"]
        position_table = cfg.context_length * cfg.n_embd
        attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * fam.block_size
        # The 6N of the FLOPs counts the matmul weights: N less the position table.
        assert run["flops"] == pytest.approx(6 * (N - position_table) * D + attention * D, rel=1e-9)
        # Each run's tokens spend its level's compute (to within one step of tokens).
        assert abs(run["flops"] - run["compute"]) <= run["flops_per_token"] * 8 * 32
        # The schedule ends at the run's own token count.
        tc = train_config(plan, run, char_data / "x")
        assert tc.max_steps * tc.batch_size * tc.block_size == D
        from lmforge.training.optim import lr_at
        assert lr_at(tc.max_steps - 1, tc) == pytest.approx(tc.min_lr)
    # Sizes centre on the Chinchilla guess: every level has 3 distinct sizes.
    for level in (0, 1):
        assert len({r["n_embd"] for r in plan["runs"] if r["level"] == level}) == 3


def test_plan_for_a_time_budget_measures_and_fits_it(char_data):
    plan = make_grid(tiny_options(char_data, compute=None, time="20s", levels=2), measure=True)
    assert plan["tokens_per_second"] and all(v > 0 for v in plan["tokens_per_second"].values())
    assert 10 <= plan["est_seconds"] <= 22
    assert parse_duration("1.5h") == 5400 and parse_duration("90") == 90


def test_sweep_resumes_and_never_redoes_finished_runs(char_data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("scale", "plan", "--data", char_data, "--compute", "2e9,4e9", "--sizes", "3",
                   "--spread", "2", "--widths", "16,24,32,48", "--head-dim", "16", "--batch-size", "8",
                   "--block-size", "32", "--min-steps", "20", "--warmup-steps", "5",
                   "--eval-batches", "4", "--threads", "1", "--out", sweep)
    assert proc.returncode == 0, proc.stderr
    assert "6 runs" in proc.stdout and (sweep / "plan.json").is_file()

    first = run_sweep(sweep, max_runs=2, progress=False)
    assert len(first["trained"]) == 2 and first["remaining"] == 4
    rows = read_results(sweep)
    assert [r["name"] for r in rows] == [r["name"] for r in first["trained"]]
    for r in rows:
        assert r["loss"] < math.log(60) and r["C"] == pytest.approx(r["D"] * json.loads(
            (sweep / "plan.json").read_text())["runs"][0]["flops_per_token"] * 0 + r["C"])
    mtimes = {r["name"]: (sweep / "runs" / r["name"] / "model").stat().st_mtime for r in rows}

    # Kill the sweep midway through its longest run (SIGTERM: the engine checkpoints and stops),
    # then continue: the run picks up from its checkpoint.
    plan = json.loads((sweep / "plan.json").read_text())
    longest = max(plan["runs"][2:], key=lambda r: r["steps"])["name"]
    proc = popen_cli("scale", "run", sweep)
    ckpts = sweep / "runs" / longest / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and any(ckpts.glob("step-*"))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in out
    done_before = len(read_results(sweep))
    assert longest not in {r["name"] for r in read_results(sweep)}

    proc = run_cli("scale", "run", sweep)
    assert proc.returncode == 0, proc.stderr
    assert f"trained {6 - done_before}, already done {done_before}, remaining 0" in proc.stdout
    starts = [line.split("steps ")[1].split()[0] for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("training ") and "steps " in line]
    assert starts and not starts[0].startswith("0->"), starts  # the cut run resumed
    rows = read_results(sweep)
    assert len(rows) == 6 and len({r["name"] for r in rows}) == 6
    for name, mtime in mtimes.items():  # finished runs were not trained again
        assert (sweep / "runs" / name / "model").stat().st_mtime == mtime
    csv_lines = (sweep / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,level,compute,n_layer") and len(csv_lines) == 7

    # Fit the tiny sweep and predict a run at 4x its largest compute (as a one-run plan).
    fit = fit_sweep(sweep, bootstrap=10)
    for png in ("isoflop.png", "contours.png", "residuals.png"):
        assert (sweep / png).stat().st_size > 10_000
    assert json.loads((sweep / "fit.json").read_text())["runs"] == 6
    pred = predict_sweep(sweep, compute="4x", out=tmp_path / "heldout")
    assert pred["compute"] == pytest.approx(4 * fit["C_range"][1])
    held = json.loads((tmp_path / "heldout" / "plan.json").read_text())
    assert len(held["runs"]) == 1 and held["runs"][0]["flops"] == pytest.approx(pred["compute"], rel=0.05)
    assert prediction_checks(tmp_path / "heldout") == []  # not trained yet
    (tmp_path / "heldout" / "results.jsonl").write_text(json.dumps(
        {"name": held["runs"][0]["name"], "loss": pred["run"]["predicted_loss"] * 1.01}) + "\n")
    check = prediction_checks(tmp_path / "heldout")[0]
    assert check["error_pct"] == pytest.approx(1.0, abs=1e-6)


def test_predict_without_a_sweep(tmp_path):
    fit = fit_table(synthetic_rows(CHINCHILLA, 0.0), bootstrap=0)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    proc = run_cli("scale", "predict", path, "--n-params", "1e8", "--tokens", "2e9", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = 1.69 + 406.4 / 1e8 ** 0.34 + 410.7 / 2e9 ** 0.28
    assert out["loss"] == pytest.approx(expected, rel=2e-3)
    p = predict(fit, compute=1e21)
    assert p["N_opt"] * p["D_opt"] * 6 == pytest.approx(1e21)

"""``lmforge scale plan|run|fit|predict|search``: how big a model, on how many tokens, for a
budget: plan an isoFLOP sweep, run it, fit scaling laws, predict a bigger run, search shapes."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import add_dataclass_flags, flags_to_dict, from_dict
from .flags import add_out_flag, examples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scale", help="plan, run and fit scaling-law sweeps; predict bigger runs",
        description="Scaling laws for a model family on your data: `plan` lays out an isoFLOP "
                    "grid for a FLOP or wall-clock budget, `run` trains it (resumable), `fit` "
                    "fits Chinchilla approaches 2 and 3 and Kaplan's forms with bootstrap "
                    "intervals and plots, `predict` gives the loss and compute-optimal shape of "
                    "a bigger budget, `search` finds an architecture under a constraint.",
        epilog=examples("lmforge scale plan --data data/corpus --time 60m --out sweep/",
                        "lmforge scale run sweep/",
                        "lmforge scale fit sweep/",
                        "lmforge scale predict sweep/ --compute 4x --out heldout/",
                        "lmforge scale fit runs.csv --json"))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    _register_plan(actions)
    _register_run(actions)
    _register_fit(actions)
    _register_predict(actions)
    try:
        from .scale_search_cmd import register as register_search
    except ImportError:
        pass
    else:
        register_search(actions)


def _register_plan(actions) -> None:
    from ..scaling.grid import ScalePlanOptions
    p = actions.add_parser(
        "plan", help="lay out an isoFLOP grid for a FLOP or wall-clock budget",
        description="Compute levels, 4-6 model sizes per level around the Chinchilla guess, each "
                    "run's tokens D = C / FLOPs-per-token (6N + attention), a learning rate per "
                    "width and a cosine schedule ending at each run's own token count; with the "
                    "time each run takes here (measured tokens/s). Writes OUT/plan.json.",
        epilog=examples("lmforge scale plan --data data/corpus --time 60m --out sweep/",
                        "lmforge scale plan --data data/corpus --compute 1e13,3e13,1e14 --out sweep/",
                        "lmforge scale plan --data data/corpus --budget 5e15 --vary width --json"))
    add_dataclass_flags(p, ScalePlanOptions, choices={"vary": ("both", "width", "depth"),
                                                      "precision": ("auto", "fp32", "bf16")})
    add_out_flag(p, metavar="DIR", help="sweep folder to write plan.json into (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan.json "
                   "(finished runs whose spec is unchanged are kept)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from ..scaling.grid import ScalePlanOptions, format_plan
    from ..scaling.report import plan_sweep
    opts = from_dict(ScalePlanOptions, flags_to_dict(args, ScalePlanOptions), where="command line")
    plan = plan_sweep(opts, args.out, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(plan, indent=1))
    else:
        print(format_plan(plan))
        if args.out:
            print(f"wrote {args.out}/plan.json: run it with `lmforge scale run {args.out}`")
    return 0


def _register_run(actions) -> None:
    p = actions.add_parser(
        "run", help="train a planned sweep (resumable)",
        description="Train the runs of FOLDER/plan.json through the training engine, one after "
                    "another. Finished runs are never redone; a run killed midway continues from "
                    "its checkpoint; each finished run appends a row (N, non-embedding N, D, C, "
                    "final validation loss, wall time) to FOLDER/results.jsonl and results.csv.",
        epilog=examples("lmforge scale run sweep/", "lmforge scale run sweep/ --max-runs 4"))
    p.add_argument("folder", metavar="FOLDER", help="sweep folder made by `lmforge scale plan --out`")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="train at most N of the remaining runs, then stop")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import logging
    from ..scaling.report import prediction_checks
    from ..scaling.sweep import run_sweep
    logging.getLogger("lmforge.scaling").setLevel(logging.INFO)
    result = run_sweep(args.folder, max_runs=args.max_runs, device=args.device,
                       progress=sys.stderr.isatty())
    print(f"scale run {args.folder}: trained {len(result['trained'])}, already done "
          f"{result['skipped']}, remaining {result['remaining']}")
    for row in result["trained"]:
        print(f"  {row['name']}: N {row['N']:,}, D {row['D']:,}, loss {row['loss']:.4f}, "
              f"{row['seconds']:.0f} s")
    for check in prediction_checks(args.folder):
        iv = check["interval"]
        print(f"  {check['name']}: predicted {check['predicted']:.4f}"
              + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv and iv[0] is not None else "")
              + f" at {check['predicted_at']}, observed {check['observed']:.4f} "
              f"(error {check['error_pct']:+.2f}%)")
    print(f"results: {result['results']}")
    if result["interrupted"]:
        print(f"interrupted: continue with `lmforge scale run {args.folder}`")
        return 130
    return 0


def _register_fit(actions) -> None:
    p = actions.add_parser(
        "fit", help="fit Chinchilla and Kaplan scaling laws to a sweep or a table",
        description="Approach 3: L(N, D) = E + A/N^alpha + B/D^beta by Huber loss (delta 1e-3) on "
                    "log loss with L-BFGS from a grid of starts; approach 2: parabolas over each "
                    "isoFLOP slice, then power laws of the optima; Kaplan's L(N, D), L(N), L(D); "
                    "bootstrap 95% intervals; both parameter conventions. SOURCE is a sweep "
                    "folder or a CSV/JSONL table with columns N, D (or C, FLOPs: D = C/6N) and "
                    "loss. Writes fit.json and isoflop.png, contours.png, residuals.png to --out "
                    "(default: the sweep folder).",
        epilog=examples("lmforge scale fit sweep/", "lmforge scale fit runs.csv --json",
                        "lmforge scale fit sweep/ --params non-embedding --out fit-ne/"))
    p.add_argument("source", metavar="SOURCE", help="sweep folder, or a .csv/.jsonl table of runs")
    _add_params_flag(p)
    p.add_argument("--bootstrap", type=int, default=200, metavar="B",
                   help="bootstrap refits for the 95%% intervals (0 = none)".replace("%%", " percent"))
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    add_out_flag(p, metavar="DIR", help="folder for fit.json and the plots (default: the sweep "
                                        "folder; a table: nothing written)")
    p.add_argument("--json", action="store_true",
                   help="print E, A, B, alpha, beta and their intervals (and the rest) as one JSON object")
    p.set_defaults(func=_fit)


def _add_params_flag(p) -> None:
    p.add_argument("--params", choices=("total", "non-embedding"), default="total",
                   help="parameter convention of N: total (Chinchilla) or without token and "
                        "position embeddings (Kaplan)")


def _fit(args) -> int:
    from ..scaling.report import fit_sweep, format_fit
    fit = fit_sweep(args.source, out=args.out, params=args.params, bootstrap=args.bootstrap,
                    seed=args.seed)
    if args.json:
        slim = {k: v for k, v in fit.items() if k not in ("bootstrap", "published")}
        slim["approach2"] = {k: v for k, v in fit["approach2"].items() if k != "bootstrap"}
        print(json.dumps(slim, indent=1))
    else:
        print(format_fit(fit))
    return 0


def _register_predict(actions) -> None:
    p = actions.add_parser(
        "predict", help="loss and compute-optimal shape for a bigger budget",
        description="From a sweep folder (fitted now if needed), a fit.json or a table: the "
                    "compute-optimal N*, D* and loss at --compute with 95% intervals, or the "
                    "loss at --n-params and --tokens. With a sweep folder, also the family member "
                    "to train at that compute; --out writes it as a one-run plan with the "
                    "prediction, so `lmforge scale run OUT` checks it.".replace("%", " percent"),
        epilog=examples("lmforge scale predict sweep/ --compute 4x",
                        "lmforge scale predict sweep/ --compute 1e15 --out heldout/",
                        "lmforge scale predict fit.json --n-params 2e6 --tokens 4e7 --json"))
    p.add_argument("source", metavar="SOURCE", help="sweep folder, fit.json, or a .csv/.jsonl table")
    p.add_argument("--compute", metavar="C", help="FLOPs (1e15) or a multiple of the largest swept "
                                                  "compute (4x)")
    p.add_argument("--n-params", type=float, default=None, metavar="N", help="parameters (with --tokens)")
    p.add_argument("--tokens", type=float, default=None, metavar="D", help="training tokens (with --n-params)")
    _add_params_flag(p)
    add_out_flag(p, metavar="DIR", help="write the predicted run as a one-run plan here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan in --out")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=_predict)


def _predict(args) -> int:
    from ..scaling.report import format_prediction, predict_sweep
    result = predict_sweep(args.source, compute=args.compute, N=args.n_params, D=args.tokens,
                           params=args.params, out=args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=1) if args.json else format_prediction(result))
    return 0

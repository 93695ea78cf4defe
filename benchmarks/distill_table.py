"""Held-out perplexity table of distillation runs (their distill.json) and, with
--teacher-ppl, of the teacher on the same validation windows.

    python benchmarks/distill_table.py OUT RUN [RUN ...] [--teacher-ppl]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def teacher_ppl(run: Path) -> float:
    """The teacher's perplexity on the validation windows the run was evaluated on."""
    import torch

    from lmforge.compression.distill import DistillConfig
    from lmforge.config import from_dict, load_file
    from lmforge.data.dataset import TokenShards
    from lmforge.hub import load_model
    from lmforge.objectives import get_objective
    from lmforge.runtime import autocast, resolve_precision
    cfg = from_dict(DistillConfig, {k: v for k, v in load_file(run / "config.yaml").items()
                                    if k != "resolved"}, where=str(run))
    teacher = load_model(cfg.teacher)[0].eval()
    objective = get_objective("causal_lm")
    batches = objective.eval_batches(TokenShards(cfg.data, "val"), cfg.block_size, cfg.batch_size,
                                     cfg.eval_batches)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.precision, device)
    return objective.evaluate(teacher, batches, device, lambda: autocast(device, precision))["val_ppl"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="benchmark folder (holds the runs and wall_seconds.txt)")
    p.add_argument("runs", nargs="+", help="run folder names under OUT")
    p.add_argument("--teacher-ppl", action="store_true", help="also score the teacher")
    args = p.parse_args()
    out = Path(args.out)
    walls = {}
    if (out / "wall_seconds.txt").is_file():
        for line in (out / "wall_seconds.txt").read_text().splitlines():
            name, seconds = line.split()
            walls[name] = int(seconds)
    table = {}
    for name in args.runs:
        report = json.loads((out / name / "distill.json").read_text())
        tokens = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
        table[name] = {"student": report["student"], "from_scratch": report["from_scratch"],
                       "layers": report["student_layers"], "alpha": report["options"]["alpha"],
                       "steps": report["step"],
                       "tokens": max((r.get("tokens", 0) for r in tokens), default=0),
                       "val_ppl": report.get("val_ppl"), "val_loss": report.get("val_loss"),
                       "val_teacher_kl": report.get("val_teacher_kl"), "wall_s": walls.get(name)}
    if args.teacher_ppl:
        table["teacher"] = {"val_ppl": teacher_ppl(out / args.runs[0])}
    print(f"{'run':<16}{'layers':>7}{'alpha':>7}{'tokens':>9}{'val ppl':>12}{'wall s':>8}")
    for name, r in table.items():
        print(f"{name:<16}{r.get('layers', 30):>7}{r.get('alpha', '-')!s:>7}{r.get('tokens', '-')!s:>9}"
              f"{r['val_ppl']:>12.1f}{r.get('wall_s') or '-'!s:>8}")
    (out / "smol.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()

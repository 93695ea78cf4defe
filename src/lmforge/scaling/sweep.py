"""`lmforge scale run`: train a plan's runs through the one training engine, one after another,
resumable: a finished run (its row in results.jsonl, same spec) is never redone, a run killed
midway continues from its last checkpoint, and every finished run appends one row (N total and
non-embedding, D, C, final validation loss, wall time) to results.jsonl and results.csv."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import atomic_write_text
from .family import Family
from .grid import load_plan

log = logging.getLogger(__name__)

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
COLUMNS = ("name", "level", "compute", "n_layer", "n_embd", "n_head", "N", "N_non_embedding", "D",
           "C", "loss", "train_loss", "lr", "steps", "seconds", "tokens_per_sec", "device", "threads")
# What makes a finished run the same run (a re-plan that changes these trains it again).
SPEC_KEYS = ("n_layer", "n_embd", "tokens", "lr", "warmup_steps")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a results file appended one JSON line per finished run (sweep or search)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            # A line cut by a crash mid-write: the run is simply trained again.
            log.warning(f"warning: {path}:{number} is not a JSON row; ignored")
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    """Append one row and fsync it: a finished run is recorded before the next one starts."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_results(folder: str | Path) -> list[dict]:
    return read_jsonl(Path(folder) / RESULTS_JSONL)


def _append_result(folder: Path, row: dict) -> None:
    append_jsonl(folder / RESULTS_JSONL, row)
    write_csv(read_results(folder), folder / RESULTS_CSV)


def _same_spec(row: dict, spec: dict) -> bool:
    return all(row.get("spec", {}).get(k) == spec.get(k) for k in SPEC_KEYS)


def train_config(plan: dict, spec: dict, run_dir: Path, *, device: str = "auto",
                 progress: bool = True):
    """The TrainConfig of one planned run: its member's architecture, its own schedule
    (cosine to a tenth of the peak, ending at the run's last step), evaluation only at the end."""
    from ..training import TrainConfig
    opts = plan["options"]
    family = Family.from_dict(plan["family"])
    # A spec may carry its whole architecture (an architecture search varies heads and MLP too).
    model_args = dict(spec.get("model_args") or family.config(spec["n_layer"], spec["n_embd"]).to_dict())
    if opts.get("mup"):
        model_args["mup_base_width"] = opts["lr_width"]
    steps = spec["steps"]
    return TrainConfig(
        data=opts["data"], out_dir=str(run_dir), model=family.preset, model_args=model_args,
        block_size=family.block_size, batch_size=opts["batch_size"], max_steps=steps,
        lr=spec["lr"], min_lr=spec["lr"] / 10, schedule="cosine", warmup_steps=spec["warmup_steps"],
        weight_decay=opts["weight_decay"], precision=opts["precision"], threads=opts["threads"],
        device=device, seed=opts["seed"], eval_interval=0, eval_batches=opts["eval_batches"],
        log_interval=max(10, steps // 20), save_interval=max(50, steps // 4), keep_last=1,
        tensorboard=False, progress=progress)


def _on_cuda(device: str) -> bool:
    import torch
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _resumable(run_dir: Path, cfg) -> bool:
    """Whether ``run_dir`` holds a started run of exactly this config."""
    from ..config import load_file
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return False
    saved = load_file(saved_path)
    return all(saved.get(k) == getattr(cfg, k) for k in ("max_steps", "lr", "batch_size", "block_size",
                                                           "warmup_steps", "seed")) and \
        all(saved.get("model_args", {}).get(k) == v for k, v in cfg.model_args.items())


def train_run(plan: dict, spec: dict, run_dir: Path, *, device: str = "auto",
              progress: bool = True) -> dict | None:
    """Train one planned run (continuing it if it was cut short); its result row, or None when
    it was interrupted (Ctrl-C, SIGTERM: the checkpoint is kept for the next `scale run`)."""
    from ..training import load_run_config, pretrain
    cfg = train_config(plan, spec, run_dir, device=device, progress=progress)
    timer = run_dir / "wall_seconds.json"
    spent = 0.0
    if _resumable(run_dir, cfg):
        spent = json.loads(timer.read_text())["seconds"] if timer.is_file() else 0.0
        cfg = load_run_config(run_dir, {"progress": progress, "device": device})
        start = time.perf_counter()
        result = pretrain(cfg, resume=True)
    else:
        start = time.perf_counter()
        result = pretrain(cfg, overwrite=True)
    spent += time.perf_counter() - start
    atomic_write_text(timer, json.dumps({"seconds": spent}))
    if result.get("interrupted"):
        return None
    if "val_loss" not in result:
        raise DataError(f"dataset {cfg.data} has no val split: a sweep needs one for its losses")
    import torch
    tokens = spec["tokens"]
    row = {"name": spec["name"], "level": spec["level"], "compute": spec["compute"],
           "n_layer": spec["n_layer"], "n_embd": spec["n_embd"], "n_head": spec["n_head"],
           "N": spec["params"], "N_non_embedding": spec["non_embedding_params"], "D": tokens,
           "C": spec["flops_per_token"] * tokens, "loss": result["val_loss"],
           "train_loss": result.get("train_loss"), "lr": spec["lr"], "steps": spec["steps"],
           "seconds": round(spent, 2), "tokens_per_sec": round(tokens / spent, 1),
           "device": torch.cuda.get_device_name() if _on_cuda(cfg.device) else cpu_name(),
           "threads": torch.get_num_threads(), "spec": {k: spec[k] for k in SPEC_KEYS}}
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the model folder stays
    return row


def run_sweep(folder: str | Path, *, max_runs: int | None = None, device: str = "auto",
              progress: bool = True, on_row=None) -> dict:
    """Train the runs of ``folder``'s plan that have no result yet. Returns counts and rows."""
    folder = Path(folder)
    plan = load_plan(folder)
    done = {row["name"]: row for row in read_results(folder)}
    todo = [s for s in plan["runs"] if not (s["name"] in done and _same_spec(done[s["name"]], s))]
    if max_runs is not None:
        if max_runs <= 0:
            raise ConfigError(f"--max-runs must be a positive integer, got {max_runs}")
        todo = todo[:max_runs]
    trained, interrupted = [], False
    for i, spec in enumerate(todo, 1):
        log.info(f"[{i}/{len(todo)}] {spec['name']}: {spec['params']:,} parameters, "
                 f"{spec['tokens']:,} tokens ({spec['steps']:,} steps)")
        row = train_run(plan, spec, folder / "runs" / spec["name"], device=device, progress=progress)
        if row is None:
            interrupted = True
            break
        _append_result(folder, row)
        trained.append(row)
        if on_row is not None:
            on_row(row)
    latest = {r["name"]: r for r in read_results(folder)}
    finished = [s for s in plan["runs"] if s["name"] in latest and _same_spec(latest[s["name"]], s)]
    return {"trained": trained, "skipped": len(finished) - len(trained),
            "remaining": len(plan["runs"]) - len(finished), "interrupted": interrupted,
            "rows": [latest[s["name"]] for s in finished],
            "results": str(folder / RESULTS_CSV)}

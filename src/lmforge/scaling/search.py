"""`lmforge scale search`: architecture search under a budget by successive halving.

The search space is every combination of depth, width, attention heads, MLP ratio and peak
learning rate; the configs that satisfy the constraint (parameters, training FLOPs per token
and/or measured latency) are sampled (``trials``, seeded) and raced:

- rung r trains every surviving config from scratch on ``min_tokens * eta^r`` tokens, with a
  schedule that ends at that token count (each run is one run of the scaling sweep, through
  the one training engine);
- the best ``1/eta`` of them by final validation loss go on to rung r + 1.

Like a sweep, a search is resumable: every finished trial is a row of OUT/search.jsonl (its
full spec included), so running the same search again trains only what is missing, and a
trial killed midway continues from its checkpoint. The end: OUT/search.csv (every trial),
OUT/best.yaml (the winner as a `lmforge pretrain --config` file) and a leaderboard.

Latency is measured, not modelled: the median time of a batch-1 forward pass over one
``block_size`` sequence (no gradients, the search's precision and threads) on this machine,
cached per config in OUT/latency.json (the key names the CPU/GPU, threads and precision).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write_text
from .family import Family
from .grid import dataset_vocab, format_duration, parse_numbers
from .sweep import append_jsonl, cpu_name, read_jsonl, train_run, write_csv

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
SEARCH_JSONL = "search.jsonl"
SEARCH_CSV = "search.csv"
BEST_YAML = "best.yaml"
LATENCY_FILE = "latency.json"
SEARCH_FORMAT = "lmforge-scale-search/1"
PRECISIONS = ("auto", "fp32", "bf16")
CSV_COLUMNS = ("trial", "rung", "promoted", "n_layer", "n_embd", "n_head", "head_dim",
               "intermediate_size", "mlp_ratio", "lr", "params", "non_embedding",
               "flops_per_token", "latency_ms", "tokens", "steps", "loss", "train_loss", "seconds",
               "device", "threads")


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class SearchOptions:
    """What `lmforge scale search` searches, under which constraint and with which budget
    (every field is a flag)."""

    data: str = _help("prepared dataset folder (from `lmforge prepare`) with a val split", "")
    model: str = _help("decoder preset the configs start from (norm, MLP kind, positions...; "
                       "see `lmforge models`)", "gpt-mini")
    depths: str = _help("comma-separated numbers of layers to search", "2,3,4,6")
    widths: str = _help("comma-separated hidden sizes to search", "64,96,128,192")
    head_dims: str | None = _help("comma-separated head sizes to search (heads = width / "
                                  "head_dim; widths they do not divide are skipped; default: 32)",
                                  None)
    heads: str | None = _help("comma-separated numbers of heads to search instead of --head-dims "
                              "(head_dim = width / heads)", None)
    mlp_ratios: str = _help("comma-separated MLP hidden size / width ratios to search", "2,4")
    lrs: str = _help("comma-separated peak learning rates to search", "1e-3,2e-3,4e-3")
    max_params: float | None = _help("keep configs with at most this many parameters (total, a "
                                     "tied output head once)", None)
    max_flops_per_token: float | None = _help("keep configs with at most this many training FLOPs "
                                              "per token (6N + attention, at --block-size)", None)
    max_latency_ms: float | None = _help("keep configs whose batch-1 forward of one --block-size "
                                         "sequence takes at most this many ms here (measured, "
                                         "cached)", None)
    trials: int = _help("configs sampled (seeded) from those that satisfy the constraint", 27)
    eta: int = _help("halving rate: each rung keeps the best 1/eta and trains them on eta x "
                     "the tokens", 3)
    min_tokens: int = _help("training tokens of each trial at rung 0", 100_000)
    rungs: int | None = _help("rungs of the halving (default 3, or as many as --max-tokens "
                              "allows)", None)
    max_tokens: int | None = _help("training tokens of the last rung at most (sets --rungs)", None)
    batch_size: int = _help("sequences per optimizer step", 16)
    block_size: int = _help("tokens per sequence", 128)
    warmup_steps: int = _help("linear warmup steps (at most a tenth of a trial)", 50)
    weight_decay: float = _help("AdamW decoupled weight decay", 0.1)
    precision: str = field(default="auto", metadata={
        "help": "precision of training and of the latency measurement", "choices": PRECISIONS})
    threads: int = _help("CPU threads for training and latency (0 = torch's default)", 0)
    eval_batches: int = _help("validation batches for each trial's final loss (a fixed set)", 20)
    seed: int = _help("random seed of the sampling and of every trial", 1337)

    def validate(self) -> "SearchOptions":
        if not self.data:
            raise ConfigError("--data is required: a dataset folder made by `lmforge prepare`")
        for name in ("trials", "min_tokens", "batch_size", "block_size", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {getattr(self, name)}")
        if self.eta < 2:
            raise ConfigError(f"--eta must be at least 2 (keep 1/eta of the configs per rung), "
                              f"got {self.eta}")
        if self.rungs is not None and self.max_tokens is not None:
            raise ConfigError("give --rungs or --max-tokens, not both")
        if self.rungs is not None and self.rungs <= 0:
            raise ConfigError(f"--rungs must be a positive integer, got {self.rungs}")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ConfigError(f"--max-tokens ({self.max_tokens}) is below --min-tokens "
                              f"({self.min_tokens})")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must not be negative, got {self.warmup_steps}")
        if self.threads < 0:
            raise ConfigError(f"--threads must not be negative, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_params", "max_flops_per_token", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {value}")
        if self.heads is not None and self.head_dims is not None:
            raise ConfigError("give --heads or --head-dims, not both")
        self.space()  # parses every list
        return self

    def space(self) -> dict[str, list]:
        """The parsed search space (sorted, without repeats)."""
        texts = {"depths": self.depths, "widths": self.widths, "mlp_ratios": self.mlp_ratios,
                 "lrs": self.lrs}
        if self.heads is not None:
            texts["heads"] = self.heads
        else:
            texts["head_dims"] = self.head_dims or "32"
        space = {}
        for name, text in texts.items():
            values = parse_numbers(text, f"--{_flag(name)}")
            if name not in ("mlp_ratios", "lrs"):
                if any(not v.is_integer() for v in values):
                    raise ConfigError(f"--{_flag(name)} must be whole numbers, got {text!r}")
                values = [int(v) for v in values]
            space[name] = sorted(set(values))
        return space

    @property
    def n_rungs(self) -> int:
        if self.max_tokens is not None:
            # The most rungs whose last one stays within max_tokens (float slack for 1e6-style input).
            return int(math.floor(math.log(self.max_tokens / self.min_tokens, self.eta) + 1e-9)) + 1
        return self.rungs if self.rungs is not None else 3


def _flag(name: str) -> str:
    return name.replace("_", "-")


# ---- the space and the constraint ---------------------------------------------------------
def architectures(opts: SearchOptions, family: Family) -> list[dict]:
    """Every (depth, width, heads, MLP ratio) of the space as model_args for ``family``'s
    preset: heads that do not divide a width are skipped; GQA presets keep their group size."""
    space = opts.space()
    base = family.base_config()
    group = base.n_head // base.n_kv_head if base.n_kv_head and base.n_head % base.n_kv_head == 0 else 1
    archs = []
    for n_layer in space["depths"]:
        for n_embd in space["widths"]:
            if "heads" in space:
                head_choices = [(h, n_embd // h) for h in space["heads"] if n_embd % h == 0]
            else:
                head_choices = [(n_embd // hd, hd) for hd in space["head_dims"]
                                if hd <= n_embd and n_embd % hd == 0]
            for n_head, head_dim in head_choices:
                for ratio in space["mlp_ratios"]:
                    cfg = family.base_config(
                        n_layer=n_layer, n_embd=n_embd, n_head=n_head, head_dim=head_dim,
                        n_kv_head=n_head // group if n_head % group == 0 else n_head,
                        intermediate_size=max(1, int(round(ratio * n_embd))))
                    archs.append({"name": f"L{n_layer}-d{n_embd}-h{n_head}-m{ratio:g}",
                                  "mlp_ratio": ratio, "model_args": cfg.to_dict()})
    if not archs:
        raise ConfigError("the search space is empty: no --heads/--head-dims divides any of "
                          f"--widths {opts.widths}")
    return archs


def measure_size(model_args: dict, block_size: int) -> dict:
    """Parameters (total, a tied head once; non-embedding) and training FLOPs per token of a
    config, from the model itself built on the meta device (no memory, no time)."""
    import torch

    from ..models.config import ModelConfig
    from ..models.io import build_model
    with torch.device("meta"):
        model = build_model(ModelConfig(**model_args))
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embeddings = sum({id(m.weight): m.weight.numel() for m in model.modules()
                      if isinstance(m, torch.nn.Embedding)}.values())
    return {"params": total, "non_embedding": total - embeddings,
            "flops_per_token": float(model.flops_per_token(block_size))}


def measure_latency_ms(model_args: dict, block_size: int, *, precision: str = "auto",
                       threads: int = 0, repeats: int = 7) -> float:
    """Median wall time (ms) of a batch-1 forward pass over one ``block_size`` sequence on this
    machine: eval mode, no gradients, after two warm-up passes."""
    import torch

    from ..models.config import ModelConfig
    from ..models.io import build_model
    from ..runtime import autocast, resolve_device, resolve_precision
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device("auto")
    precision = resolve_precision(precision, device)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**model_args)).to(device).eval()
    x = torch.randint(0, model.config.vocab_size, (1, block_size), device=device)
    times = []
    with torch.inference_mode(), autocast(device, precision):
        for i in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _latency_key(arch: dict, opts: SearchOptions) -> str:
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    threads = opts.threads or torch.get_num_threads()
    # The whole architecture (preset fields too) in a short hash, the name for a reader.
    digest = hashlib.sha256(json.dumps(arch["model_args"], sort_keys=True).encode()).hexdigest()[:10]
    return f"{arch['name']} {digest}|T{opts.block_size}|{opts.precision}|{threads} threads|{device}"


def constrained(opts: SearchOptions, archs: list[dict], out: Path, *,
                measure=measure_latency_ms) -> list[dict]:
    """The architectures within every constraint, each with its params, FLOPs per token and
    (with --max-latency-ms) latency. Latency is measured only for configs within the other
    limits, and cached in ``out/latency.json``."""
    cache_path = out / LATENCY_FILE
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except ValueError:  # a damaged cache is measured again
        log.warning(f"warning: {cache_path} is not JSON; latencies are measured again")
        cache = {}
    kept, measured = [], 0
    sized = [{**a, **measure_size(a["model_args"], opts.block_size), "latency_ms": None} for a in archs]
    for arch in sized:
        if opts.max_params is not None and arch["params"] > opts.max_params:
            continue
        if opts.max_flops_per_token is not None and arch["flops_per_token"] > opts.max_flops_per_token:
            continue
        if opts.max_latency_ms is not None:
            key = _latency_key(arch, opts)
            if key not in cache:
                cache[key] = round(measure(arch["model_args"], opts.block_size,
                                           precision=opts.precision, threads=opts.threads), 4)
                measured += 1
            arch["latency_ms"] = cache[key]
            if arch["latency_ms"] > opts.max_latency_ms:
                continue
        kept.append(arch)
    if measured:  # measurements are kept even when nothing fits (a new limit reuses them)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))
    if not kept:
        limits = [f"{flag} {getattr(opts, name):g}" for name, flag in
                  (("max_params", "--max-params"), ("max_flops_per_token", "--max-flops-per-token"),
                   ("max_latency_ms", "--max-latency-ms")) if getattr(opts, name) is not None]
        smallest = min(a["params"] for a in sized)
        raise ConfigError(f"no config of the space satisfies {' and '.join(limits)} (the "
                          f"smallest has {smallest:,} parameters); relax the limit or add smaller "
                          "--depths/--widths")
    return kept


def sample_trials(opts: SearchOptions, archs: list[dict]) -> list[dict]:
    """``opts.trials`` (architecture, learning rate) pairs drawn without replacement with
    ``opts.seed`` (all of them when fewer), in drawing order."""
    pairs = [(a, lr) for a in archs for lr in opts.space()["lrs"]]
    chosen = random.Random(opts.seed).sample(pairs, min(opts.trials, len(pairs)))
    return [{**{k: v for k, v in arch.items() if k != "name"}, "name": f"{arch['name']}-lr{lr:g}",
             "arch": arch["name"], "lr": lr} for arch, lr in chosen]


# ---- successive halving -------------------------------------------------------------------
def rung_tokens(opts: SearchOptions) -> list[int]:
    """Training tokens of each rung: min_tokens * eta^r."""
    return [int(opts.min_tokens * opts.eta ** r) for r in range(opts.n_rungs)]


def survivors(n: int, eta: int) -> int:
    """How many of ``n`` configs go on to the next rung: the best n // eta, at least one."""
    return max(1, n // eta)


def promote(losses: dict[str, float], eta: int) -> list[str]:
    """The names that go on: the best ``survivors`` by loss (ties: by name, so reruns agree)."""
    ranked = sorted(losses, key=lambda name: (losses[name], name))
    return ranked[:survivors(len(ranked), eta)]


def trial_spec(trial: dict, rung: int, tokens: int, opts: SearchOptions) -> dict:
    """One trial at one rung as a sweep run spec (what :func:`..sweep.train_run` trains)."""
    per_step = opts.batch_size * opts.block_size
    steps = max(1, int(round(tokens / per_step)))
    args = trial["model_args"]
    return {"name": f"r{rung}-{trial['name']}", "level": rung, "compute": trial["flops_per_token"]
            * steps * per_step, "n_layer": args["n_layer"], "n_embd": args["n_embd"],
            "n_head": args["n_head"], "head_dim": args["head_dim"],
            "intermediate_size": args["intermediate_size"], "model_args": args,
            "params": trial["params"], "non_embedding_params": trial["non_embedding"],
            "flops_per_token": trial["flops_per_token"], "tokens": steps * per_step,
            "steps": steps, "lr": trial["lr"],
            "warmup_steps": min(opts.warmup_steps, max(1, steps // 10))}


def _identity(spec: dict, opts: SearchOptions) -> dict:
    """What makes a finished trial the same trial: its spec and the options that change it."""
    keep = ("model_args", "tokens", "steps", "lr", "warmup_steps")
    return {**{k: spec[k] for k in keep}, "data": str(Path(opts.data).resolve()),
            **{k: getattr(opts, k) for k in ("model", "batch_size", "block_size", "weight_decay",
                                              "precision", "eval_batches", "seed")}}


def _plan(opts: SearchOptions, family: Family) -> dict:
    """The sweep-plan face of a search (what train_config reads)."""
    return {"options": {**asdict(opts), "mup": False}, "family": family.describe()}


def read_rows(out: str | Path) -> list[dict]:
    return read_jsonl(Path(out) / SEARCH_JSONL)


def run_search(opts: SearchOptions, out: str | Path, *, max_runs: int | None = None,
               device: str = "auto", progress: bool = True, on_row=None,
               train=train_run) -> dict:
    """Run (or continue) the search of ``opts`` in ``out``. ``max_runs`` caps the trials
    trained by this call; ``on_row`` sees each finished trial's row. Returns what happened:
    ``complete``, ``trained``, ``skipped``, ``interrupted``, ``rows``, ``best`` and the paths."""
    opts.validate()
    if max_runs is not None and max_runs <= 0:
        raise ConfigError(f"--max-runs must be a positive integer, got {max_runs}")
    vocab, _ = dataset_vocab(opts.data)
    family = Family(preset=opts.model, vocab_size=vocab, block_size=opts.block_size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the search")
    if out.is_dir() and any(out.iterdir()) and not any((out / f).is_file()
                                                       for f in (SEARCH_FILE, LATENCY_FILE)):
        raise ConfigError(f"--out {out} holds other files and no {SEARCH_FILE}; give a new or empty "
                          "folder (a search folder continues its search)")
    archs = constrained(opts, architectures(opts, family), out)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    trials = sample_trials(opts, archs)
    tokens = rung_tokens(opts)
    atomic_write_text(out / SEARCH_FILE, json.dumps(
        {"format": SEARCH_FORMAT, "options": asdict(opts), "rung_tokens": tokens,
         "candidates": len(archs) * len(opts.space()["lrs"]), "trials": trials}, indent=1))
    plan = _plan(opts, family)
    done = {(r["trial"], r["rung"]): r for r in read_rows(out)}
    alive = trials
    results: dict[tuple[str, int], dict] = {}
    trained, skipped, interrupted, stopped = [], 0, False, False
    for rung, rung_tok in enumerate(tokens):
        for trial in alive:
            spec = trial_spec(trial, rung, rung_tok, opts)
            ident = _identity(spec, opts)
            old = done.get((trial["name"], rung))
            if old is not None and old.get("spec") == ident:
                results[(trial["name"], rung)] = old
                skipped += 1
                continue
            if max_runs is not None and len(trained) >= max_runs:
                stopped = True
                break
            log.info(f"rung {rung} ({len(alive)} configs, {spec['tokens']:,} tokens each): "
                     f"{trial['name']}, {trial['params']:,} parameters")
            run = train(plan, spec, out / "runs" / spec["name"], device=device, progress=progress)
            if run is None:
                interrupted = True
                break
            row = {"trial": trial["name"], "rung": rung, "arch": trial["arch"],
                   **{k: spec[k] for k in ("n_layer", "n_embd", "n_head", "head_dim",
                                           "intermediate_size", "lr", "tokens", "steps")},
                   "mlp_ratio": trial["mlp_ratio"], "params": trial["params"],
                   "non_embedding": trial["non_embedding"],
                   "flops_per_token": trial["flops_per_token"], "latency_ms": trial["latency_ms"],
                   **{k: run.get(k) for k in ("loss", "train_loss", "seconds", "device", "threads")},
                   "run_dir": str(out / "runs" / spec["name"]), "spec": ident}
            append_jsonl(out / SEARCH_JSONL, row)
            results[(trial["name"], rung)] = row
            trained.append(row)
            if on_row is not None:
                on_row(row)
        if interrupted or stopped:
            break
        if rung + 1 < len(tokens):
            keep = set(promote({t["name"]: results[(t["name"], rung)]["loss"] for t in alive}, opts.eta))
            alive = [t for t in alive if t["name"] in keep]
    complete = not (interrupted or stopped)
    rows = sorted(results.values(), key=lambda r: (r["rung"], r["loss"], r["trial"]))
    reached = {}
    for r in rows:
        reached[r["trial"]] = max(reached.get(r["trial"], -1), r["rung"])
    for r in rows:
        r["promoted"] = reached[r["trial"]] > r["rung"]
    write_csv(rows, out / SEARCH_CSV, CSV_COLUMNS)
    summary = {"complete": complete, "trained": trained, "skipped": skipped,
               "interrupted": interrupted, "remaining": None if complete else
               _remaining(len(trials), opts, results), "rows": rows, "trials": len(trials),
               "candidates": len(archs) * len(opts.space()["lrs"]), "rung_tokens": tokens,
               "csv": str(out / SEARCH_CSV), "best": None, "best_yaml": None, "out": str(out)}
    if complete:
        last = [r for r in rows if r["rung"] == len(tokens) - 1]
        best = min(last, key=lambda r: (r["loss"], r["trial"]))
        summary["best"] = best
        summary["best_yaml"] = str(write_best(best, opts, out / BEST_YAML))
    else:  # a best.yaml of an earlier search with other options would mislead
        (out / BEST_YAML).unlink(missing_ok=True)
    return summary


def _remaining(n_trials: int, opts: SearchOptions, results: dict) -> int:
    """Trials still to train (rungs not reached yet counted at their planned sizes)."""
    total, n = 0, n_trials
    for _ in range(opts.n_rungs):
        total += n
        n = survivors(n, opts.eta)
    return total - len(results)


def best_config(best: dict, opts: SearchOptions) -> dict:
    """The winner as TrainConfig fields: the architecture (the fields that differ from the
    preset; the vocab follows the dataset), its learning rate and schedule, batch and block
    size, and the steps of its last rung."""
    from ..models.config import preset
    args = best["spec"]["model_args"]
    base = preset(opts.model).to_dict()
    searched = ("n_layer", "n_embd", "n_head", "head_dim", "intermediate_size")
    model_args = {k: v for k, v in args.items()
                  if k != "vocab_size" and (k in searched or v != base.get(k))}
    return {"data": opts.data, "model": opts.model, "model_args": model_args,
            "block_size": opts.block_size, "batch_size": opts.batch_size,
            "max_steps": best["steps"], "lr": best["lr"], "min_lr": float(f"{best['lr'] / 10:.6g}"),
            "schedule": "cosine", "warmup_steps": best["spec"]["warmup_steps"],
            "weight_decay": opts.weight_decay, "precision": opts.precision, "seed": opts.seed}


def write_best(best: dict, opts: SearchOptions, path: Path) -> Path:
    import yaml
    head = (f"# lmforge scale search: best of {best['trial']} at rung {best['rung']} "
            f"(val loss {best['loss']:.4f} after {best['tokens']:,} tokens; "
            f"{best['params']:,} parameters, {best['flops_per_token']:.3g} FLOPs/token"
            + (f", {best['latency_ms']:.2f} ms latency" if best.get("latency_ms") else "") + ")\n"
            "# lmforge pretrain --config best.yaml --data DATA --max-steps N --out runs/best\n")
    atomic_write_text(path, head + yaml.safe_dump(best_config(best, opts), sort_keys=False))
    return path


def format_leaderboard(result: dict, top: int = 10) -> str:
    """The trials ranked: furthest rung first, then by loss there."""
    rows = result["rows"]
    reached: dict[str, dict] = {}
    for r in rows:  # rows are sorted by rung, so the last one seen is the furthest
        reached[r["trial"]] = r
    ranked = sorted(reached.values(), key=lambda r: (-r["rung"], r["loss"], r["trial"]))
    latency = any(r.get("latency_ms") is not None for r in ranked)
    head = (f"{'#':>3} {'config':<28}{'params':>10}{'FLOPs/tok':>11}"
            + (f"{'lat ms':>8}" if latency else "")
            + f"{'rung':>5}{'tokens':>11}{'val loss':>10}{'time':>8}")
    lines = [head]
    for i, r in enumerate(ranked[:top], 1):
        lines.append(f"{i:>3} {r['trial']:<28}{r['params']:>10,}{r['flops_per_token']:>11.3g}"
                     + (f"{r['latency_ms']:>8.2f}" if latency else "")
                     + f"{r['rung']:>5}{r['tokens']:>11,}{r['loss']:>10.4f}"
                     f"{format_duration(r['seconds'] or 0):>8}")
    if len(ranked) > top:
        lines.append(f"    ... {len(ranked) - top} more in {result['csv']}")
    return "\n".join(lines)


def scale_search(data: str, out: str, *, max_runs: int | None = None, device: str = "auto",
                 progress: bool = False, **options) -> dict:
    """Python API of `lmforge scale search`: the same options and defaults as the flags
    (:class:`SearchOptions`). Returns :func:`run_search`'s summary (``best``, ``best_yaml``,
    ``rows``, ``csv``...)."""
    from ..config import from_dict
    opts = from_dict(SearchOptions, {**options, "data": str(data)}, where="scale_search")
    return run_search(opts, out, max_runs=max_runs, device=device, progress=progress)

"""`lmforge scale plan`: an isoFLOP grid for a budget — compute levels, 4-6 model sizes per level,
each run's tokens from its compute (C = FLOPs per token x D, i.e. 6ND plus attention), learning
rate and a schedule that ends at the run's own token count, and the time each run will take on
this machine (measured tokens/s of every shape)."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..files import atomic_write_text
from .family import VARY, Family, Shape

PLAN_FILE = "plan.json"
PLAN_FORMAT = "lmforge-scale-plan/1"


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class ScalePlanOptions:
    """What `lmforge scale plan` lays out (every field is a flag)."""

    data: str = _help("prepared dataset folder (from `lmforge prepare`) the sweep trains on", "")
    model: str = _help("decoder preset the family grows from (see `lmforge models`)", "gpt-mini")
    vary: str = _help("which dims vary: both (depth = width / aspect), width or depth", "both")
    aspect: float = _help("width per layer when both vary (n_layer = n_embd / aspect, at least 2)", 40.0)
    head_dim: int = _help("size of one attention head (heads = width / head_dim)", 32)
    widths: str = _help("comma-separated widths of the ladder (default: 32 to 1024)", None)
    compute: str = _help("comma-separated compute levels in FLOPs, e.g. 1e13,3e13,1e14", None)
    budget: float = _help("total FLOPs of the sweep (levels from --levels and --level-ratio)", None)
    time: str = _help("wall-clock budget of the sweep on this machine, e.g. 60m or 1.5h "
                      "(levels chosen from measured tokens/s)", None)
    levels: int = _help("compute levels when --budget or --time sets them", 4)
    level_ratio: float = _help("compute ratio between neighbouring levels", 2.0)
    sizes: int = _help("model sizes per compute level (4-6 give the parabola of approach 2)", 5)
    spread: float = _help("largest size / Chinchilla-guess size at each level (smallest: the "
                          "inverse)", 4.0)
    tokens_per_param: float = _help("tokens per parameter of the guessed optimum the sizes "
                                    "centre on (Chinchilla: 20)", 20.0)
    batch_size: int = _help("sequences per optimizer step", 32)
    block_size: int = _help("tokens per sequence", 128)
    lr: float = _help("peak learning rate at --lr-width", 2e-3)
    lr_width: int = _help("width at which --lr holds", 128)
    lr_exponent: float = _help("peak LR = lr * (lr_width / width)^exponent (0 = one LR for "
                               "all; with --mup the LR transfers, so 0 is the default)", 0.5)
    mup: bool = _help("train every member with muP (base width --lr-width)", False)
    warmup_steps: int = _help("linear warmup steps (at most a tenth of a run)", 100)
    min_steps: int = _help("runs shorter than this many steps are left out of a level", 200)
    weight_decay: float = _help("AdamW decoupled weight decay", 0.1)
    precision: str = _help("auto, fp32 or bf16 for every run", "auto")
    threads: int = _help("CPU threads per run (0 = torch's default)", 0)
    eval_batches: int = _help("validation batches for each run's final loss (a fixed set)", 50)
    seed: int = _help("random seed of every run", 1337)

    def validate(self) -> "ScalePlanOptions":
        if not self.data:
            raise ConfigError("--data is required: a dataset folder made by `lmforge prepare`")
        if self.vary not in VARY:
            raise ConfigError(f"--vary must be one of {', '.join(VARY)}, got {self.vary!r}")
        given = [n for n in ("compute", "budget", "time") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of --compute, --budget and --time"
                              + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
        for name in ("levels", "sizes", "batch_size", "block_size", "eval_batches", "min_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                  f"got {getattr(self, name)}")
        if self.sizes < 3:
            raise ConfigError(f"--sizes must be at least 3 (a parabola per level), got {self.sizes}")
        for name in ("level_ratio", "spread"):
            if not getattr(self, name) > 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be above 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.tokens_per_param > 0:
            raise ConfigError("--lr and --tokens-per-param must be positive")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"--budget must be positive FLOPs, got {self.budget}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        return self

    def family(self, vocab_size: int) -> Family:
        widths = parse_numbers(self.widths, "--widths", int) if self.widths else None
        return Family(preset=self.model, vary=self.vary, vocab_size=vocab_size,
                      block_size=self.block_size, aspect=self.aspect, head_dim=self.head_dim,
                      **({"widths": tuple(widths)} if widths else {}))


def parse_numbers(text: str, flag: str, kind=float) -> list:
    try:
        values = [kind(float(v)) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} must be positive numbers, got {text!r}")
    return values


def parse_duration(text: str) -> float:
    """Seconds in '90s', '45m', '1.5h' or a bare number of seconds."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([smhd]?)\s*", str(text).lower())
    if not match:
        raise ConfigError(f"a duration must look like 90s, 45m or 1.5h, got {text!r}")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not value > 0:
        raise ConfigError(f"a duration must be positive, got {text!r}")
    return value


def dataset_vocab(data: str | Path) -> tuple[int, int]:
    """(vocab size, training tokens) of a prepared dataset."""
    meta_path = Path(data) / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{data} is not a prepared dataset (no meta.json); make one with "
                        "`lmforge prepare`")
    try:
        meta = json.loads(meta_path.read_text())
        return int(meta["vocab_size"]), int(meta["splits"]["train"]["tokens"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {meta_path}: {exc}") from None


def run_lr(opts: ScalePlanOptions, width: int) -> float:
    exponent = 0.0 if opts.mup else opts.lr_exponent
    return opts.lr * (opts.lr_width / width) ** exponent


def measure_tokens_per_second(family: Family, shape: Shape, opts: ScalePlanOptions,
                              steps: int = 4) -> float:
    """Training tokens/s of ``shape`` on this machine: forward, backward and AdamW step on
    random tokens at the plan's batch, block size, precision and threads (after a warm-up)."""
    import torch

    from ..models.io import build_model
    from ..runtime import autocast, resolve_device, resolve_precision
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = resolve_device("auto")
    precision = resolve_precision(opts.precision, device)
    model = build_model(family.config(shape.n_layer, shape.n_embd)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, family.vocab_size, (opts.batch_size, opts.block_size + 1), generator=gen).to(device)

    def step():
        with autocast(device, precision):
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * opts.batch_size * opts.block_size / (time.perf_counter() - start)


def level_runs(family: Family, members: list[Shape], compute: float, level: int,
               opts: ScalePlanOptions) -> list[dict]:
    """The runs of one compute level: ``opts.sizes`` members log-spaced around the size whose
    tokens are ``tokens_per_param`` x its parameters, each trained on compute / FLOPs-per-token
    tokens."""
    # Chinchilla guess: C = 6 N D with D = k N.
    guess = math.sqrt(compute / (6 * opts.tokens_per_param))
    k = opts.sizes
    targets = [guess * opts.spread ** (2 * i / (k - 1) - 1) for i in range(k)]
    tokens_per_step = opts.batch_size * opts.block_size
    usable = [s for s in members if compute / s.flops_per_token / tokens_per_step >= opts.min_steps]
    if not usable:
        return []
    chosen: list[Shape] = []
    for target in targets:
        left = [s for s in usable if s not in chosen]
        if not left:
            break
        chosen.append(min(left, key=lambda s: abs(math.log(s.params / target))))
    runs = []
    for shape in sorted(set(chosen), key=lambda s: s.params):
        steps = int(round(compute / shape.flops_per_token / tokens_per_step))
        tokens = steps * tokens_per_step
        runs.append({
            "name": f"c{level}-{shape.name}", "level": level, "compute": compute,
            "n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head,
            "params": shape.params, "non_embedding_params": shape.non_embedding,
            "flops_per_token": shape.flops_per_token, "tokens": tokens, "steps": steps,
            "flops": shape.flops_per_token * tokens, "lr": run_lr(opts, shape.n_embd),
            "warmup_steps": min(opts.warmup_steps, max(1, steps // 10)),
        })
    return runs


def make_grid(opts: ScalePlanOptions, *, measure: bool = True) -> dict:
    """The plan: family, levels, runs (with estimated seconds when ``measure``)."""
    opts.validate()
    vocab, train_tokens = dataset_vocab(opts.data)
    family = opts.family(vocab)
    members = family.members()
    speed: dict[str, float] = {}

    def seconds(run: dict) -> float:
        name = f"L{run['n_layer']}-d{run['n_embd']}"
        if name not in speed:
            speed[name] = measure_tokens_per_second(family, family.shape(run["n_layer"], run["n_embd"]), opts)
        return run["tokens"] / speed[name]

    def grid(levels: list[float]) -> list[dict]:
        return [run for i, c in enumerate(levels) for run in level_runs(family, members, c, i, opts)]

    if opts.compute is not None:
        levels = sorted(parse_numbers(opts.compute, "--compute"))
    else:
        ratios = [opts.level_ratio ** i for i in range(opts.levels)]
        if opts.budget is not None:
            # Each level spends about sizes x its compute.
            c0 = opts.budget / (opts.sizes * sum(ratios))
        else:
            budget_s = parse_duration(opts.time)
            c0 = _fit_time(lambda c: sum(seconds(r) for r in grid([c * q for q in ratios])), budget_s,
                           members, opts)
        levels = [c0 * q for q in ratios]
    runs = grid(levels)
    if not runs:
        raise ConfigError("no run fits: every member would train for fewer than --min-steps "
                          f"({opts.min_steps}) steps; raise the compute or lower --min-steps")
    short = [i for i, c in enumerate(levels) if sum(r["level"] == i for r in runs) < 3]
    if short:
        raise ConfigError(f"compute level(s) {', '.join(f'{levels[i]:.3g}' for i in short)} have "
                          "fewer than 3 sizes above --min-steps; raise the compute or widen --widths")
    if measure:
        for run in runs:
            run["est_seconds"] = seconds(run)
    return {"format": PLAN_FORMAT, "options": asdict(opts), "family": family.describe(),
            "train_tokens": train_tokens, "levels": levels,
            "tokens_per_second": speed, "runs": runs,
            "est_seconds": sum(r.get("est_seconds", 0.0) for r in runs) if measure else None}


def _fit_time(total_seconds, budget_s: float, members: list[Shape], opts: ScalePlanOptions) -> float:
    """The smallest level's compute whose grid takes ``budget_s`` (bisection on log C)."""
    smallest = members[0].flops_per_token * opts.batch_size * opts.block_size * opts.min_steps
    # Grow the bracket from below: measuring a shape far beyond the budget would cost minutes.
    lo = hi = math.log(smallest)
    for _ in range(60):
        try:
            t = total_seconds(math.exp(hi))
        except ConfigError:
            t = 0.0
        if t >= budget_s:
            break
        lo, hi = hi, hi + math.log(2)
    for _ in range(30):
        mid = (lo + hi) / 2
        try:
            t = total_seconds(math.exp(mid))
        except ConfigError:
            t = 0.0
        lo, hi = (mid, hi) if t < budget_s else (lo, mid)
        if hi - lo < 0.02:
            break
    return math.exp(lo)


def save_plan(plan: dict, out: str | Path, overwrite: bool = False) -> Path:
    out = Path(out)
    path = out / PLAN_FILE
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite to replace the plan "
                          "(finished runs whose spec is unchanged are kept)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=1))
    return path


def options_from_plan(plan: dict) -> ScalePlanOptions:
    from ..config import from_dict
    return from_dict(ScalePlanOptions, plan["options"], where="plan.json")


def load_plan(folder: str | Path) -> dict:
    path = Path(folder)
    path = path / PLAN_FILE if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"{folder} holds no sweep plan ({PLAN_FILE}); make one with "
                          "`lmforge scale plan --out FOLDER`")
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise DataError(f"{path} is not an lmforge scale plan")
    return plan


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(plan: dict) -> str:
    fam = plan["family"]
    lines = [f"family {fam['preset']} (vary {fam['vary']}, head_dim {fam['head_dim']}, vocab "
             f"{fam['vocab_size']}, block {fam['block_size']}); dataset {plan['options']['data']} "
             f"({plan['train_tokens']:,} training tokens)",
             f"{len(plan['levels'])} compute levels: " + ", ".join(f"{c:.3g}" for c in plan["levels"])
             + " FLOPs", ""]
    head = f"{'run':<16}{'layers':>7}{'width':>6}{'N':>11}{'N non-emb':>11}{'tokens':>13}" \
           f"{'epochs':>7}{'steps':>7}{'peak lr':>9}{'FLOPs':>10}{'est. time':>11}"
    lines.append(head)
    for r in plan["runs"]:
        est = format_duration(r["est_seconds"]) if "est_seconds" in r else "-"
        lines.append(f"{r['name']:<16}{r['n_layer']:>7}{r['n_embd']:>6}{r['params']:>11,}"
                     f"{r['non_embedding_params']:>11,}{r['tokens']:>13,}"
                     f"{r['tokens'] / plan['train_tokens']:>7.2f}{r['steps']:>7,}{r['lr']:>9.2g}"
                     f"{r['flops']:>10.3g}{est:>11}")
    total = sum(r["flops"] for r in plan["runs"])
    tail = f"{len(plan['runs'])} runs, {total:.3g} FLOPs"
    if plan.get("est_seconds"):
        tail += f", about {format_duration(plan['est_seconds'])} on this machine"
    lines += ["", tail]
    return "\n".join(lines)

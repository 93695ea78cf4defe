"""`lmforge compress`: make compressed variants of one model, save each, measure all of them the
same way (size on disk, parameters, speed, quality) and write one table with the Pareto frontier
marked, as Markdown, JSON and a PNG.

    result = compress("runs/gpt", CompressOptions(methods="int8,int4,wanda50",
                      eval_data="valid.txt"), out="runs/gpt-compressed")
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import options_from_dict
from ..errors import ConfigError, DataError
from ..files import atomic_dir, atomic_write_text
from ..hub import load_model
from ..interop.model_folder import save_pretrained
from ..runtime import resolve_device
from .measure import (EvalData, count_parameters, kind_of, measure_encoder, measure_lm,
                      measure_task, weights_bytes)
from .methods import Method, apply_step, parse_methods

log = logging.getLogger(__name__)
PACKAGED_TEXT = Path(__file__).resolve().parent.parent / "assets" / "tinyshakespeare.txt"


def _help(text: str, default):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class CompressOptions:
    """What `lmforge compress` makes and how it measures it."""

    methods: str = _help("comma-separated variants, steps joined by + (int8, int4, int4-g64, "
                         "dynamic-int8, prune50, wanda50, 2:4, wanda2:4, heads25-ffn25, wanda50+int8, "
                         "model:PATH for a student from `lmforge distill`)", "int8,int4")
    eval_data: str | None = _help("evaluation file: text for a language model (perplexity), "
                                  "the task's labeled file for a fine-tuned model, one sentence "
                                  "per line for a plain encoder (similarity to the original)", None)
    calibration: str | None = _help("calibration file for wanda and structured pruning: text "
                                    "for a language model (default: the packaged Shakespeare), "
                                    "the task's training file for a fine-tuned model", None)
    calibration_samples: int = _help("calibration sequences (examples for a task model)", 128)
    calibration_length: int = _help("tokens per calibration sequence (language models)", 256)
    eval_tokens: int = _help("language models: tokens of --eval-data scored for perplexity", 8192)
    max_examples: int | None = _help("task models and encoders: use only the first N examples", None)
    prompt_tokens: int = _help("language models: prompt length of the prefill timing", 512)
    new_tokens: int = _help("language models: tokens of the batch-1 greedy decode timing", 64)
    repeats: int = _help("timings: median of this many runs after a warm-up", 3)
    batch_size: int = _help("task models and encoders: examples per forward pass", 32)
    group_size: int = _help("int4 group size when a method does not name one (32, 64, 128)", 128)
    head: str = dataclasses.field(default="int8", metadata={
        "help": "a decoder's output head under int8/int4: int8 (int4 loses most of its quality "
                "there: SmolLM2 int4 perplexity +4.6 percent with an int4 head, +0.3 with an int8 "
                "one), same (the method's), or float", "choices": ("int8", "same", "float")})
    precision: str = _help("precision of the measurements (fp32 compares with the original "
                           "as saved; quantized layers use their own kernels)", "fp32")
    device: str = _help("auto, cpu, cuda, ...", "auto")
    recover_steps: int = _help("pruned variants: a recovery fine-tune of this many steps before "
                               "any quantization step (0 = none)", 0)
    recover_data: str | None = _help("recovery training data: the task's training file for a "
                                     "fine-tuned model, a prepared dataset for a language model", None)
    recover_lr: float | None = _help("learning rate of the recovery run (default: finetune's / "
                                     "pretrain's)", None)
    save_variants: bool = _help("keep each variant's model folder under OUT/variants (sizes "
                                "are measured from them either way)", True)

    def validate(self) -> "CompressOptions":
        for name in ("calibration_samples", "calibration_length", "eval_tokens", "prompt_tokens",
                     "new_tokens", "repeats", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"compress option '{name}' must be positive, got "
                                  f"{getattr(self, name)}")
        if self.recover_steps < 0:
            raise ConfigError(f"compress option 'recover_steps' must be >= 0, got {self.recover_steps}")
        if self.recover_steps and not self.recover_data:
            raise ConfigError("--recover-steps needs --recover-data (the task's training file, or "
                              "a prepared dataset for a language model)")
        if self.max_examples is not None and self.max_examples <= 0:
            raise ConfigError(f"compress option 'max_examples' must be positive, got {self.max_examples}")
        if self.precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ConfigError(f"compress option 'precision' must be fp32, bf16, fp16 or auto, "
                              f"got {self.precision!r}")
        if self.head not in ("int8", "same", "float"):
            raise ConfigError(f"compress option 'head' must be int8, same or float, got {self.head!r}")
        parse_methods(self.methods, self.group_size)
        return self


def _quality(row: dict) -> tuple[str, float, bool]:
    """(name, value, higher is better) of a row's quality metric."""
    m = row["metrics"]
    if "perplexity" in m:
        return "perplexity", m["perplexity"], False
    if "metric" in m:
        return m["metric"], m[m["metric"]], True
    return "cosine", m["cosine"], True


def _speed(row: dict) -> tuple[str, float]:
    m = row["metrics"]
    return ("decode_tok_s", m["decode_tok_s"]) if "decode_tok_s" in m else ("examples_s", m["examples_s"])


def pareto(rows: list[dict]) -> list[str]:
    """Names of the rows no other row beats on size, speed and quality at once (it is at least
    as good on all three and better on one)."""
    def key(r):
        _, q, higher = _quality(r)
        return (-r["size_mb"], _speed(r)[1], q if higher else -q)

    keys = {r["name"]: key(r) for r in rows}
    front = []
    for name, k in keys.items():
        dominated = any(all(o >= s for o, s in zip(other, k)) and other != k
                        for n, other in keys.items() if n != name)
        if not dominated:
            front.append(name)
    return front


class Compressor:
    """One compress run: the original model, its evaluation data, and the variants."""

    def __init__(self, model_path: str | Path, options: CompressOptions, out: str | Path,
                 log_fn: Callable[[str], None] = print, overwrite: bool = False):
        self.options, self.out, self.say = options.validate(), Path(out), log_fn
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())) and not overwrite:
            raise ConfigError(f"output folder {self.out} already exists; pass --overwrite to "
                              "replace it")
        self.model_path = Path(model_path)
        self.device = resolve_device(options.device)
        self.model, self.tokenizer, self.tok_cfg = load_model(self.model_path, device=self.device)
        if self.tokenizer is None:
            raise ConfigError(f"no tokenizer with the model in {self.model_path}")
        self.model.eval()
        self.kind = kind_of(self.model)
        if options.eval_data is None:
            if self.kind != "lm":
                raise ConfigError("--eval-data is needed for a fine-tuned task model or an "
                                  "encoder (a labeled file / one sentence per line)")
        eval_path = options.eval_data or PACKAGED_TEXT
        self.data = EvalData(self.kind, eval_path, self.model, self.tokenizer,
                             options.eval_tokens, options.max_examples)
        self.methods = parse_methods(options.methods, options.group_size)
        self._calibration = None

    def calibration(self) -> list:
        """Calibration batches for Wanda and structured pruning, built once."""
        if self._calibration is None:
            from .calibration import calibration_data
            path = self.options.calibration
            if path is None:
                if self.kind == "task":
                    raise ConfigError("--calibration (the task's training file) is needed for "
                                      "wanda and structured pruning of a fine-tuned model")
                path = PACKAGED_TEXT
            if not Path(path).is_file():
                raise DataError(f"calibration data not found: {path}")
            self._calibration = calibration_data(
                self.model, self.tokenizer, path, sequences=self.options.calibration_samples,
                length=self.options.calibration_length)
        return self._calibration

    def measure(self, model: torch.nn.Module) -> dict:
        o = self.options
        if self.kind == "lm":
            return measure_lm(model, self.data, prompt_tokens=o.prompt_tokens,
                              new_tokens=o.new_tokens, repeats=o.repeats, precision=o.precision)
        if self.kind == "task":
            return measure_task(model, self.data, batch_size=o.batch_size, repeats=o.repeats,
                                precision=o.precision)
        return measure_encoder(model, self.tokenizer, self.data, batch_size=o.batch_size,
                               repeats=o.repeats, precision=o.precision)

    def row(self, name: str, model: torch.nn.Module, folder: Path, steps: list,
            seconds: float) -> dict:
        counts = count_parameters(model)
        metrics = self.measure(model)
        row = {"name": name, "size_mb": weights_bytes(folder) / 2**20, **counts,
               "metrics": metrics, "steps": steps, "compress_seconds": seconds,
               "folder": str(folder)}
        q, value, _ = _quality(row)
        s, speed = _speed(row)
        self.say(f"{name}: {row['size_mb']:.1f} MB, {q} {value:.4g}, {s.replace('_', ' ')} {speed:.1f}")
        return row

    def variant(self, method: Method, work: Path) -> dict:
        start = time.perf_counter()
        external = method.external
        if external is not None:
            model, _, _ = load_model(external, device=self.device)
            model.eval()
            if kind_of(model) != self.kind:
                raise ConfigError(f"{method.name}: a {kind_of(model)} model cannot stand beside "
                                  f"a {self.kind} model in one table")
            return self.row(method.name, model, external, [{"step": "external", "path": str(external)}],
                            0.0)
        model = copy.deepcopy(self.model)
        reports = []
        pruned = False
        for step in method.steps:
            if step.kind == "quantize" and pruned:
                model = self.recover(model, method, work, reports)
                pruned = False
            reports.append({"step": step.name, **apply_step(model, step, self.calibration,
                                                            self.say, head=self.options.head)})
            pruned = pruned or step.kind in ("unstructured", "structured")
        if pruned:
            model = self.recover(model, method, work, reports)
        seconds = time.perf_counter() - start
        folder = work / method.folder_name
        save_pretrained(model, folder, self.tokenizer, self.tok_cfg or None)
        model.eval()
        return self.row(method.name, model, folder, reports, seconds)

    def recover(self, model: torch.nn.Module, method: Method, work: Path,
                reports: list) -> torch.nn.Module:
        """The pruned ``model`` after ``recover_steps`` of training (itself when there are none).
        Unstructured zeros are kept: the pruned weights are zeroed again after training."""
        o = self.options
        if not o.recover_steps:
            return model
        from .recovery import recover
        zeroed = {layer["name"] + ".weight" for r in reports
                  if r.get("method") in ("magnitude", "wanda") for layer in r["layers"]}
        masks = {n: p == 0 for n, p in model.named_parameters() if n in zeroed}
        extra = {"lr": o.recover_lr} if o.recover_lr is not None else {}
        run_dir = work.parent / "recovery" / method.folder_name
        self.say(f"  {method.name}: recovery fine-tune, {o.recover_steps} steps -> {run_dir}")
        trained, result = recover(model, self.tokenizer, o.recover_data, steps=o.recover_steps,
                                  out_dir=run_dir, tokenizer_config=self.tok_cfg or None,
                                  device=str(self.device), **extra)
        with torch.no_grad():
            for name, p in trained.named_parameters():
                mask = masks.get(name)
                if mask is not None and mask.shape == p.shape:
                    p.masked_fill_(mask.to(p.device), 0.0)  # pruned weights stay pruned
        reports.append({"step": "recovery", "steps": o.recover_steps, "run": str(run_dir),
                        "seconds": result.get("train_seconds") if isinstance(result, dict) else None})
        return trained.eval()

    def run(self) -> dict:
        """Measure the original and every variant; everything is written into a temporary
        folder beside OUT that replaces OUT only when the run has finished."""
        with atomic_dir(self.out) as tmp:
            result = self._run(tmp)
        for r in result["rows"]:
            if r["folder"] and Path(r["folder"]).is_relative_to(tmp):
                r["folder"] = str(self.out / Path(r["folder"]).relative_to(tmp))
        atomic_write_text(self.out / "report.json", json.dumps(result, indent=2) + "\n")
        return result

    def _run(self, tmp: Path) -> dict:
        work = tmp / "variants"
        # The original is saved as the variants are (its float weights in lmforge's folder
        # format), so that sizes compare like with like even when it was read from a GGUF file.
        folder = work / "original"
        save_pretrained(self.model, folder, self.tokenizer, self.tok_cfg or None)
        rows = [self.row("original", self.model, folder, [], 0.0)]
        for method in self.methods:
            rows.append(self.variant(method, work))
        if not self.options.save_variants:
            shutil.rmtree(work, ignore_errors=True)
            for r in rows:
                if not r["steps"] or r["steps"][0].get("step") != "external":
                    r["folder"] = None
        front = pareto(rows)
        for r in rows:
            r["pareto"] = r["name"] in front
        original = rows[0]
        q_name, _, higher = _quality(original)
        result = {"model": str(self.model_path), "kind": self.kind, "device": str(self.device),
                  "cpu": platform.processor() or platform.machine(),
                  "threads": torch.get_num_threads(), "precision": self.options.precision,
                  "eval_data": str(self.data.path), "quality": q_name,
                  "quality_higher_is_better": higher, "speed": _speed(original)[0],
                  "options": dataclasses.asdict(self.options), "rows": rows}
        (tmp / "report.md").write_text(format_table(result) + "\n", encoding="utf-8")
        plot_pareto(result, tmp / "pareto.png")
        return result


def compress(model: str | Path, options: CompressOptions | dict | None = None, *,
             out: str | Path = "runs/compress", overwrite: bool = False,
             log_fn: Callable[[str], None] = print, **fields) -> dict:
    """Make and measure the variants ``options.methods`` of ``model`` (a path); writes
    OUT/report.json, OUT/report.md, OUT/pareto.png and OUT/variants/NAME/ model folders."""
    if isinstance(options, dict) or options is None:
        options = options_from_dict(CompressOptions, {**(options or {}), **fields},
                                    where="compress options")
    elif fields:
        options = dataclasses.replace(options, **fields)
    return Compressor(model, options, out, log_fn, overwrite).run()


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def format_table(result: dict) -> str:
    """The report as a Markdown table, the Pareto-optimal variants starred."""
    rows = result["rows"]
    base = rows[0]
    q_name, q_base, higher = _quality(base)
    s_name, s_base = _speed(base)
    lm = result["kind"] == "lm"
    head = ["variant", "size MB", "x smaller", "params", "nonzero"]
    head += ["prefill tok/s", "decode tok/s", "decode x"] if lm else ["examples/s", "speed x"]
    head += [q_name, "change", "Pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        _, q, _ = _quality(r)
        change = (q / q_base - 1) * 100 if higher is False else (q - q_base) * (100 if q_base <= 1 else 1)
        unit = "%" if higher is False else (" pts" if q_base <= 1 else "")
        cells = [r["name"], f"{r['size_mb']:.1f}", f"{base['size_mb'] / r['size_mb']:.2f}",
                 _fmt_count(r["parameters"]), f"{r['nonzero'] / max(r['parameters'], 1):.0%}"]
        if lm:
            cells += [f"{m['prefill_tok_s']:.0f}", f"{m['decode_tok_s']:.1f}",
                      f"{m['decode_tok_s'] / s_base:.2f}"]
        else:
            cells += [f"{m['examples_s']:.0f}", f"{m['examples_s'] / s_base:.2f}"]
        cells += [f"{q:.4g}", f"{change:+.2f}{unit}" if r is not base else "-",
                  "*" if r.get("pareto") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(result: dict, path: str | Path) -> Path:
    """Quality against size on disk and against speed, one point per variant, the Pareto-optimal
    ones filled and joined (the frontier of each panel's two axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result["rows"]
    q_name, _, higher = _quality(rows[0])
    s_name, _ = _speed(rows[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    panels = [("size on disk (MB)", lambda r: r["size_mb"], False),
              (s_name.replace("_s", "/s").replace("_", " "), lambda r: _speed(r)[1], True)]
    for ax, (xlabel, xval, x_higher) in zip(axes, panels):
        pts = [(xval(r), _quality(r)[1], r) for r in rows]
        # The 2-D frontier of this panel: sort by the x axis from best to worst and keep each
        # point whose quality beats every point before it.
        order = sorted(pts, key=lambda p: -p[0] if x_higher else p[0])
        frontier, best = [], None
        for x, q, r in order:
            if best is None or (q > best if higher else q < best):
                frontier.append((x, q))
                best = q
        for x, q, r in pts:
            on = (x, q) in frontier
            ax.scatter([x], [q], s=50, color="tab:red" if on else "white",
                       edgecolors="tab:red" if on else "tab:gray", zorder=3)
            label = r["name"]
            if r["steps"] and r["steps"][0].get("step") == "external":
                label = "model:" + Path(r["steps"][0]["path"]).name  # the folder, not its path
            ax.annotate(label, (x, q), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if len(frontier) > 1:
            fx, fq = zip(*sorted(frontier))
            ax.plot(fx, fq, color="tab:red", alpha=0.6, zorder=2, label="Pareto frontier")
            ax.legend(fontsize=8, loc="best")
        ax.set_xlabel(xlabel)
        if not higher and max(p[1] for p in pts) > 4 * min(p[1] for p in pts):
            ax.set_yscale("log")  # a pruned model's perplexity can be 100x the original's
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel(q_name + ("" if higher else " (lower is better)"))
        ax.grid(alpha=0.3)
    source = Path(result["model"])
    name = source.parent.name if source.name == "model" else source.name  # a run's model/
    fig.suptitle(f"{name}: compressed variants ({result['device']}, "
                 f"{result['threads']} threads, {result['precision']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

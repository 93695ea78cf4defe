"""Put n-gram, LSTM and Transformer language models side by side on one prepared dataset.

    result = compare(CompareConfig(data="data/wt2", out="runs/compare"))
    print(format_table(result))

Kneser-Ney n-grams are counted on the train split; the LSTM (``bptt_lm``) and the Transformer
(``causal_lm``) are trained on it by the training engine. Then every model scores the *whole*
validation split, the same tokens for all: every token of the split, each document's
end-of-text (EOS) included, is predicted from what comes before it, and perplexity is
exp(-sum of natural-log probabilities / number of tokens). Only the context each model may use
differs: an n-gram sees at most n-1 tokens of the current document, the LSTM carries its state
through the whole split, the Transformer slides a window of its training length over it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import evaluate_on_dataset, fit_on_dataset
from ..data.dataset import TokenShards
from ..errors import ConfigError
from ..files import atomic_write_text
from .scoring import token_logprobs

RESULT_JSON, RESULT_PNG = "compare.json", "compare.png"


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class CompareConfig:
    """What `lmforge compare` trains and scores; every field is also a flag."""

    data: str = _help("prepared dataset folder with train and val splits", "")
    out: str = _help("output folder: compare.json, compare.png and the neural runs", "runs/compare")
    ngram_orders: list[int] = field(default_factory=lambda: [2, 3, 4, 5], metadata={
        "help": "n-gram orders to fit, comma separated; empty for none (default: 2,3,4,5)"})
    ngram_discount: str = _help("Kneser-Ney discount: modified (Chen & Goodman) or a number",
                                "modified")
    lstm_model: str = _help("LSTM preset (trained with objective bptt_lm)", "lstm-small")
    lstm_args: dict = _help("LSTM architecture overrides as JSON, e.g. {\"n_embd\": 128}", None)
    lstm_steps: int = _help("LSTM training steps (0: skip the LSTM)", 1000)
    lstm_batch_size: int = _help("LSTM parallel streams per batch", 20)
    lstm_block_size: int = _help("LSTM truncated-BPTT length", 35)
    lstm_lr: float = _help("LSTM peak learning rate (AdamW)", 5e-3)
    gpt_model: str = _help("Transformer preset (trained with objective causal_lm)", "gpt-mini")
    gpt_args: dict = _help("Transformer architecture overrides as JSON", None)
    gpt_steps: int = _help("Transformer training steps (0: skip the Transformer)", 1000)
    gpt_batch_size: int = _help("Transformer windows per batch", 16)
    gpt_block_size: int = _help("Transformer training window, also its scoring window", 128)
    gpt_lr: float = _help("Transformer peak learning rate (AdamW)", 2e-3)
    gpt_stride: int | None = _help("scoring window step (default: half the window)", None)
    precision: str = _help("training precision: auto, fp32, bf16 (scoring is always fp32)", "auto")
    device: str = _help("auto, cpu, cuda, cuda:N or mps", "auto")
    threads: int = _help("CPU threads for torch (0 = torch's default)", 0)
    seed: int = _help("random seed of the neural runs", 1337)

    def validate(self) -> "CompareConfig":
        try:
            self.ngram_orders = [int(n) for n in self.ngram_orders]
        except (TypeError, ValueError):
            raise ConfigError(f"config field 'ngram_orders' must be integers, got "
                              f"{self.ngram_orders!r}") from None
        if any(n < 1 for n in self.ngram_orders):
            raise ConfigError(f"config field 'ngram_orders' must be >= 1, got {self.ngram_orders}")
        if self.ngram_discount != "modified":
            try:
                self.ngram_discount = float(self.ngram_discount)
            except ValueError:
                raise ConfigError("config field 'ngram_discount' must be 'modified' or a number, "
                                  f"got {self.ngram_discount!r}") from None
        for name in ("lstm_steps", "gpt_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}' must be >= 0, got {getattr(self, name)}")
        if not (self.ngram_orders or self.lstm_steps or self.gpt_steps):
            raise ConfigError("nothing to compare: give ngram_orders, lstm_steps or gpt_steps")
        if self.gpt_stride is not None and not 1 <= self.gpt_stride <= self.gpt_block_size:
            raise ConfigError(f"config field 'gpt_stride' must be in [1, gpt_block_size], "
                              f"got {self.gpt_stride}")
        if not self.data:
            raise ConfigError("config field 'data' is required: a folder made by `lmforge prepare`")
        return self


def _val_ids(data: str) -> tuple[np.ndarray, int]:
    """All token ids of the val split in order, and the dataset's EOS id."""
    val = TokenShards(data, "val")
    return val.read(0, len(val)), int(val.meta["eos_id"])


def score_model(model: torch.nn.Module, ids: np.ndarray, eos_id: int,
                window: int | None = None, stride: int | None = None) -> tuple[float, int]:
    """(total natural-log probability, tokens) of every id of ``ids``, in fp32. The first is
    predicted after one EOS, as the n-gram predicts it after ``<s>`` padding; a Transformer
    uses a sliding ``window`` with ``stride``, a recurrent model carries its state."""
    logprobs = token_logprobs(model, [eos_id, *ids.tolist()], stride=stride, max_length=window)
    return math.fsum(logprobs.tolist()), len(logprobs)


def _ngram_rows(cfg: CompareConfig, log) -> list[dict]:
    rows = []
    for order in cfg.ngram_orders:
        start = time.perf_counter()
        lm = fit_on_dataset(cfg.data, order, discount=cfg.ngram_discount)
        seconds = time.perf_counter() - start
        total, tokens, ppl = evaluate_on_dataset(lm, cfg.data, "val")
        discount = ("modified KN" if cfg.ngram_discount == "modified"
                    else f"KN d={cfg.ngram_discount}")
        rows.append({"name": f"{order}-gram ({discount})", "kind": "ngram",
                     "params": lm.num_parameters(), "train_seconds": seconds, "steps": None,
                     "train_tokens": None, "val_logprob": total, "val_tokens": tokens, "val_ppl": ppl,
                     "context": f"up to {order - 1} previous token(s) of its document"})
        log(f"{rows[-1]['name']}: val ppl {ppl:.2f} ({seconds:.1f} s)")
    return rows


def _neural_row(cfg: CompareConfig, kind: str, ids: np.ndarray, eos_id: int, log) -> dict:
    """Train one neural model through the engine, then score the whole val split with it."""
    from ..hub import from_pretrained
    from ..training import TrainConfig, Trainer

    lstm = kind == "lstm"
    model, steps = (cfg.lstm_model, cfg.lstm_steps) if lstm else (cfg.gpt_model, cfg.gpt_steps)
    batch_size = cfg.lstm_batch_size if lstm else cfg.gpt_batch_size
    block_size = cfg.lstm_block_size if lstm else cfg.gpt_block_size
    args = dict((cfg.lstm_args if lstm else cfg.gpt_args) or {})
    if not Path(model).is_dir():  # a new model: positions beyond the window would never train
        args.setdefault("context_length", block_size)
    train_cfg = TrainConfig(
        data=cfg.data, out_dir=str(Path(cfg.out) / kind), model=model, model_args=args,
        objective="bptt_lm" if lstm else "causal_lm", block_size=block_size,
        batch_size=batch_size, max_steps=steps, lr=cfg.lstm_lr if lstm else cfg.gpt_lr,
        warmup_steps=min(100, steps // 10), eval_interval=0, eval_batches=10,
        log_interval=max(steps // 5, 1), precision=cfg.precision, device=cfg.device,
        threads=cfg.threads, seed=cfg.seed, progress=False, tensorboard=False)
    trainer = Trainer(train_cfg, overwrite=True)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    trained = from_pretrained(Path(cfg.out) / kind / "model", device=trainer.device)
    if lstm:
        total, tokens = score_model(trained, ids, eos_id)
        context = "all tokens before it (carried state)"
    else:
        stride = cfg.gpt_stride or max(block_size // 2, 1)
        total, tokens = score_model(trained, ids, eos_id, window=block_size, stride=stride)
        context = f"sliding window of {block_size}, stride {stride}"
    row = {"name": f"{model} ({'LSTM' if lstm else 'Transformer'})", "kind": kind,
           "params": trained.num_parameters(), "train_seconds": seconds, "steps": steps,
           "train_tokens": trainer.tokens_seen, "val_logprob": total, "val_tokens": tokens,
           "val_ppl": math.exp(-total / tokens), "context": context}
    log(f"{row['name']}: val ppl {row['val_ppl']:.2f} ({seconds:.1f} s, {steps} steps)")
    return row


def compare(cfg: CompareConfig, overwrite: bool = False, log=print) -> dict:
    """Fit, train and score every model of ``cfg``; write compare.json and compare.png into
    ``cfg.out`` and return the result (``rows`` plus what was scored)."""
    cfg.validate()
    ids, eos_id = _val_ids(cfg.data)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _ngram_rows(cfg, log)
    for kind, steps in (("lstm", cfg.lstm_steps), ("gpt", cfg.gpt_steps)):
        if steps:
            rows.append(_neural_row(cfg, kind, ids, eos_id, log))
    # Every model must have predicted the same tokens, or the perplexities are not comparable.
    assert len({r["val_tokens"] for r in rows}) == 1, [r["val_tokens"] for r in rows]
    docs = int(np.count_nonzero(ids == eos_id))
    result = {"data": cfg.data, "val_tokens": len(ids), "val_documents": docs,
              "scored": (f"all {len(ids):,} tokens of the val split ({docs:,} documents, each "
                         "ending in an EOS token that is predicted too); perplexity = "
                         "exp(-mean natural-log probability per token)"),
              "rows": rows, "config": dataclasses.asdict(cfg)}
    atomic_write_text(out / RESULT_JSON, json.dumps(result, indent=2) + "\n")
    plot_compare(result, out / RESULT_PNG)
    return result


def format_table(result: dict) -> str:
    """The comparison as a Markdown table under a line saying what was scored."""
    lines = [f"Validation perplexity on {result['data']}: {result['scored']}.", "",
             "| model | context used | parameters | training time | steps | val perplexity |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        steps = "-" if r["steps"] is None else f"{r['steps']:,}"
        lines.append(f"| {r['name']} | {r['context']} | {_count(r['params'])} | "
                      f"{r['train_seconds']:.1f} s | {steps} | {r['val_ppl']:.2f} |")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


COLORS = {"ngram": "tab:gray", "lstm": "tab:blue", "gpt": "tab:orange"}


def plot_compare(result: dict, path: str | Path) -> Path:
    """Bar chart of validation perplexity per model (log scale), each bar labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5), dpi=120)
    x = np.arange(len(rows))
    ppl = [r["val_ppl"] for r in rows]
    bars = ax.bar(x, ppl, color=[COLORS.get(r["kind"], "tab:green") for r in rows])
    ax.bar_label(bars, labels=[f"{p:.1f}" for p in ppl], padding=2, fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks(x, [r["name"].replace(" (", "\n(") for r in rows], fontsize=8)
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(f"{result['data']}: {result['val_tokens']:,} val tokens, all scored",
                 fontsize=10)
    # Bars start at the power of ten below the best model, not at an arbitrary axis limit.
    ax.set_ylim(10 ** math.floor(math.log10(min(ppl))), max(ppl) * 1.6)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

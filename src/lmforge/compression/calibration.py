"""Calibration data for compression: a few hundred token windows (or task examples) that are run
through a model to see its activations (Wanda, activation importance) or to take gradients of a
loss (Taylor importance). Built from a text file, a prepared dataset, a task file or texts, with
the model's own tokenizer.

    calib = calibration_data(model, tokenizer, "corpus.txt", sequences=128, length=256)
    for batch in calib.batches: calib.forward(model, batch)      # activations
    calib.loss(model, batch).backward()                           # gradients (needs calib.objective)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..objectives.base import Objective, get_objective

TASK_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".conll", ".txt")


@dataclasses.dataclass
class Calibration:
    """Ready batches and, when there is one, the objective whose loss they feed (causal LM for a
    decoder, masked LM for an encoder with its MLM head, the task's loss for a fine-tuned task
    model). ``objective=None``: only activations can be collected (no loss to differentiate)."""

    batches: list[dict[str, torch.Tensor]]
    objective: Objective | None
    tokens: int  # real tokens over all batches
    source: str = ""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.objective is None:
            raise ConfigError("this calibration data has no loss (an encoder without its MLM "
                              "head, or plain token windows); use importance='activation'")
        return self.objective.loss(model, batch)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        """Run ``model`` on ``batch`` (for hooks to see every layer's inputs)."""
        if self.objective is not None:
            self.objective.loss(model, batch)
        elif "attention_mask" in batch:
            model(batch["input_ids"], batch["attention_mask"])
        else:
            model(batch["input_ids"])

    def on(self, device: torch.device) -> list[dict[str, torch.Tensor]]:
        return [{k: v.to(device) for k, v in b.items()} for b in self.batches]


def _is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _text_stream(tokenizer, path: Path, needed: int, encoding: str) -> np.ndarray:
    """Token ids of the start of a text file, encoded a block of lines at a time until
    ``needed`` tokens are there (a large corpus is not read whole)."""
    ids: list[int] = []
    block: list[str] = []
    with open(path, encoding=encoding, errors="replace") as f:
        for line in f:
            block.append(line)
            if len(block) >= 256:
                ids.extend(tokenizer.encode("".join(block), add_special_tokens=False).ids)
                block = []
                if len(ids) >= needed:
                    break
        if block and len(ids) < needed:
            ids.extend(tokenizer.encode("".join(block), add_special_tokens=False).ids)
    return np.asarray(ids, dtype=np.int64)


def _windows(stream: np.ndarray, count: int, length: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens at random starts (fixed by ``seed``), as Wanda
    draws its calibration segments; they overlap only when the stream is short."""
    if len(stream) < length:
        raise DataError(f"calibration text has {len(stream)} tokens, fewer than one window of "
                        f"{length}; give more text or a smaller length")
    rng = np.random.default_rng(seed)
    slots = len(stream) - length + 1
    if slots >= count * length:  # room for disjoint windows: pick from a grid
        starts = rng.choice(len(stream) // length, size=count, replace=False) * length
    else:
        starts = rng.integers(0, slots, size=count)
    return torch.from_numpy(np.stack([stream[s:s + length] for s in sorted(starts)]))


def _lm_objective(model, tokenizer) -> Objective | None:
    body = getattr(model, "backbone", model)
    if body.is_decoder:
        return get_objective("causal_lm", tokenizer=tokenizer)
    if body.is_encoder and body.has_mlm_head() and tokenizer is not None:
        return get_objective("mlm", tokenizer=tokenizer, seed=0)
    return None


def calibration_data(model: torch.nn.Module, tokenizer, source: str | Path | Sequence[str] | torch.Tensor,
                     *, sequences: int = 128, length: int = 256, batch_size: int = 8,
                     seed: int = 0, encoding: str = "utf-8") -> Calibration:
    """Calibration batches for ``model`` from ``source``:

    - a fine-tuned task model (with a head): a task file its task reads (``.tsv``, GLUE folder,
      ``.jsonl``, ...); ``sequences`` examples are drawn (fixed seed) and the task's loss is the
      objective;
    - otherwise a text file, a list of texts or a prepared dataset folder (``lmforge prepare``):
      ``sequences`` windows of ``length`` tokens at random starts, or a (N, L) tensor of token
      ids used as is; the objective is the causal LM loss (decoders) or masked LM (encoders
      with an MLM head), else none (activations only).
    """
    if sequences <= 0 or length <= 1 or batch_size <= 0:
        raise ConfigError("calibration needs sequences > 0, length > 1 and batch_size > 0, got "
                          f"{sequences}, {length}, {batch_size}")
    if getattr(model, "spec", None) is not None:
        return _task_calibration(model, tokenizer, source, sequences, batch_size, seed, encoding)
    body = getattr(model, "backbone", model)
    length = min(length, body.config.context_length)
    objective = _lm_objective(model, tokenizer)
    window = objective.window_length(length) if objective is not None else length
    if isinstance(source, torch.Tensor):
        windows = source.long()
        window = windows.shape[1]
    elif isinstance(source, (str, Path)) and _is_prepared(Path(source)):
        from ..data.dataset import TokenShards
        data = TokenShards(source, "train")
        windows = _windows(data.read(0, min(len(data), max(sequences * window * 4, window))),
                           sequences, window, seed)
    else:
        if tokenizer is None:
            raise ConfigError("calibration from text needs the model's tokenizer")
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise DataError(f"calibration data not found: {path}")
            stream = _text_stream(tokenizer, path, sequences * window * 4, encoding)
        else:
            stream = np.asarray([i for t in source for i in
                                 tokenizer.encode(t, add_special_tokens=False).ids], dtype=np.int64)
        windows = _windows(stream, sequences, window, seed)
    if int(windows.max()) >= body.config.vocab_size:
        raise DataError(f"calibration ids reach {int(windows.max())} but the model has "
                        f"{body.config.vocab_size} embeddings: not the model's tokenizer")
    if objective is None:
        batches = [{"input_ids": w} for w in windows.split(batch_size)]
    elif hasattr(objective, "generator"):  # masked LM: masks drawn with a fixed seed
        with objective.fixed_generator(seed):
            batches = [objective.make_batch(w) for w in windows.split(batch_size)]
    else:
        batches = [objective.make_batch(w) for w in windows.split(batch_size)]
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    return Calibration(batches, objective, tokens, str(source) if isinstance(source, (str, Path)) else "")


def _task_calibration(model, tokenizer, source, sequences: int, batch_size: int, seed: int,
                      encoding: str) -> Calibration:
    from ..tasks.finetune import subsample
    from ..tasks.inference import task_objective
    if not isinstance(source, (str, Path)) or not Path(source).exists():
        raise DataError(f"calibration for a fine-tuned {model.spec.task} model needs a labeled "
                        f"task file, got {source!r}")
    objective = task_objective(model, tokenizer, encoding=encoding)
    rows = objective.read(str(source))
    if len(rows) > sequences:
        rows = subsample(rows, sequences) if seed == 0 else \
            [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:sequences])]
    features = objective.featurize(rows, training=False)
    if not features:
        raise DataError(f"{source}: no usable calibration examples")
    batches = objective.eval_batches(features, 0, batch_size, 0)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return Calibration(batches, objective, tokens, str(source))

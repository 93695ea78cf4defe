"""What `lmforge compress` measures for every variant: size on disk, parameters, speed and
quality, each the same way for the original and its compressed copies so that the table compares
like with like.

Speed: a decoder's prefill (one prompt of ``prompt_tokens``) and batch-1 greedy decode in
tokens/s; an encoder's examples/s over the evaluation data. Quality: a decoder's perplexity on
the first ``eval_tokens`` tokens of a text file; a fine-tuned task model's metric on a labeled
file; a plain encoder's mean cosine similarity to the original's sentence embeddings.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, DataError
from ..evaluation.embeddings import embed
from ..evaluation.scoring import token_logprobs
from ..generation.sampling import generate
from ..runtime import autocast, resolve_precision
from ..tasks.inference import objective_for
from ..tokenization.info import encode, eos_token_id
from . import prune_report

PPL_WINDOW = 1024  # tokens per scoring window (stride half of it), below every model's context


def kind_of(model: torch.nn.Module) -> str:
    """"task" (a fine-tuned task head), "lm" (a decoder LM) or "encoder" (a plain encoder)."""
    if getattr(model, "spec", None) is not None:
        return "task"
    if getattr(model, "is_encoder", False):
        return "encoder"
    if getattr(model, "recurrent", False) or getattr(model.config, "arch", "") != "decoder":
        raise ConfigError("compress takes a decoder language model, an encoder or a fine-tuned "
                          f"task model, not a {model.config.arch} model")
    return "lm"


def weights_bytes(folder: str | Path) -> int:
    """Bytes of the weight files (safetensors, GGUF) of a saved model folder."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size
    if (folder / "model").is_dir() and not (folder / "config.json").is_file():
        folder = folder / "model"
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.suffix in (".safetensors", ".gguf", ".bin"))


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """{"parameters": weights the model computes with (a quantized layer counts its logical
    in x out matrix), "nonzero": those that are not zero (pruned weights are)}."""
    total, nonzero = prune_report.count_parameters(model)
    return {"parameters": total, "nonzero": nonzero}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocation, kernel selection, precision timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class EvalData:
    """The evaluation data of one compress run, read and tokenized once for every variant."""

    def __init__(self, kind: str, path: str | Path, model: torch.nn.Module, tokenizer,
                 eval_tokens: int, max_examples: int | None = None):
        self.kind, self.path = kind, Path(path)
        if not self.path.is_file():
            raise DataError(f"evaluation data not found: {self.path}")
        if kind == "lm":
            text = self.path.read_text(encoding="utf-8", errors="replace")
            ids = encode(tokenizer, text)
            if len(ids) < 64:
                raise DataError(f"{self.path}: {len(ids)} tokens; need at least 64 to measure "
                                "perplexity")
            context = eos_token_id(tokenizer)
            self.ids = ([context] if context is not None else []) + ids[:eval_tokens]
            self.tokens = len(self.ids) - 1
        elif kind == "task":
            objective = objective_for(model, tokenizer)
            rows = objective.read(str(self.path))
            if max_examples:
                rows = rows[:max_examples]
            features = objective.featurize(rows, training=False)
            if not features:
                raise DataError(f"{self.path}: no examples to evaluate")
            self.examples, self.features, self.objective = len(rows), features, objective
        else:
            lines = [ln.strip() for ln in self.path.read_text(encoding="utf-8").splitlines()]
            self.sentences = [ln for ln in lines if ln][: max_examples or 512]
            if not self.sentences:
                raise DataError(f"{self.path}: no sentences to embed")
            self.examples = len(self.sentences)
            self.reference = None  # the original model's embeddings, set by the first variant


def measure_lm(model: torch.nn.Module, data: EvalData, *, prompt_tokens: int = 512,
               new_tokens: int = 64, repeats: int = 3, precision: str = "fp32") -> dict:
    """Perplexity, prefill tokens/s (one prompt of ``prompt_tokens``) and batch-1 greedy decode
    tokens/s (``new_tokens`` after a 16-token prompt) of a decoder."""
    device = next(model.parameters()).device
    window = min(PPL_WINDOW, model.config.context_length)
    logprobs = token_logprobs(model, data.ids, max_length=window, precision=precision)
    ppl = math.exp(-logprobs.mean().item())
    prompt = torch.tensor(data.ids[:min(prompt_tokens, len(data.ids), model.config.context_length)],
                          device=device)[None]
    mode = resolve_precision(precision, device)

    def prefill():
        with torch.inference_mode(), autocast(device, mode):
            model(prompt)

    prefill_s = _median_seconds(prefill, repeats)
    short = [data.ids[:16]]

    def decode():
        out = generate(model, short, new_tokens, greedy=True, precision=precision)
        return len(out[0].tokens)

    decode_s = _median_seconds(decode, repeats)
    produced = decode()
    return {"perplexity": ppl, "eval_tokens": data.tokens,
            "prefill_tok_s": prompt.shape[1] / prefill_s,
            "decode_tok_s": produced / decode_s if produced else 0.0}


def measure_task(model: torch.nn.Module, data: EvalData, *, batch_size: int = 32,
                 repeats: int = 1, precision: str = "fp32") -> dict:
    """The task's metrics and examples/s over the evaluation file."""
    device = next(model.parameters()).device
    mode = resolve_precision(precision, device)
    objective = data.objective
    batches = objective.eval_batches(data.features, 0, batch_size, 0)
    metrics: dict = {}

    def run():
        metrics.update(objective.evaluate(model, batches, device, lambda: autocast(device, mode)))

    seconds = _median_seconds(run, repeats)
    out = {k.removeprefix("val_"): v for k, v in metrics.items()}
    return {**out, "examples": data.examples, "examples_s": data.examples / seconds,
            "metric": objective.default_metric.removeprefix("val_")}


def measure_encoder(model: torch.nn.Module, tokenizer, data: EvalData, *, batch_size: int = 32,
                    repeats: int = 1, precision: str = "fp32") -> dict:
    """Mean cosine similarity of the sentence embeddings to the original's (1.0 for the
    original itself) and sentences/s."""
    vectors: list = []

    def run():
        vectors[:] = [embed(model, tokenizer, data.sentences, normalize=True,
                            batch_size=batch_size, precision=precision)]

    seconds = _median_seconds(run, repeats)
    got = torch.from_numpy(vectors[0])
    if data.reference is None:
        data.reference = got
    cosine = (got * data.reference).sum(-1).mean().item()
    return {"cosine": cosine, "examples": data.examples, "examples_s": data.examples / seconds}

"""The Python API of lmforge's commands: each function does what the `lmforge` command of the
same name does, with the same defaults, and returns Python objects instead of printing.

    import lmforge
    run = lmforge.finetune("runs/gpt", "train.tsv", out_dir="runs/sst2", val_data="dev.tsv")
    lmforge.predict("runs/sst2", ["a gripping film", "a dull film"])  # [{"text", "label", ...}]
    lmforge.evaluate("runs/sst2", "dev.tsv")["accuracy"]
    lmforge.embed("all-MiniLM-L6-v2/", ["a sentence", "another"])      # (2, 384) float32
    lmforge.convert("runs/gpt", "out/gpt.gguf")
    lmforge.plan("gpt2", gpus=8, tokens=10e9)["parallel"]

A ``model`` argument is a path (lmforge or Hugging Face model folder, training run folder, .gguf
file) or an already loaded model, which then needs ``tokenizer=``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from .errors import ConfigError, DataError
from .interop.model_folder import save_pretrained
from .runtime import INFERENCE_PRECISION

__all__ = ["compress", "convert", "distill", "embed", "evaluate", "finetune", "plan", "predict",
           "save_pretrained", "scale_fit", "scale_plan", "scale_predict", "scale_run", "scale_search"]

# Precision of the scoring and analysis functions, their commands' --precision default: fp32 makes
# scores equal to fp32 transformers'; "auto" (bf16 autocast where fast) for speed. Generation
# defaults to runtime.GENERATION_PRECISION ("auto": weights cast once to the faster dtype).
PRECISION = INFERENCE_PRECISION
CONVERT_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def load(model: str | Path | torch.nn.Module, tokenizer: str | Path | Tokenizer | None = None,
         device: str = "auto", need_tokenizer: bool = True
         ) -> tuple[torch.nn.Module, Tokenizer | None, dict, Path | None]:
    """(model in eval mode, tokenizer, tokenizer_config, path it came from or None): ``model``
    loaded from its path onto ``device`` (a loaded model moves only when ``device`` is named),
    with ``tokenizer`` (a path or object) or the one saved beside the model."""
    from .hub import load_model
    from .tokenization import load_tokenizer
    from .runtime import resolve_device
    tok_cfg: dict = {}
    if isinstance(model, torch.nn.Module):
        path, found = None, None
        if device != "auto":
            model = model.to(resolve_device(device))
    elif isinstance(model, (str, Path)):
        path = Path(model)
        model, found, tok_cfg = load_model(path, device=resolve_device(device))
    else:
        raise ConfigError(f"model must be a path or a loaded model, got {type(model).__name__}")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if tokenizer is None:
        tokenizer = found
    if tokenizer is None and need_tokenizer:
        where = f"with the model in {path}" if path is not None else "for a loaded model"
        raise ConfigError(f"no tokenizer {where}: pass tokenizer=PATH_OR_TOKENIZER")
    return model.eval(), tokenizer, tok_cfg, path


def _task(model, tokenizer, device: str, precision: str, task: str | None, **options):
    """(model, task objective, device, autocast factory), as `predict` and `evaluate` set up."""
    from .tasks.inference import task_objective
    from .runtime import autocast, resolve_precision
    model, tokenizer, tok_cfg, path = load(model, tokenizer, device)
    objective = task_objective(model, tokenizer, tok_cfg, path, task, **options)
    where = next(model.parameters()).device
    precision = resolve_precision(precision, where)
    return model, objective, where, lambda: autocast(where, precision)


def predict(model: str | Path | torch.nn.Module, data: str | Path | Sequence,
            *, tokenizer: str | Path | Tokenizer | None = None, task: str | None = None,
            batch_size: int = 32, device: str = "auto", precision: str = PRECISION,
            task_args: dict | str | None = None, max_new_tokens: int | None = None,
            num_beams: int | None = None, text_column: str | None = None,
            text_pair_column: str | None = None, encoding: str = "utf-8") -> list[dict]:
    """Run a fine-tuned model over ``data`` (as `lmforge predict`): a file in its task's format,
    or a list of examples (texts, (text, pair) tuples, or dicts such as QA's
    ``{"question", "context"}``). One dict per example: its text / id and the prediction (label
    and probabilities, a score, entities with character offsets, an answer span, a generation).
    ``task`` / ``task_args`` / ``max_new_tokens`` / ``num_beams`` are for head-less generative
    models (seq2seq, sft); by default what their fine-tuning run recorded."""
    from .tasks.inference import examples_file, predict_file
    model, objective, where, ctx = _task(
        model, tokenizer, device, precision, task, task_args=task_args,
        max_new_tokens=max_new_tokens, num_beams=num_beams, text_column=text_column,
        text_pair_column=text_pair_column, encoding=encoding)
    if isinstance(data, (str, Path)):
        return predict_file(model, objective, data, batch_size, where, ctx)
    with tempfile.TemporaryDirectory(prefix="lmforge-predict-") as tmp:
        return predict_file(model, objective, examples_file(data, tmp), batch_size, where, ctx)


def evaluate(model: str | Path | torch.nn.Module, data: str | Path, *,
             tokenizer: str | Path | Tokenizer | None = None, task: str | None = None,
             batch_size: int = 32, device: str = "auto", precision: str = PRECISION,
             task_args: dict | str | None = None, max_new_tokens: int | None = None,
             num_beams: int | None = None, text_column: str | None = None,
             text_pair_column: str | None = None, label_column: str | None = None,
             encoding: str = "utf-8") -> dict:
    """A fine-tuned model's metrics on the labeled file ``data`` (as `lmforge evaluate`):
    ``{"data", "examples", metric: value, ...}``, the JSON that `evaluate --output` writes."""
    from .tasks.inference import evaluate_file
    model, objective, where, ctx = _task(
        model, tokenizer, device, precision, task, task_args=task_args,
        max_new_tokens=max_new_tokens, num_beams=num_beams, text_column=text_column,
        text_pair_column=text_pair_column, label_column=label_column, encoding=encoding)
    report = evaluate_file(model, objective, data, batch_size, where, ctx)
    report.pop("windows")
    return report


def embed(model: str | Path | torch.nn.Module, texts: str | Sequence[str], *,
          tokenizer: str | Path | Tokenizer | None = None, pooling: str = "mean",
          normalize: bool = False, batch_size: int = 32, max_length: int | None = None,
          device: str = "auto", precision: str = "fp32") -> np.ndarray:
    """Sentence embeddings (as `lmforge embed`): float32 array (N, d) whose rows follow
    ``texts``, or (d,) for one str. Poolings: mean, cls, pooler (see
    :mod:`lmforge.evaluation.embeddings`)."""
    from .evaluation.embeddings import embed as embed_texts
    one = isinstance(texts, str)
    sentences = [texts] if one else list(texts)
    if not sentences:
        raise DataError("no sentences to embed: the input is empty")
    model, tokenizer, _, _ = load(model, tokenizer, device)
    vectors = embed_texts(model, tokenizer, sentences, pooling=pooling, normalize=normalize,
                          batch_size=batch_size, max_length=max_length, precision=precision)
    return vectors[0] if one else vectors


def convert(src: str | Path, out: str | Path, *, to: str | None = None, dtype: str | None = None,
            architecture: str | None = None, overwrite: bool = False) -> Path:
    """Convert a model between formats (as `lmforge convert`): ``to`` is "lmforge", "hf" or
    "gguf" (default: gguf when ``out`` ends in .gguf, else hf for an lmforge source and lmforge
    for a Hugging Face folder or .gguf); ``dtype`` f32 (default; gguf: f16), f16, bf16, q8_0,
    q4_0 (gguf only); ``architecture`` the Hugging Face class recorded for an encoder. Returns ``out``."""
    return convert_model(src, out, to=to, dtype=dtype, architecture=architecture,
                         overwrite=overwrite)[0]


def convert_model(src: str | Path, out: str | Path, *, to: str | None = None,
                  dtype: str | None = None, architecture: str | None = None,
                  overwrite: bool = False) -> tuple[Path, str, torch.nn.Module]:
    """:func:`convert`, returning (out, the format written, the model converted)."""
    from .interop.hf import export_hf, is_hf_folder
    from .hub import load_model
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError(f"model not found: {src}")
    to = to or ("gguf" if out.suffix == ".gguf" else
                "lmforge" if src.suffix == ".gguf" or is_hf_folder(src) else "hf")
    if to not in ("lmforge", "hf", "gguf"):
        raise ConfigError(f"to must be lmforge, hf or gguf, got {to!r}")
    if dtype is not None and dtype not in CONVERT_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(CONVERT_DTYPES)}, got {dtype!r}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if dtype in ("q8_0", "q4_0") and to != "gguf":
        raise ConfigError(f"--dtype {dtype} is for --to gguf only")
    if architecture and to != "hf":
        raise ConfigError("--architecture is for --to hf only")
    model, tokenizer, tok_cfg = load_model(src)
    if to == "gguf":
        from .interop.gguf import write_gguf
        if tokenizer is None:
            raise DataError(f"no tokenizer found with {src}; GGUF files embed one")
        write_gguf(model, tokenizer, out, dtype=dtype or "f16", tokenizer_config=tok_cfg)
        return out, to, model
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype or "f32"]
    if to == "hf":
        export_hf(model, tokenizer, out, tokenizer_config=tok_cfg, architecture=architecture,
                  dtype=torch_dtype)
    else:
        save_pretrained(model.to(torch_dtype), out, tokenizer, tokenizer_config=tok_cfg)
    return out, to, model


def compress(model: str | Path, methods: str | Sequence[str] = "int8,int4", *,
             out: str | Path = "runs/compress", eval_data: str | Path | None = None,
             overwrite: bool = False, device: str = "auto", precision: str = PRECISION,
             **options) -> dict:
    """Compressed variants of ``model`` (a path) measured side by side (as `lmforge compress`):
    ``methods`` such as "int8,int4,wanda50,heads25,wanda50+int8,model:runs/student";
    ``options`` are :class:`~lmforge.compression.report.CompressOptions` fields (calibration,
    eval_tokens, group_size, ...). Returns the report: ``{"rows": [{"name", "size_mb",
    "parameters", "metrics", "pareto", "folder", ...}], ...}``; writes OUT/report.md,
    OUT/report.json, OUT/pareto.png and OUT/variants/NAME/."""
    from .compression.report import compress as run
    if not isinstance(methods, str):
        methods = ",".join(methods)
    return run(model, {"methods": methods, "eval_data": None if eval_data is None else str(eval_data),
                       "device": device, "precision": precision, **options},
               out=out, overwrite=overwrite, log_fn=lambda _: None)


def plan(model: str = "gpt2", **fields) -> dict:
    """Parameters, FLOPs per token, memory per GPU (DDP vs FSDP), whether it fits and the time
    to the token budget (as `lmforge plan --json`). ``fields`` are PlanConfig's (gpus,
    gpu_memory, global_batch, seq_len, tokens, mfu, precision, ...) and ``model_args`` the
    architecture overrides (e.g. ``{"n_layer": 48}``)."""
    from .config import from_dict
    from .training.plan import PlanConfig, make_plan
    return make_plan(from_dict(PlanConfig, {"model": model, **fields}, where="lmforge.plan"))


def scale_plan(data: str | Path, out: str | Path | None = None, *, overwrite: bool = False,
               **options) -> dict:
    """`lmforge scale plan`: the isoFLOP grid (levels, runs, estimated seconds), saved as
    OUT/plan.json when ``out`` is given. ``options`` are ScalePlanOptions' (compute, budget or
    time; model, vary, sizes, lr, ...) with the flags' defaults."""
    from .config import from_dict
    from .scaling.grid import ScalePlanOptions
    from .scaling.report import plan_sweep
    opts = from_dict(ScalePlanOptions, {**options, "data": str(data)}, where="lmforge.scale_plan")
    return plan_sweep(opts, out, overwrite=overwrite)


def scale_run(folder: str | Path, *, max_runs: int | None = None, device: str = "auto",
              progress: bool = False) -> dict:
    """`lmforge scale run`: train the plan's unfinished runs (resumable); returns the trained
    rows, counts and the results table's path."""
    from .scaling.sweep import run_sweep
    return run_sweep(folder, max_runs=max_runs, device=device, progress=progress)


def scale_fit(source: str | Path, *, out: str | Path | None = None, params: str = "total",
              bootstrap: int = 200, seed: int = 0) -> dict:
    """`lmforge scale fit`: Chinchilla approaches 2 and 3 and Kaplan's form with bootstrap
    intervals, of a sweep folder or a CSV/JSONL table (columns N, D or C, loss); the dict that
    `--json` prints (E, A, B, alpha, beta, intervals, approach2, kaplan, ...)."""
    from .scaling.report import fit_sweep
    return fit_sweep(source, out=out, params=params, bootstrap=bootstrap, seed=seed)


def scale_predict(source: str | Path, *, compute: str | float | None = None,
                  n_params: float | None = None, tokens: float | None = None, params: str = "total",
                  out: str | Path | None = None, overwrite: bool = False) -> dict:
    """`lmforge scale predict`: loss and compute-optimal N*, D* (with intervals) at ``compute``
    (FLOPs or "4x"), or the loss at ``n_params`` and ``tokens``; ``out`` writes the predicted
    run as a one-run plan for :func:`scale_run`."""
    from .scaling.report import predict_sweep
    return predict_sweep(source, compute=compute, N=n_params, D=tokens, params=params, out=out,
                         overwrite=overwrite)


def scale_search(data: str | Path, out: str | Path, *, max_runs: int | None = None,
                 device: str = "auto", **options) -> dict:
    """`lmforge scale search`: successive halving over depth, width, heads, MLP ratio and LR
    under a parameter, FLOP or latency limit; writes OUT/search.csv and OUT/best.yaml."""
    from .scaling.search import scale_search as search
    return search(str(data), str(out), max_runs=max_runs, device=device, **options)


def finetune(model: str | Path | torch.nn.Module | None, data: str | Path | None, *, out_dir: str | Path = "runs/finetune",
             task: str = "classification", val_data: str | Path = "",
             tokenizer: str | Path | Tokenizer | None = None, seeds: Sequence[int] | None = None,
             overwrite: bool = False, resume: bool = False, **fields) -> dict:
    """Fine-tune ``model`` on ``data`` (as `lmforge finetune`): the best model goes to
    OUT_DIR/model, metrics to OUT_DIR/eval.json. ``fields`` are FinetuneConfig's (epochs,
    max_steps, lr, batch_size, block_size, lora_r, ...) with the command's defaults. Returns the
    final metrics (``val_*``, ``step``, ``best_step``, ...) with ``out_dir``; with ``seeds``, one
    run per seed under OUT_DIR/seed-N and their mean and std. ``resume`` continues the run in
    ``out_dir`` from its last checkpoint (with its recorded config, ``fields`` on top; ``model``
    and ``data`` may then be None)."""
    from .config import from_dict
    from .tasks.finetune import FinetuneConfig, finetune as run_finetune, resume_config
    if not resume and (model is None or data is None):
        raise ConfigError("finetune needs a model and a training data file (None only with resume=True)")
    data_fields = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    with tempfile.TemporaryDirectory(prefix="lmforge-finetune-") as tmp:
        if isinstance(model, torch.nn.Module):  # the trainer reads a folder: save it there
            loaded, tok, _, _ = load(model, tokenizer)
            model = save_pretrained(loaded, Path(tmp) / "model", tok)
            tokenizer = None
        if isinstance(tokenizer, Tokenizer):
            from .tokenization import save_tokenizer
            tokenizer = save_tokenizer(tokenizer, Path(tmp) / "tokenizer")
        if resume:
            result = run_finetune(resume_config(out_dir, data_fields), resume=True)
        else:
            given = {"model": str(model), "data": str(data), "out_dir": str(out_dir), "task": task,
                     "val_data": str(val_data), **data_fields}
            if tokenizer is not None:
                given["tokenizer"] = str(tokenizer)
            cfg = from_dict(FinetuneConfig, given, where="lmforge.finetune")
            result = run_finetune(cfg, list(seeds) if seeds else None, overwrite=overwrite)
    return {**result, "out_dir": str(out_dir)}


def distill(teacher: str | Path, student: str = "keep:2", data: str | Path | None = None, *,
            out_dir: str | Path = "runs/distill", val_data: str | Path = "",
            task: str = "classification", temperature: float = 2.0, alpha: float = 0.5,
            hidden_weight: float = 0.0, attention_weight: float = 0.0,
            overwrite: bool = False, resume: bool = False, **fields) -> dict:
    """Distil ``teacher`` into ``student`` on ``data`` (as `lmforge distill`): a labeled task
    file with a fine-tuned teacher (task distillation) or a prepared dataset with a language
    model or encoder teacher. ``student`` is ``keep:K``, ``layers:0,2,4``, a preset or a model
    folder. ``fields`` are DistillConfig's (epochs, max_steps, lr, batch_size, block_size,
    relation_heads, from_scratch, ...). The student goes to OUT_DIR/model, its report to
    OUT_DIR/distill.json; returns the final metrics (``val_*``, ``step``, ...) with
    ``out_dir``. ``resume`` continues the run in ``out_dir`` (``data`` may then be None)."""
    from .compression.distill import DistillConfig, distill as run_distill, resume_config
    from .config import from_dict
    clean = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    if resume:
        result = run_distill(resume_config(out_dir, clean), resume=True)
        return {**result, "out_dir": str(out_dir)}
    if data is None:
        raise ConfigError("distill needs training data (None only with resume=True)")
    given = {"teacher": str(teacher), "student": str(student), "data": str(data),
             "out_dir": str(out_dir), "val_data": str(val_data), "task": task,
             "temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight,
             "attention_weight": attention_weight, **clean}
    cfg = from_dict(DistillConfig, given, where="lmforge.distill")
    result = run_distill(cfg, overwrite=overwrite)
    return {**result, "out_dir": str(out_dir)}

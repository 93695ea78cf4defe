"""Using fine-tuned models: the task objective that reads, batches and scores data for a
trained task model (for `lmforge predict` and `lmforge evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_file
from ..errors import ConfigError
from .base import TaskObjective, get_task


def objective_for(model, tokenizer, task: str | None = None, max_length: int | None = None,
                  **options) -> TaskObjective:
    """The objective of ``model``'s task head (or of ``task`` for head-less generative tasks),
    with the label set and limits recorded at training time."""
    spec = getattr(model, "spec", None)
    if spec is None and task is None:
        raise ConfigError("this model has no task head (it was not fine-tuned with lmforge "
                          "finetune); for text generation use `lmforge generate`, or pass --task "
                          "seq2seq / sft for a fine-tuned generative model")
    name = task or spec.task
    cls = get_task(name)
    if spec is not None and cls.head != spec.task:
        raise ConfigError(f"this model has a {spec.task} head, not one for task '{name}'")
    extra = dict(spec.extra) if spec is not None else {}
    length = max_length or extra.pop("max_length", None) or min(512, model.config.context_length)
    extra.pop("max_length", None)
    if spec is not None and spec.labels and cls.head != "regression":
        options.setdefault("labels", spec.labels)
    for key, value in extra.items():
        options.setdefault(key, value)
    return cls(tokenizer, model.kind, length, **options)


def headless_task_options(model_path: str | None, task: str | None, tokenizer_config: dict,
                          task_args: str | dict | None = None, **flags) -> tuple[str | None, dict]:
    """(task, options) for a model without a head (seq2seq, sft): the task, task_args and
    block_size (as max_length) that its fine-tuning run recorded in RUN/config.yaml, when
    ``model_path`` is RUN or RUN/model; then the model's tokenizer_config (chat template),
    ``task_args`` (JSON) and the flags that are set (max_new_tokens, num_beams, ...)."""
    options: dict = {}
    if task is not None and get_task(task).head is not None:
        return task, options  # a head task without a head: objective_for says so
    path = Path(model_path) if model_path else None  # None: a model loaded in Python
    run_config = None if path is None else next(
        (c for c in (path / "config.yaml", path.parent / "config.yaml") if c.is_file()), None)
    if run_config is not None:
        run = load_file(run_config)
        recorded = run.get("task")
        if (isinstance(recorded, str) and task in (None, recorded)
                and get_task(recorded).head is None):
            task = recorded
            options = dict(run.get("task_args") or {})
            if run.get("block_size"):
                options["max_length"] = int(run["block_size"])
    if isinstance(task_args, str):
        try:
            task_args = json.loads(task_args)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--task-args is not valid JSON: {exc.msg}") from None
        if not isinstance(task_args, dict):
            raise ConfigError("--task-args must be a JSON object")
    options |= dict(task_args or {})
    options |= {k: v for k, v in flags.items() if v is not None}
    options["tokenizer_config"] = tokenizer_config
    return task, options


def task_objective(model, tokenizer, tokenizer_config: dict | None = None, model_path=None,
                   task: str | None = None, task_args: str | dict | None = None, *,
                   max_new_tokens: int | None = None, num_beams: int | None = None,
                   text_column: str | None = None, text_pair_column: str | None = None,
                   label_column: str | None = None, encoding: str = "utf-8") -> TaskObjective:
    """The task objective that reads, predicts and scores data for ``model``: its head's task
    (with the column options), or for a head-less generative model the task and options its
    fine-tuning run recorded (``model_path``: RUN or RUN/model), then ``task_args`` and the
    generation flags that are set."""
    options: dict = {}
    spec = getattr(model, "spec", None)
    if spec is not None and spec.task in ("classification", "regression"):
        options = dict(text_column=text_column, text_pair_column=text_pair_column,
                       label_column=label_column, encoding=encoding)
    if spec is not None and (task_args or max_new_tokens is not None or num_beams is not None):
        # Generation options of seq2seq/sft runs: a task head would ignore them silently.
        raise ConfigError(f"task_args, max_new_tokens and num_beams apply to seq2seq and sft "
                          f"models; this is a fine-tuned {spec.task} model")
    if spec is None:
        task, options = headless_task_options(str(model_path) if model_path else None, task, tokenizer_config or {},
                                              task_args, max_new_tokens=max_new_tokens,
                                              num_beams=num_beams, encoding=encoding)
    return objective_for(model, tokenizer, task, **options)


def predict_file(model, objective: TaskObjective, path: str | Path, batch_size: int, device,
                 autocast_ctx) -> list[dict]:
    """One dict per example of the file at ``path`` (labels not needed): what describes the
    example (its text, id, ...) and the prediction (label and probabilities, entities, answer...)."""
    examples = objective.read(str(path), labeled=False)
    predictions = objective.predict(model, examples, batch_size, device, autocast_ctx)
    return [{**objective.describe(e), **p} for e, p in zip(examples, predictions)]


def evaluate_file(model, objective: TaskObjective, path: str | Path, batch_size: int, device,
                  autocast_ctx) -> dict:
    """Metrics of ``model`` on the labeled file at ``path``: ``{"data", "examples", "windows",
    metric: value, ...}`` (windows: model inputs, more than examples when a QA context or a long
    NER sentence spans several)."""
    from ..errors import DataError
    if getattr(objective, "max_eval_examples", 0) is None:
        objective.max_eval_examples = 0  # sft: generate and score every response here
    rows = objective.read(str(path))
    features = objective.featurize(rows, training=False)
    if not features:
        raise DataError(f"{path}: no examples to evaluate")
    batches = objective.eval_batches(features, 0, batch_size, 0)
    metrics = objective.evaluate(model, batches, device, autocast_ctx)
    return {"data": str(path), "examples": len(rows), "windows": len(features),
            **{k.removeprefix("val_"): v for k, v in metrics.items()}}


def examples_file(items, folder: str | Path) -> Path:
    """Python examples as a JSONL file every task reads (unlabeled): a str is ``{"text": s}``
    (a sentence, a whitespace-split NER sentence, a seq2seq source or an sft prompt), a
    (text, pair) tuple ``{"text", "text_pair"}``, a dict (e.g. QA's question and context) as is."""
    from ..errors import DataError
    if isinstance(items, (str, bytes)) or not items:
        raise DataError("examples must be a non-empty list of texts, (text, pair) tuples or dicts")
    lines = []
    for item in items:
        if isinstance(item, str):
            item = {"text": item}
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            item = {"text": item[0], "text_pair": item[1]}
        elif not isinstance(item, dict):
            raise DataError(f"an example must be a str, a (text, pair) tuple or a dict, got "
                            f"{type(item).__name__}")
        lines.append(json.dumps(item, ensure_ascii=False))
    path = Path(folder) / "examples.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

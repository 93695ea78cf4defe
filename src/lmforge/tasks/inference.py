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


def headless_task_options(model_path: str, task: str | None, tokenizer_config: dict,
                          task_args: str | dict | None = None, **flags) -> tuple[str | None, dict]:
    """(task, options) for a model without a head (seq2seq, sft): the task, task_args and
    block_size (as max_length) that its fine-tuning run recorded in RUN/config.yaml, when
    ``model_path`` is RUN or RUN/model; then the model's tokenizer_config (chat template),
    ``task_args`` (JSON) and the flags that are set (max_new_tokens, num_beams, ...)."""
    options: dict = {}
    if task is not None and get_task(task).head is not None:
        return task, options  # a head task without a head: objective_for says so
    path = Path(model_path)
    run_config = next((c for c in (path / "config.yaml", path.parent / "config.yaml") if c.is_file()), None)
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

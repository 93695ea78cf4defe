"""Using fine-tuned models: the task objective that reads, batches and scores data for a
trained task model (for `lmforge predict` and `lmforge evaluate`)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import TaskObjective, get_task
from . import classification  # noqa: F401  (registers the tasks)


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
    return cls(tokenizer, model.config.arch, length, **options)

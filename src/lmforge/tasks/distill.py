"""Task-specific distillation: a student fine-tunes on a labeled task while matching a
fine-tuned teacher's predictions (DistilBERT / TinyBERT's second stage). The task objective
reads, batches and evaluates as in `lmforge finetune`; these adapters tell
:class:`~lmforge.objectives.distill.Distillation` how to read the task model's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..objectives.distill import Adapter, Distillation, DistillOptions
from .base import TaskObjective, cross_entropy


class ClassificationAdapter(Adapter):
    """Class logits (B, labels) of a sequence-classification task model."""

    def __init__(self, task: TaskObjective):
        self.task = task

    def outputs(self, model, batch):
        return self.task.forward(model, batch)

    def hard_loss(self, outputs, batch):
        weight = getattr(self.task, "weight", None)
        if weight is not None:
            weight = weight.to(outputs.device)
        return cross_entropy(outputs, batch["labels"], weight)


class RegressionAdapter(ClassificationAdapter):
    """A regression task: the soft target is the teacher's score (MSE, temperature unused)."""

    distributions = False

    def hard_loss(self, outputs, batch):
        return F.mse_loss(outputs.float(), batch["labels"])

    def soft_loss(self, student, teacher, temperature):
        return F.mse_loss(student.float(), teacher.float())


def task_distillation(task: TaskObjective, teacher: torch.nn.Module,
                      options: DistillOptions | dict | None = None) -> Distillation:
    """``task`` (classification or regression) trained with ``teacher``'s help. The logit term
    needs a teacher fine-tuned on the same labels; hidden-state and attention transfer work
    from any teacher of the same architecture family."""
    if task.head not in ("classification", "regression"):
        raise ConfigError(f"task distillation supports classification and regression, not "
                          f"'{task.name}'")
    wrapped = Distillation(task, teacher, (RegressionAdapter if task.head == "regression"
                                           else ClassificationAdapter)(task), options)
    if wrapped.options.alpha < 1:
        spec = getattr(teacher, "spec", None)
        if spec is None or spec.task != task.head:
            raise ConfigError(f"logit distillation needs a teacher fine-tuned for {task.head} "
                              "(a `lmforge finetune` run); with a base model use --alpha 1 and "
                              "--hidden-weight / --attention-weight")
        if task.head == "classification" and list(spec.labels) != list(task.labels):
            raise ConfigError(f"the teacher's labels {list(spec.labels)} differ from the task's "
                              f"{list(task.labels)}")
    return wrapped

"""Fine-tuning for NLP tasks: labeled-data readers, task objectives for the one training engine,
and the metrics each task's community reports (the task heads are :mod:`lmforge.models.task_head`).

Each task module registers itself in :data:`.base.TASKS` on import; importing them here fills
the registry before any caller (finetune, predict, evaluate) asks :func:`.base.get_task`."""

from . import classification, generative, ner, qa  # noqa: F401

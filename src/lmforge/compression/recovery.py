"""A short recovery fine-tune after pruning, through lmforge's own runs (no loop of its own): a
fine-tuned task model re-runs its task with ``lmforge finetune``'s trainer; a language model
continues its pretraining objective (causal LM, or masked LM for an encoder) on a prepared
dataset with the training engine. The pruned model is written to a model folder in the run
folder first (``OUT_DIR/pruned``), which the run starts from."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError


def recover(model: torch.nn.Module, tokenizer, data: str | Path, *, steps: int, out_dir: str | Path,
            tokenizer_config: dict | None = None, overwrite: bool = False, **options) -> tuple[torch.nn.Module, dict]:
    """Train a pruned ``model`` for ``steps`` optimizer steps and return (trained model,
    the run's result dict). ``data``: the task's training file for a fine-tuned task model
    (``val_data=`` among ``options`` for its validation file), else a prepared dataset folder.
    ``options``: further FinetuneConfig / TrainConfig fields (lr, batch_size, ...)."""
    from ..hub import load_model
    from ..interop.model_folder import save_pretrained
    if steps <= 0:
        raise ConfigError(f"recovery steps must be positive, got {steps}")
    out_dir = Path(out_dir)
    start = out_dir.parent / f"{out_dir.name}-pruned"
    save_pretrained(model, start, tokenizer, tokenizer_config)
    if getattr(model, "spec", None) is not None:
        from ..tasks.finetune import FinetuneConfig, finetune
        cfg = FinetuneConfig(model=str(start), data=str(data), task=model.spec.task,
                             out_dir=str(out_dir), max_steps=steps, **options)
        result = finetune(cfg, overwrite=overwrite)
    else:
        from ..training.config import TrainConfig
        from ..training.engine import pretrain
        objective = "causal_lm" if getattr(model, "is_decoder", False) else "mlm"
        options.setdefault("warmup_steps", max(1, steps // 10))
        cfg = TrainConfig(model=str(start), data=str(data), objective=objective,
                          out_dir=str(out_dir), max_steps=steps, **options)
        result = pretrain(cfg, overwrite=overwrite)
    trained = load_model(out_dir)[0]
    device = next(model.parameters()).device
    return trained.to(device), result

"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Decay matrices of Linear layers only; norms, biases and embeddings are not decayed
    (decaying them shrinks scales and token vectors toward zero for no regularization gain).
    The model's ``lr_scale(name, cfg)`` (task models: head learning rate, layer-wise decay)
    makes one group per scale; ``lr_scale`` rides along in the group. Sharded (tensor-parallel)
    and plain weights go to separate groups."""
    from torch.distributed.tensor import DTensor
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    groups: dict[tuple[bool, float, bool], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = p.dim() >= 2 and id(p) not in embeddings
        scale = float(model.lr_scale(name, cfg))
        # Tensor parallelism shards some weights (DTensor) and not others; fused kernels take
        # one kind per group.
        groups.setdefault((decay, scale, isinstance(p, DTensor)), []).append(p)
    return [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale, _), params in sorted(groups.items(),
                                                    key=lambda kv: (not kv[0][0], -kv[0][1], kv[0][2]))]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # The fused kernel updates all parameters in one pass (CPU and CUDA), far fewer launches.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=device.type in ("cpu", "cuda"))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the schedule,
    which reaches ``min_lr`` exactly at the last step."""
    peak = cfg.lr
    floor = cfg.min_lr if cfg.min_lr is not None else peak / 10
    total = cfg.max_steps
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, int(total * (1 - cfg.decay_fraction)))
        if step < decay_start:
            return peak
        frac = (step - decay_start) / max(1, total - 1 - decay_start)
        return peak + (floor - peak) * min(frac, 1.0)
    frac = min((step - cfg.warmup_steps) / max(1, total - 1 - cfg.warmup_steps), 1.0)
    if cfg.schedule == "linear":
        return peak + (floor - peak) * frac
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))  # cosine

"""LoRA (Hu et al. 2021): a frozen ``nn.Linear`` plus a trainable low-rank update
``(alpha / r) * B A x``, with B zero-initialized so training starts from the pretrained
function. Applied to any linear layer by name pattern; ``merge_lora`` folds the update into the
base weights (one plain Linear again, e.g. for export).

    n = apply_lora(model, ["attn.qkv", "attn.proj"], r=8, alpha=16)
    ...train...
    merge_lora(model)
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn as nn

from ..errors import ConfigError


class LoRALinear(nn.Module):
    """``base(x) + dropout(x) A^T B^T * alpha / r`` with ``base`` frozen."""

    # Sharding would split ``base`` and the low-rank factors differently; LoRA runs replicated.
    only_parallel_modes = ("ddp",)

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base, self.r, self.scaling = base, r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) init A
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (init, shapes) still works
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x) @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype)
        return self.base(x) + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight includes the low-rank update."""
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A).to(self.base.weight.dtype) * self.scaling
        self.base.weight.requires_grad_(True)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(True)
        return self.base


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or name.endswith(p) for p in patterns)


def apply_lora(model: nn.Module, targets: list[str], r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, exclude: tuple[str, ...] = ("head",)) -> int:
    """Freeze every parameter of ``model`` and wrap the Linear layers whose qualified name
    matches a pattern of ``targets`` (glob, or a name suffix such as ``attn.qkv``) in LoRA.
    Modules under ``exclude`` (the task head) stay fully trainable. Returns how many layers
    were wrapped; none is a ConfigError."""
    if r <= 0:
        raise ConfigError(f"LoRA rank must be positive, got {r}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and _matches(name, targets) and not name.startswith(exclude):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r, alpha, dropout))
            wrapped += 1
    if not wrapped:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"no linear layer matches LoRA targets {targets}; layer names end in: "
                          f"{', '.join(names)}")
    for prefix in exclude:
        if hasattr(model, prefix):
            for p in getattr(model, prefix).parameters():
                p.requires_grad_(True)
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by its merged Linear; returns how many were merged."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
            merged += 1
    return merged


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) unique parameter counts."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total

"""What a pruning pass did: per-layer rows and totals, as a dict (JSON) and a printed table."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class PruneReport:
    """The result of :func:`~lmforge.compression.unstructured.prune_unstructured` or
    :func:`~lmforge.compression.structured.prune_structured`.

    ``layers``: one dict per pruned ``nn.Linear`` (unstructured: name, shape, zeros, sparsity)
    or per block (structured: heads and FFN channels kept and removed). ``sparsity``: zero
    weights over all weights of the pruned layers (unstructured) or share of block weights
    removed (structured). ``parameters_before`` / ``parameters_after``: the model's parameters
    (unstructured pruning keeps the count and zeroes them; ``nonzero_after`` counts the rest)."""

    method: str
    target: float
    pattern: str | None
    layers: list[dict[str, Any]]
    sparsity: float
    parameters_before: int
    parameters_after: int
    nonzero_after: int
    calibration_tokens: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self, max_rows: int = 12) -> str:
        """Per-layer rows (the first ``max_rows``, then a count) and the totals."""
        if not self.layers:
            return f"{self.method}: nothing pruned"
        keys = [k for k in self.layers[0] if not k.startswith("removed_")]
        rows = [[str(_short(layer[k])) for k in keys] for layer in self.layers]
        widths = [max(len(k), *(len(r[i]) for r in rows)) for i, k in enumerate(keys)]
        lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows[:max_rows]]
        if len(rows) > max_rows:
            lines.append(f"... {len(rows) - max_rows} more layers")
        what = f"{self.method}" + (f" {self.pattern}" if self.pattern else "")
        lines.append(f"{what}: sparsity {self.sparsity:.2%} of the pruned weights; parameters "
                     f"{self.parameters_before:,} -> {self.parameters_after:,} "
                     f"({self.nonzero_after:,} nonzero); {self.seconds:.1f}s"
                     + (f", {self.calibration_tokens:,} calibration tokens" if self.calibration_tokens else ""))
        return "\n".join(lines)


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return value


def count_parameters(model) -> tuple[int, int]:
    """(weights the model computes with, nonzero among them): tied weights count once, and a
    quantized layer counts the in x out matrix its packed integers stand for."""
    from ..models.quantized import QuantizedLinear
    seen, total, nonzero = set(), 0, 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, QuantizedLinear):
            weight = module.dequantize(torch.float32)
            total, nonzero = total + weight.numel(), nonzero + int(weight.count_nonzero())
            own = [module.bias] if module.bias is not None else []
        for p in own:
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            nonzero += int(p.count_nonzero())
    return total, nonzero

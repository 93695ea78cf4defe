"""Unstructured pruning: zero a share of the weights of every linear layer in the Transformer
blocks (not the embeddings or the output head, as Han et al. 2015 and Sun et al. 2023 prune).

- ``magnitude``: the smallest |W| of each layer (one comparison over the whole layer, as the
  magnitude baseline of the Wanda paper).
- ``wanda``: the smallest |W_ij| * ||X_j||_2 of each output row i, where ||X_j||_2 is the norm
  of input feature j over the calibration tokens (Sun et al. 2023, "A Simple and Effective
  Pruning Approach for Large Language Models"). The norms are taken in one pass of the dense
  model (the paper's code prunes block by block, feeding each block the pruned blocks' outputs).
- ``pattern="2:4"`` (any ``N:M``): of every M consecutive input weights of a row, the N with
  the highest score are kept (the semi-structured sparsity of NVIDIA Ampere+ sparse tensor cores).

Weights become zeros in ordinary dense tensors: the model saves and loads as before and runs at
the dense speed. Only on CUDA can 2:4 weights run faster, through
:func:`to_semi_structured` (``torch.sparse.to_sparse_semi_structured``, fp16/bf16).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from ..errors import ConfigError
from .calibration import Calibration
from .prune_report import PruneReport, count_parameters

METHODS = ("magnitude", "wanda")


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the model's repeated blocks, by qualified name (attention
    projections and MLP matrices; embeddings, output and task heads are outside the blocks)."""
    lists = {id(m) for m in model.block_lists()}
    prefixes = [name + "." for name, m in model.named_modules() if id(m) in lists]
    if not prefixes:
        raise ConfigError(f"a {model.kind} model has no Transformer blocks to prune")
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith(tuple(prefixes))}


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): keep N of every M consecutive input weights."""
    if pattern is None:
        return None
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ConfigError(f"pattern must be N:M such as 2:4, got {pattern!r}") from None
    if not 0 < n < m:
        raise ConfigError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


@torch.no_grad()
def input_norms(model: nn.Module, linears: dict[str, nn.Linear], calibration: Calibration) -> dict[str, torch.Tensor]:
    """||X_j||_2 over the calibration tokens of each input feature j of each layer (fp32),
    collected by forward hooks on the layers' inputs."""
    squares = {name: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device)
               for name, m in linears.items()}

    def hook(name):
        def collect(module, args):
            x = args[0].detach()
            squares[name] += x.float().pow(2).flatten(0, -2).sum(0)
        return collect

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in calibration.on(device):
            calibration.forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: s.sqrt() for name, s in squares.items()}


def prune_mask(score: torch.Tensor, sparsity: float, per_row: bool,
               nm: tuple[int, int] | None) -> torch.Tensor:
    """Boolean mask of the weights to zero: exactly ``int(sparsity * n)`` lowest scores per row
    (``per_row``) or per layer, or the M - N lowest of every M consecutive inputs (``nm``)."""
    out_f, in_f = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        groups = score.reshape(out_f, in_f // m, m)
        drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
        return mask.reshape(out_f, in_f // m, m).scatter_(-1, drop, True).reshape(out_f, in_f)
    if per_row:
        k = int(in_f * sparsity)
        if k:
            mask.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, True)
        return mask
    k = int(score.numel() * sparsity)
    if k:
        mask.view(-1)[torch.topk(score.flatten(), k, largest=False).indices] = True
    return mask


@torch.no_grad()
def prune_unstructured(model: nn.Module, sparsity: float = 0.5, method: str = "magnitude",
                       pattern: str | None = None, calibration: Calibration | None = None,
                       per_row: bool | None = None) -> PruneReport:
    """Zero weights of every linear layer in ``model``'s blocks, in place; returns the report.

    ``sparsity``: share of each layer's weights zeroed, in (0, 1) (ignored with a ``pattern``,
    whose share is 1 - N/M). ``method``: ``magnitude`` or ``wanda`` (needs ``calibration``, see
    :func:`~lmforge.compression.calibration.calibration_data`). ``pattern``: ``"2:4"`` (or any
    N:M) semi-structured sparsity. ``per_row``: compare scores within each output row (default
    for wanda) rather than over the whole layer (default for magnitude).
    """
    if method not in METHODS:
        raise ConfigError(f"pruning method must be one of {', '.join(METHODS)}, got {method!r}")
    nm = parse_pattern(pattern)
    if nm is None and not (isinstance(sparsity, (int, float)) and 0 < sparsity < 1):
        raise ConfigError(f"sparsity must be in (0, 1), got {sparsity}")
    if method == "wanda" and calibration is None:
        raise ConfigError("wanda pruning needs calibration data (calibration_data(model, "
                          "tokenizer, text_file))")
    started = time.perf_counter()
    linears = block_linears(model)
    if nm is not None:
        bad = [name for name, m in linears.items() if m.in_features % nm[1]]
        if bad:
            raise ConfigError(f"pattern {pattern}: {bad[0]} has {linears[bad[0]].in_features} "
                              f"inputs, not a multiple of {nm[1]}")
        sparsity = 1 - nm[0] / nm[1]
    per_row = (method == "wanda") if per_row is None else per_row
    params_before, _ = count_parameters(model)
    norms = input_norms(model, linears, calibration) if method == "wanda" else {}
    layers, zeros_total, total = [], 0, 0
    for name, linear in linears.items():
        w = linear.weight
        score = w.detach().float().abs()
        if method == "wanda":
            score = score * norms[name][None, :]
        w.masked_fill_(prune_mask(score, sparsity, per_row, nm), 0)
        zeros = int(w.numel() - w.count_nonzero())
        layers.append({"name": name, "shape": list(w.shape), "zeros": zeros,
                       "sparsity": zeros / w.numel()})
        zeros_total, total = zeros_total + zeros, total + w.numel()
    params_after, nonzero = count_parameters(model)
    return PruneReport(method=method, target=float(sparsity), pattern=pattern, layers=layers,
                       sparsity=zeros_total / total, parameters_before=params_before,
                       parameters_after=params_after, nonzero_after=nonzero,
                       calibration_tokens=calibration.tokens if calibration is not None and method == "wanda" else 0,
                       seconds=time.perf_counter() - started,
                       details={"per_row": per_row, "layers_pruned": len(layers)})


def to_semi_structured(model: nn.Module) -> int:
    """Swap the 2:4-sparse block weights of a CUDA fp16/bf16 model for
    ``torch.sparse.to_sparse_semi_structured`` tensors (sparse tensor-core matmuls, Ampere and
    newer); returns how many layers were converted. There is no such kernel on CPU: elsewhere
    2:4 weights are ordinary dense tensors with zeros, at dense speed."""
    from torch.sparse import to_sparse_semi_structured
    linears = block_linears(model)
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError("semi-structured (2:4) sparse kernels exist only on CUDA; on "
                          f"{device.type} the pruned weights stay dense tensors with zeros")
    converted = 0
    for linear in linears.values():
        w = linear.weight
        if w.dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"2:4 sparse kernels need fp16 or bf16 weights, got {w.dtype}")
        groups = w.detach().reshape(w.shape[0], -1, 4)
        if bool(((groups != 0).sum(-1) <= 2).all()):
            linear.weight = nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
            converted += 1
    return converted

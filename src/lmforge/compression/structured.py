"""Structured pruning: remove whole attention heads and FFN channels, so the weight matrices,
the saved model and the compute all shrink.

Which ones go is decided per block by an importance score:

- ``taylor`` (default): the first-order Taylor estimate of the loss change when a head's (or a
  channel's) output is removed, |sum over its output-projection columns of grad * weight|,
  taken per calibration batch and summed over batches (Michel et al. 2019's head-mask gradient,
  Molchanov et al. 2019's Taylor criterion). The loss is the calibration data's: causal LM for a
  decoder, masked LM for an encoder with its MLM head, the task loss for a fine-tuned model.
- ``activation``: sum over the head's (channel's) output-projection columns of
  ||X_j||_2 * ||W_:j||_2 (Wanda's score per column), for models without a loss to differentiate.
- ``magnitude``: ||W_:j||_2 only (no data).

Every block loses the same number of heads and channels (each block picks its own least
important ones), so the pruned model is described by the existing ``ModelConfig`` fields
(``n_head``, ``n_kv_head``, ``intermediate_size`` shrink, ``head_dim`` stays): it saves and loads
like any model, and a Llama-family decoder still exports to Hugging Face. Per-layer counts
would need per-layer config fields that no exporter (Hugging Face, GGUF) could write.

Grouped-query attention (SmolLM2: 9 query heads sharing 3 key/value heads): ``gqa="query"``
removes the same number of query heads from every group (keys and values stay, the group size
shrinks); ``gqa="group"`` removes whole groups (their query heads and their key/value head).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from ..errors import ConfigError
from .calibration import Calibration
from .prune_report import PruneReport, count_parameters
from .unstructured import input_norms

IMPORTANCE = ("taylor", "activation", "magnitude")
GQA_MODES = ("query", "group")


def _body(model: nn.Module) -> nn.Module:
    body = getattr(model, "backbone", model)
    if body.kind not in ("decoder", "encoder"):
        raise ConfigError(f"structured pruning supports decoder and encoder models (and task "
                          f"models built on them), not a {body.kind}")
    return body


def _check_share(name: str, share: float) -> None:
    if not (isinstance(share, (int, float)) and 0 <= share < 1):
        raise ConfigError(f"{name} must be a share in [0, 1), got {share}")


def _units_removed(share: float, units: int, what: str) -> int:
    """round(share * units), at least one when share > 0; refuses removing all of them."""
    if share == 0:
        return 0
    removed = max(1, int(share * units + 0.5))
    if removed >= units:
        raise ConfigError(f"removing {share:.0%} of {units} {what} would leave none; lower the share")
    return removed


def column_scores(model: nn.Module, blocks, importance: str,
                  calibration: Calibration | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, (score of each attention-output column, score of each FFN-output column):
    the input features of ``attn.proj`` and ``mlp.proj``."""
    projs = [(b.attn.proj, b.mlp.proj) for b in blocks]
    if importance == "magnitude":
        return [(a.weight.detach().float().norm(dim=0), m.weight.detach().float().norm(dim=0))
                for a, m in projs]
    if calibration is None:
        raise ConfigError(f"importance '{importance}' needs calibration data "
                          "(calibration_data(model, tokenizer, source))")
    if importance == "activation":
        linears = {f"{i}.{k}": lin for i, pair in enumerate(projs) for k, lin in zip("am", pair)}
        norms = input_norms(model, linears, calibration)
        return [tuple(norms[f"{i}.{k}"] * lin.weight.detach().float().norm(dim=0)
                      for k, lin in zip("am", pair)) for i, pair in enumerate(projs)]
    if calibration.objective is None:
        raise ConfigError("importance 'taylor' needs a loss: calibrate a decoder, an encoder with "
                          "its MLM head or a fine-tuned task model, or use importance='activation'")
    return _taylor_scores(model, projs, calibration)


def _taylor_scores(model, projs, calibration: Calibration):
    """sum over batches of |grad * weight| summed per column group (done per column here, then
    per head by the caller; a column's signed sum is kept per batch so the grouping can add
    columns before taking the absolute value)."""
    weights = [lin.weight for pair in projs for lin in pair]
    flags = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()  # no dropout: the score of the model as it is used
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
        w.grad = None
    device = weights[0].device
    per_batch: list[list[torch.Tensor]] = []
    try:
        with torch.enable_grad():
            for batch in calibration.on(device):
                calibration.loss(model, batch).backward()
                per_batch.append([(w.grad * w.detach()).sum(0).float() for w in weights])
                for w in weights:
                    w.grad = None
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    # Kept signed per batch: a head's score is |sum over its columns| per batch, summed.
    signed = [torch.stack([b[i] for b in per_batch]) for i in range(len(weights))]  # (batches, cols)
    return [(signed[2 * i], signed[2 * i + 1]) for i in range(len(projs))]


def _group_score(cols: torch.Tensor, size: int, signed: bool) -> torch.Tensor:
    """Sum columns in consecutive groups of ``size``; signed per-batch scores (taylor, shape
    (batches, cols)) are summed per group, then |.| per batch, then summed over batches."""
    if signed:
        return cols.reshape(cols.shape[0], -1, size).sum(-1).abs().sum(0)
    return cols.reshape(-1, size).sum(-1)


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None,
                  cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear with only ``rows`` (outputs) and ``cols`` (inputs) of ``linear``."""
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _rows_of_heads(heads: torch.Tensor, head_dim: int, offset: int) -> torch.Tensor:
    return (offset + heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def _prune_block(block, keep_q: torch.Tensor, keep_kv: torch.Tensor, keep_ffn: torch.Tensor,
                 gated: bool) -> None:
    attn, mlp = block.attn, block.mlp
    H, Hkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    dev = attn.qkv.weight.device
    keep_q, keep_kv, keep_ffn = keep_q.to(dev), keep_kv.to(dev), keep_ffn.to(dev)
    rows = torch.cat([_rows_of_heads(keep_q, hd, 0), _rows_of_heads(keep_kv, hd, H * hd),
                      _rows_of_heads(keep_kv, hd, (H + Hkv) * hd)])
    attn.qkv = _slice_linear(attn.qkv, rows=rows)
    attn.proj = _slice_linear(attn.proj, cols=_rows_of_heads(keep_q, hd, 0))
    attn.n_head, attn.n_kv_head = len(keep_q), len(keep_kv)
    width = mlp.proj.in_features
    fc_rows = torch.cat([keep_ffn, keep_ffn + width]) if gated else keep_ffn
    mlp.fc = _slice_linear(mlp.fc, rows=fc_rows)
    mlp.proj = _slice_linear(mlp.proj, cols=keep_ffn)


def prune_structured(model: nn.Module, heads: float = 0.25, ffn: float = 0.25,
                     importance: str = "taylor", calibration: Calibration | None = None,
                     gqa: str = "query") -> PruneReport:
    """Remove ``heads`` (share of attention heads) and ``ffn`` (share of FFN channels) from
    every block of ``model`` in place, least important first; updates ``model.config`` so the
    model saves and loads at its new size. Returns the report (per block: heads and channels
    kept, indexes removed).

    ``importance``: ``taylor`` (needs ``calibration`` with a loss), ``activation`` (needs
    ``calibration``) or ``magnitude``. ``gqa``: with grouped-query attention, ``query`` removes
    query heads within each group (the same number per group), ``group`` whole groups; shares
    are rounded to what that allows (at least one unit when the share is above 0).
    """
    body = _body(model)
    _check_share("heads", heads)
    _check_share("ffn", ffn)
    if importance not in IMPORTANCE:
        raise ConfigError(f"importance must be one of {', '.join(IMPORTANCE)}, got {importance!r}")
    if gqa not in GQA_MODES:
        raise ConfigError(f"gqa must be one of {', '.join(GQA_MODES)}, got {gqa!r}")
    cfg = body.config
    H, Hkv, hd, width = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size
    group = H // Hkv
    by_query = gqa == "query" and group > 1
    # Validate the counts before any (slow) scoring.
    if by_query:
        per_group = _units_removed(heads, group, "query heads per key/value group")
        removed_q, removed_kv = per_group * Hkv, 0
    else:
        removed_groups = _units_removed(heads, Hkv, "attention heads" if group == 1 else "key/value groups")
        removed_q, removed_kv = removed_groups * group, removed_groups
    removed_ffn = _units_removed(ffn, width, "FFN channels")
    started = time.perf_counter()
    params_before, _ = count_parameters(model)
    blocks = list(body.blocks)
    block_weights = sum(p.numel() for b in blocks for p in b.parameters())
    gated = blocks[0].mlp.gated
    scores = (column_scores(model, blocks, importance, calibration)
              if removed_q or removed_ffn else [])
    signed = importance == "taylor"
    layers = []
    for i, block in enumerate(blocks):
        head_cols, ffn_cols = scores[i] if scores else (None, None)
        all_q = torch.arange(H)
        keep_q, keep_kv, keep_ffn = all_q, torch.arange(Hkv), torch.arange(width)
        if removed_q:
            head_score = _group_score(head_cols, hd, signed).cpu()  # (H,)
            if by_query:  # the per_group least important query heads of each group
                order = head_score.view(Hkv, group).argsort(dim=1)[:, :per_group]
                drop = (order + torch.arange(Hkv)[:, None] * group).flatten()
            else:  # whole groups: a group's score is its query heads' sum
                drop_groups = head_score.view(Hkv, group).sum(1).argsort()[:removed_kv]
                drop = (drop_groups[:, None] * group + torch.arange(group)).flatten()
                keep_kv = torch.tensor([g for g in range(Hkv) if g not in set(drop_groups.tolist())])
            dropped = set(drop.tolist())
            keep_q = torch.tensor([h for h in range(H) if h not in dropped])
        if removed_ffn:
            ffn_score = (ffn_cols.abs().sum(0) if signed else ffn_cols).cpu()
            dropped_ffn = set(ffn_score.argsort()[:removed_ffn].tolist())
            keep_ffn = torch.tensor([c for c in range(width) if c not in dropped_ffn])
        _prune_block(block, keep_q, keep_kv, keep_ffn, gated)
        layers.append({"layer": i, "heads": len(keep_q), "kv_heads": len(keep_kv),
                       "ffn": len(keep_ffn),
                       "removed_heads": sorted(set(range(H)) - set(keep_q.tolist())),
                       "removed_channels": sorted(set(range(width)) - set(keep_ffn.tolist()))})
    cfg.n_head, cfg.n_kv_head, cfg.intermediate_size = H - removed_q, Hkv - removed_kv, width - removed_ffn
    cfg.head_dim = hd  # explicit: no longer n_embd // n_head
    cfg.validate()
    params_after, nonzero = count_parameters(model)
    block_after = sum(p.numel() for b in blocks for p in b.parameters())
    return PruneReport(
        method=f"structured-{importance}", target=float(max(heads, ffn)), pattern=None,
        layers=layers, sparsity=1 - block_after / block_weights, parameters_before=params_before,
        parameters_after=params_after, nonzero_after=nonzero,
        calibration_tokens=calibration.tokens if calibration is not None and importance != "magnitude" else 0,
        seconds=time.perf_counter() - started,
        details={"heads": [H, cfg.n_head], "kv_heads": [Hkv, cfg.n_kv_head],
                 "intermediate_size": [width, cfg.intermediate_size],
                 "heads_share": removed_q / H, "ffn_share": removed_ffn / width,
                 "gqa": gqa if group > 1 else None})

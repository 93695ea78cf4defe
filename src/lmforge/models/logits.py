"""Logit filters a model's own ``generate`` needs (the LSTM's); :mod:`lmforge.generation`
builds its samplers on them, one layer up."""

from __future__ import annotations

import torch


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's ``k`` highest logits (and any tied with the k-th); the rest become -inf."""
    if k >= logits.size(-1):
        return logits
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_best, float("-inf"))

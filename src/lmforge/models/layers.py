"""Layer surgery: a shallower copy of a model that keeps some of its Transformer blocks (the
DistilBERT initialisation of a distillation student: the teacher with every k-th layer kept).

    student = keep_layers(teacher, [0, 2, 4])        # blocks 0, 2 and 4 of a 6-layer model
    student = keep_layers(teacher, every_kth(6, 2))  # the same
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch.nn as nn

from ..errors import ConfigError


def every_kth(n_layer: int, k: int) -> list[int]:
    """Blocks 0, k, 2k, ... of ``n_layer`` (DistilBERT keeps every second layer of BERT)."""
    if k < 1:
        raise ConfigError(f"keep every k-th layer needs k >= 1, got {k}")
    return list(range(0, n_layer, k))


def block_list(model: nn.Module) -> nn.ModuleList:
    """The one list of Transformer blocks of a decoder, an encoder or a task model built on
    them (encoder-decoders and LSTMs have none or two, and are refused)."""
    body = getattr(model, "backbone", model)
    lists = body.block_lists() if hasattr(body, "block_lists") else []
    if len(lists) != 1 or getattr(body, "kind", None) not in ("decoder", "encoder"):
        raise ConfigError(f"layer surgery and layer transfer need a decoder or encoder Transformer, "
                          f"got a {getattr(body, 'kind', type(body).__name__)}")
    return lists[0]


def keep_layers(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` (decoder, encoder or a task model on one) with only the blocks
    at ``indices`` (in that order) and ``n_layer`` set to match; embeddings, final norm and
    heads are copied as they are. Its outputs equal the original's run through just those
    blocks. ``model`` itself is not changed."""
    blocks = block_list(model)
    n = len(blocks)
    indices = [int(i) for i in indices]
    if not indices:
        raise ConfigError("keep at least one layer")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ConfigError(f"layer indices {bad} out of range: the model has {n} layers (0-{n - 1})")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"layer indices repeat: {indices}")
    out = copy.deepcopy(model)
    body = getattr(out, "backbone", out)
    kept = nn.ModuleList(block_list(out)[i] for i in indices)
    for new, block in enumerate(kept):
        block.attn.layer = new  # its slot in a KV cache
    name = next(name for name, child in body.named_children() if child is block_list(out))
    setattr(body, name, kept)
    # The config object may be shared with the original model (a task model's is its
    # backbone's): give the copy its own.
    cfg = copy.deepcopy(body.config)
    cfg.n_layer = len(indices)
    body.config = cfg
    if out is not body:
        out.config = cfg
    return out

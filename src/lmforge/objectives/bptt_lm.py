"""Language modeling with truncated backpropagation through time, for recurrent models.

The training split is read as ``batch_size`` parallel contiguous streams (``StreamBatches``);
each batch is the next ``block_size`` tokens of every stream. The LSTM state at the end of one
batch is the start state of the next, detached: the model sees unbounded context forward, but
gradients flow back only ``block_size`` steps (Zaremba et al., 2014). The carried state is part
of ``state_dict()``, so a resumed run continues exactly.

Evaluation walks the validation split the same way with its own carried state, reset at the
start of every evaluation and never mixed with the training one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data.dataset import StreamBatch, StreamBatches, TokenShards
from ..errors import ConfigError
from .base import Objective, register


@register
class BPTTLM(Objective):
    name = "bptt_lm"
    rank_local_rows = True  # each rank carries the state of its own streams
    carries_state = True

    def __init__(self, tokenizer=None, meta: dict | None = None, **options: Any):
        super().__init__(tokenizer, meta, **options)
        # Carried (h, c) per walk: training, and the evaluation pass (which must not disturb it).
        self.states: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {"train": None,
                                                                            "eval": None}

    def check_model(self, model: torch.nn.Module) -> None:
        if not model.recurrent:
            raise ConfigError(f"objective '{self.name}' needs an LSTM model (--model lstm-small)")

    def train_sampler(self, data: TokenShards, block_size: int, batch_size: int, seed: int,
                      sampling: str = "random", **rows) -> StreamBatches:
        """Contiguous streams in order; ``seed`` and ``sampling`` do not apply (no shuffling:
        carrying the state needs each row to continue the previous batch's row)."""
        return StreamBatches(data, block_size, batch_size, **rows)

    def eval_batches(self, data: TokenShards, block_size: int, batch_size: int, count: int) -> list:
        """The first ``count`` batches of streams over the validation split: up to
        ``count * block_size`` tokens from the start of each of ``batch_size`` streams (fewer
        streams when the split is short), scored with carried state."""
        streams = min(batch_size, max((len(data) - 1) // (block_size + 1), 1))
        walk = StreamBatches(data, block_size, streams)
        steps = min(count, walk.steps_per_epoch)
        return [self.make_batch(walk.next_batch(), evaluation=True) for _ in range(steps)]

    def make_batch(self, batch: StreamBatch, evaluation: bool = False) -> dict[str, torch.Tensor]:
        windows = batch.windows
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:],
                "starts": torch.tensor(batch.starts), "evaluation": torch.tensor(evaluation)}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        walk = "eval" if batch["evaluation"].item() else "train"
        state = None if batch["starts"].item() else self.states[walk]
        if state is not None:
            if state[0].shape[1] != len(batch["input_ids"]):
                raise ConfigError(f"the carried state is for {state[0].shape[1]} streams but the "
                                  f"batch has {len(batch['input_ids'])}; keep batch_size when "
                                  "resuming a bptt_lm run")
            state = tuple(s.to(batch["input_ids"].device) for s in state)
        logits, state = model(batch["input_ids"], state)
        # Truncation: the next batch starts from these values, but no gradient flows into them.
        self.states[walk] = tuple(s.detach() for s in state)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten())

    def state_dict(self) -> dict[str, Any]:
        """The carried training state as tensors (the evaluation walk restarts anyway)."""
        if self.states["train"] is None:
            return {}
        h, c = self.states["train"]
        return {"h": h, "c": c}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "h" in state:
            self.states["train"] = (state["h"], state["c"])

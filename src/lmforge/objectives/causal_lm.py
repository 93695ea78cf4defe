"""Autoregressive language modeling: predict token t+1 from tokens <= t (the chain rule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Objective, register


@register
class CausalLM(Objective):
    name = "causal_lm"
    # Compiled with the model, the loss reads the bf16 logits once, fusing the fp32 upcast into the
    # log-softmax; outside it, cross-entropy was a quarter of a GPT-2 step on an H200.
    compile_loss = True
    rank_local_rows = True  # inputs and labels are slices of each row's window

    def window_length(self, block_size: int) -> int:
        return block_size + 1  # inputs are the first block_size tokens, targets shifted by one

    def check_model(self, model: torch.nn.Module) -> None:
        # An LSTM trains on the same windows, from a fresh state each (see bptt_lm to carry it).
        if not model.is_decoder:
            raise ConfigError(f"objective 'causal_lm' needs a decoder or LSTM model, "
                              f"got '{model.kind}'")

    def make_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(batch["input_ids"])
        if isinstance(logits, tuple):  # a recurrent model also returns its state
            logits = logits[0]
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                               ignore_index=-100)

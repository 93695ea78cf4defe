"""Objectives for encoder-decoder models: each turns a raw token window into a (source, target)
pair; the shared base pads them into a batch and computes the decoder's cross-entropy.

``prefix_lm`` is here: causal language modeling split across the two stacks (T5's "prefix LM"
objective), a random prefix of the window to the encoder, the rest as the decoder's target.
The denoising objectives (T5 span corruption, BART) are in :mod:`.denoising`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.encoder_decoder import has_padding
from ..tokenization import eos_token_id
from .base import Objective, option, register
from .mlm import PAD_TOKENS, find_token


@dataclass
class Seq2SeqOptions:
    decoder_start_token_id: int | None = option(None, "first decoder input (default: the model's, "
                                                      "else pad for T5 and eos for BART)")
    seed: int | None = option(None, "seed of the noise generator (default: from the run's seed)")


class Seq2SeqObjective(Objective):
    """Base of the encoder-decoder objectives. Subclasses implement ``corrupt(window)`` ->
    (source ids, target ids), drawing any randomness from ``self.generator`` (checkpointed).

    A batch holds ``input_ids`` and ``attention_mask`` (sources, right-padded with the pad id),
    ``decoder_input_ids`` (each target shifted right behind the decoder start token) and
    ``labels`` (the targets, -100 on padding).
    """

    # The decoder start token when the model does not name one: "pad" (T5) or "eos" (BART).
    default_start = "pad"
    Options = Seq2SeqOptions

    def __init__(self, tokenizer=None, meta: dict | None = None, **options):
        super().__init__(tokenizer, meta, **options)  # unknown options: a clear ConfigError
        decoder_start_token_id, seed = self.options.decoder_start_token_id, self.options.seed
        if tokenizer is None:
            raise ConfigError(f"objective '{self.name}' needs the dataset's tokenizer.json "
                              "(for its special tokens)")
        eos = self.meta.get("eos_id")
        self.eos_id = int(eos) if eos is not None else eos_token_id(tokenizer)
        if self.eos_id is None:
            raise ConfigError(f"objective '{self.name}' needs an end-of-text token in the tokenizer")
        pad = find_token(tokenizer, PAD_TOKENS)
        self.pad_id = pad if pad is not None else self.eos_id  # padding is masked: any id works
        self.start_option = decoder_start_token_id
        if decoder_start_token_id is not None:
            self.decoder_start = decoder_start_token_id
        else:
            self.decoder_start = self.pad_id if self.default_start == "pad" else self.eos_id
        # Default: derived from the run's seed (the engine seeds torch first), no draw from it.
        self.generator = torch.Generator().manual_seed(
            torch.initial_seed() + 1 if seed is None else seed)

    def check_model(self, model: torch.nn.Module) -> None:
        cfg = model.config
        if not model.is_seq2seq:
            raise ConfigError(f"objective '{self.name}' needs an encoder-decoder model "
                              f"(e.g. --model t5-tiny or bart-tiny), got a {model.kind}")
        if cfg.decoder_start_token_id is None:
            # Recorded in the model config, so generation starts the decoder the same way.
            cfg.decoder_start_token_id = self.decoder_start
        elif self.start_option is not None and self.start_option != cfg.decoder_start_token_id:
            raise ConfigError(f"objective_args decoder_start_token_id={self.start_option} differs "
                              f"from the model's ({cfg.decoder_start_token_id})")
        self.decoder_start = cfg.decoder_start_token_id

    # ---- batches ------------------------------------------------------------------------
    def corrupt(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) token ids for one raw window."""
        raise NotImplementedError

    def make_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.collate([self.corrupt(w) for w in windows])

    def collate(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad (source, target) pairs into a batch (see the class docstring)."""
        B = len(pairs)
        S = max(len(src) for src, _ in pairs)
        T = max(len(tgt) for _, tgt in pairs)
        input_ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B, S), dtype=torch.long)
        decoder_input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        for row, (src, tgt) in enumerate(pairs):
            input_ids[row, :len(src)] = src
            attention_mask[row, :len(src)] = 1
            labels[row, :len(tgt)] = tgt
            decoder_input_ids[row, 0] = self.decoder_start
            decoder_input_ids[row, 1:len(tgt)] = tgt[:-1]
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "decoder_input_ids": decoder_input_ids, "labels": labels}

    def eval_batches(self, data, block_size: int, batch_size: int, count: int) -> list:
        with self.fixed_generator():
            return super().eval_batches(data, block_size, batch_size, count)

    # ---- loss ---------------------------------------------------------------------------
    @staticmethod
    def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced logits; an all-ones source mask is dropped here, outside a compiled
        model (see ``has_padding``)."""
        mask = batch["attention_mask"]
        return model(batch["input_ids"], batch["decoder_input_ids"],
                     mask if has_padding(mask) else None)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.logits(model, batch)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                               ignore_index=-100)

    @torch.no_grad()
    def eval_metrics(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
        """Teacher-forced target-token accuracy (argmax equals the label), as for MLM."""
        logits = self.logits(model, batch)
        labels = batch["labels"]
        target = labels != -100
        correct = (logits.argmax(-1) == labels) & target
        return {"token_acc": (float(correct.sum()), int(target.sum()))}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


@register
class PrefixLM(Seq2SeqObjective):
    """Causal LM on an encoder-decoder: the window is cut at a uniformly random point; the
    encoder reads the prefix and the decoder predicts the rest. No end-of-text token is added:
    the window, not the text, ends there."""

    name = "prefix_lm"

    def corrupt(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(window) < 2:
            raise ConfigError("objective 'prefix_lm' needs windows of at least 2 tokens")
        split = int(torch.randint(1, len(window), (1,), generator=self.generator))
        return window[:split], window[split:]

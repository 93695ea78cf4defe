"""ELECTRA replaced-token detection (Clark et al. 2020).

A small masked-LM generator predicts the masked tokens; each masked position is replaced by a
token *sampled* from the generator's softmax (temperature 1, no gradient through the sample);
the discriminator (the encoder being pretrained) sees the corrupted sequence and predicts, for
every token, whether it was replaced. A sampled token equal to the original counts as original.

    loss = CE(generator logits, originals at masked positions)
         + disc_weight * BCE-with-logits(discriminator logits, replaced?) over non-padding tokens

Masking reuses the masked-LM objective's selection; as in the official implementation, selected
tokens become [MASK] 85% of the time and stay themselves otherwise (no random tokens). The
sampling draws one uniform per position in ``make_batch`` from the objective's own seeded
generator (inverse-CDF sampling in the loss), so batches, evaluation and resume are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.electra import ELECTRA
from .base import option, register
from .mlm import MaskedLM, MLMOptions


@dataclass
class ElectraOptions(MLMOptions):
    replace_prob: float = option(0.85, "share of the masked tokens shown as [MASK] (the rest are "
                                       "kept; official ELECTRA: 0.85)")
    random_prob: float = option(0.0, "share of the masked tokens replaced by a random token "
                                     "(ELECTRA: none)")
    generator_size: float = option(0.25, "generator hidden size as a share of the discriminator's "
                                         "(rounded to whole heads)")
    generator_layers: int | None = option(None, "generator blocks (default: as many as the "
                                                "discriminator)")
    disc_weight: float = option(50.0, "weight of the replaced-token-detection loss")


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` (N, V) from softmax(logits) (temperature 1), by inverse
    CDF with the given uniforms (N,) in [0, 1). No gradient flows through it."""
    with torch.no_grad():
        cdf = torch.softmax(logits.detach().double(), dim=-1).cumsum(-1)
        idx = torch.searchsorted(cdf, uniform.double().unsqueeze(-1) * cdf[:, -1:],
                                  right=True).squeeze(-1)
        return idx.clamp(max=logits.shape[-1] - 1)


def rtd_loss(logits: torch.Tensor, replaced: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits over the real (non-padding) tokens."""
    return F.binary_cross_entropy_with_logits(logits[tokens].float(), replaced[tokens].float())


@register
class Electra(MaskedLM):
    name = "electra"
    Options = ElectraOptions
    forward_only = False  # the loss calls the composite's generator and RTD heads

    def __init__(self, tokenizer=None, meta: dict | None = None, **options: Any):
        if tokenizer is None:
            raise ConfigError("objective 'electra' needs the dataset's tokenizer.json (for [MASK] "
                              "and specials)")
        super().__init__(tokenizer, meta, **options)
        o = self.options
        if not 0 < o.generator_size <= 1:
            raise ConfigError("objective_args: need 0 < generator_size <= 1")
        if o.generator_layers is not None and o.generator_layers < 1:
            raise ConfigError("objective_args: generator_layers must be at least 1")
        if o.disc_weight < 0:
            raise ConfigError("objective_args: disc_weight must be >= 0")
        self._counts = [0.0, 0.0, 0]  # replaced tokens, correct RTD predictions, tokens

    def check_model(self, model: torch.nn.Module) -> None:
        if not isinstance(model, ELECTRA):
            raise ConfigError("objective 'electra' trains the composite its training_model builds")

    def training_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not getattr(model, "is_encoder", False):
            raise ConfigError(f"objective 'electra' needs an encoder model (e.g. --model bert-mini), "
                              f"got a {getattr(model, 'kind', type(model).__name__)}")
        # The discriminator has no masked-LM head (ELECTRA's discriminator predicts only
        # replaced/original); dropping it keeps unused, untrained weights out of the export.
        if model.has_mlm_head():
            model.mlm_head = None
            model.config.mlm_head = False
        return ELECTRA(model, self.options.generator_size, self.options.generator_layers)

    def make_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = super().make_batch(windows)
        batch["uniform"] = torch.rand(batch["input_ids"].shape, generator=self.generator)
        return batch

    def outputs(self, model: ELECTRA, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses and what the metrics need, for one batch."""
        inputs, labels = batch["input_ids"], batch["labels"]
        selected = labels != -100
        original = torch.where(selected, labels, inputs)
        gen_logits = model.generator_logits(inputs, selected)
        gen_loss = F.cross_entropy(gen_logits.float(), labels[selected])
        sampled = sample_tokens(gen_logits, batch["uniform"][selected])
        corrupted = original.clone()
        corrupted[selected] = sampled
        replaced = corrupted != original
        tokens = original != self.pad_id if self.pad_id is not None else torch.ones_like(selected)
        logits = model.rtd_logits(corrupted)
        disc_loss = rtd_loss(logits, replaced, tokens)
        return {"loss": gen_loss + self.options.disc_weight * disc_loss, "gen_loss": gen_loss,
                "rtd_loss": disc_loss, "gen_logits": gen_logits, "rtd_logits": logits,
                "replaced": replaced, "tokens": tokens, "selected": selected}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.outputs(model, batch)
        with torch.no_grad():
            tokens = out["tokens"]
            correct = ((out["rtd_logits"] > 0) == out["replaced"])[tokens]
            self._counts[0] += float(out["replaced"][tokens].sum())
            self._counts[1] += float(correct.sum())
            self._counts[2] += int(tokens.sum())
        return out["loss"]

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        saved = list(self._counts)  # validation batches do not count in the training metrics
        try:
            metrics = super().evaluate(*args, **kwargs)
            metrics.pop("val_ppl", None)  # exp of a weighted sum of two losses means nothing
            return metrics
        finally:
            self._counts = saved

    def log_metrics(self) -> dict[str, float]:
        """RTD accuracy and replaced share over the training batches since the last log."""
        replaced, correct, n = self._counts
        self._counts = [0.0, 0.0, 0]
        if not n:
            return {}
        return {"rtd_acc": correct / n, "replaced_share": replaced / n}

    @torch.no_grad()
    def eval_metrics(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
        out = self.outputs(model, batch)
        tokens, replaced, selected = out["tokens"], out["replaced"], out["selected"]
        correct = ((out["rtd_logits"] > 0) == replaced)[tokens]
        gen_pred = out["gen_logits"].argmax(-1)
        n = int(tokens.sum())
        return {"rtd_acc": (float(correct.sum()), n),
                "rtd_all_original_acc": (float((~replaced[tokens]).sum()), n),
                "replaced_share": (float(replaced[tokens].sum()), n),
                "gen_loss": (float(out["gen_loss"]), 1), "rtd_loss": (float(out["rtd_loss"]), 1),
                "mlm_acc": (float((gen_pred == batch["labels"][selected]).sum()), int(selected.sum()))}

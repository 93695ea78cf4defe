"""What scoring a text gives: per-token log-probabilities and the totals derived from them,
shared by causal scoring (:mod:`.scoring`) and pseudo-log-likelihood (:mod:`.pseudo_likelihood`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DataError


@dataclass(frozen=True)
class TokenScore:
    """One scored token: its position among the text's tokens, id, vocab string and
    log P(token | everything before it) in nats (pseudo-log-likelihood: | all other tokens)."""

    index: int
    id: int
    token: str | None
    logprob: float


@dataclass
class ScoreResult:
    """Per-token scores of a text and the totals derived from them. ``method`` is "causal"
    (chain rule: the totals are log P(text) and perplexity) or "pseudo" (a masked LM's
    pseudo-log-likelihood and pseudo-perplexity, Salazar et al. 2020)."""

    tokens: list[TokenScore]
    method: str = "causal"

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def total_logprob(self) -> float:
        """log P(text) in nats: by the chain rule, the sum of the per-token log-probabilities."""
        return math.fsum(t.logprob for t in self.tokens)

    @property
    def total_logprob_bits(self) -> float:
        return self.total_logprob / math.log(2)

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per scored token, in nats (the LM loss)."""
        return -self.total_logprob / self.num_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    def summary(self) -> dict[str, Any]:
        """The totals as a JSON-ready dict (no per-token records)."""
        return {"method": self.method, "tokens": self.num_tokens, "logprob": self.total_logprob,
                "logprob_bits": self.total_logprob_bits, "mean_nll": self.mean_nll,
                "perplexity": self.perplexity}


def check_ids(ids: Sequence[int], vocab: int) -> None:
    """Refuse an empty text or ids the model has no embedding for (a foreign tokenizer)."""
    if not ids:
        raise DataError("empty text: nothing to score")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise DataError(f"token id {bad[0]} is outside the model's vocabulary "
                        f"(vocab_size={vocab}); is this the model's own tokenizer?")

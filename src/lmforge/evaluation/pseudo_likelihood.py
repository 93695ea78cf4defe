"""Score text with a masked-LM encoder: pseudo-log-likelihood (Salazar et al., 2020).

An encoder gives no chain-rule probability of a text, but it can say how well each token fits
the rest: mask token t, read log P(token_t | all other tokens) off the MLM head, and repeat for
every t. The sum is the pseudo-log-likelihood (PLL) and exp(-PLL / N) the pseudo-perplexity.
That is one forward pass per token, so the masked copies of the text run in batches.

Each copy is framed as in training, ``[CLS] window [SEP]``. A text that fits the model's context
is its own window; a longer one gives each token its own window of ``max_length`` tokens centred
on it (shifted at the ends of the text), so every token is masked exactly once and sees as much
context on both sides as fits. Each copy costs one forward pass whatever its window, so this is
the most context any windowing can give, at no extra cost (there is no stride to choose).
Log-probabilities are over the full vocabulary, as the MLM loss computes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError
from ..tokenization import encode
from .masked_inputs import frame_ids, mask_token_id, model_autocast, require_encoder
from .scores import ScoreResult, TokenScore, check_ids


def window_starts(n: int, width: int) -> torch.Tensor:
    """Start of the ``width``-token window of each of ``n`` tokens: centred on the token,
    clamped to the text."""
    return (torch.arange(n) - width // 2).clamp(min=0, max=max(n - width, 0))


@torch.inference_mode()
def pll_token_logprobs(model: torch.nn.Module, ids: Sequence[int], mask_id: int,
                       cls_id: int | None = None, sep_id: int | None = None,
                       max_length: int | None = None, batch_size: int = 32,
                       precision: str = "fp32") -> torch.Tensor:
    """log P(ids[t] | ids without t) for every t, float64 of length len(ids): token t masked in
    ``[CLS] window [SEP]``, its window holding up to ``max_length`` tokens with the frame
    (default: the model's context). ``batch_size`` masked copies run per forward pass."""
    require_encoder(model, "pseudo-log-likelihood scoring")
    context = model.config.context_length
    max_length = context if max_length is None else max_length
    frame = (cls_id is not None) + (sep_id is not None)
    if not frame < max_length <= context:
        raise ConfigError(f"max_length must be in [{frame + 1}, {context}] (the model's context, "
                          f"[CLS]/[SEP] included), got {max_length}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    seq = torch.tensor(list(ids), dtype=torch.long)
    n = len(seq)
    out = torch.empty(n, dtype=torch.float64)
    if n == 0:
        return out
    width = min(max_length - frame, n)
    starts = window_starts(n, width)
    windows = seq.unfold(0, width, 1)  # windows[s] = seq[s:s + width], a view
    left = torch.tensor([cls_id] if cls_id is not None else [], dtype=torch.long)
    right = torch.tensor([sep_id] if sep_id is not None else [], dtype=torch.long)
    with model_autocast(model, precision):
        for begin in range(0, n, batch_size):
            targets = torch.arange(begin, min(begin + batch_size, n))
            rows, at = torch.arange(len(targets)), targets - starts[targets]  # at: place in window
            copies = windows[starts[targets]].clone()
            copies[rows, at] = mask_id
            batch = torch.cat([left.expand(len(rows), -1), copies, right.expand(len(rows), -1)], 1)
            where = torch.zeros_like(batch, dtype=torch.bool)
            where[rows, at + len(left)] = True
            batch, where = batch.to(device), where.to(device)
            logits = model.mlm_logits(model(batch), where).float()  # one row per copy, in order
            logprobs = logits.log_softmax(dim=-1).gather(-1, seq[targets, None].to(device))[:, 0]
            out[targets] = logprobs.double().cpu()
    return out


def pll_score_ids(model: torch.nn.Module, ids: Sequence[int], mask_id: int,
                  cls_id: int | None = None, sep_id: int | None = None,
                  max_length: int | None = None, batch_size: int = 32, precision: str = "fp32",
                  token_name=None) -> ScoreResult:
    """Pseudo-log-likelihood of token ids as a ``ScoreResult`` (``method="pseudo"``): every token
    is scored; its ``perplexity`` is the pseudo-perplexity."""
    check_ids(ids, model.config.vocab_size)
    logprobs = pll_token_logprobs(model, ids, mask_id, cls_id, sep_id, max_length, batch_size,
                                  precision).tolist()
    return ScoreResult([TokenScore(index=i, id=t, token=token_name(t) if token_name else None,
                                   logprob=lp) for i, (t, lp) in enumerate(zip(ids, logprobs))],
                       method="pseudo")


def pll_score_text(model: torch.nn.Module, tokenizer: Tokenizer, text: str,
                   max_length: int | None = None, batch_size: int = 32,
                   precision: str = "fp32") -> ScoreResult:
    """Pseudo-log-likelihood of ``text`` (encoded without special tokens, then framed in
    [CLS] ... [SEP] like the MLM training windows)."""
    require_encoder(model, "pseudo-log-likelihood scoring")
    mask_id = mask_token_id(tokenizer)
    try:
        ids = encode(tokenizer, text)
    except Exception as exc:  # the Rust side raises a bare Exception
        raise DataError(f"cannot encode the text: {exc}") from None
    return pll_score_ids(model, ids, mask_id, *frame_ids(tokenizer), max_length=max_length,
                         batch_size=batch_size, precision=precision,
                         token_name=tokenizer.id_to_token)

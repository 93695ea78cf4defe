"""Score text with a causal LM: log-probability of every token given all before it, total
log-probability (nats and bits), mean negative log-likelihood and perplexity.

    result = score_text(model, tok, "To be, or not to be")
    result.total_logprob, result.perplexity, result.tokens[0].logprob

Texts longer than the model's context are scored with a sliding window (Hugging Face's
perplexity recipe): windows of ``max_length`` tokens start ``stride`` tokens apart and each scores
only the tokens the previous window did not, so those keep up to max_length - stride tokens of
earlier context. stride == max_length is plain chunking; a smaller stride costs more forward
passes and gives each token more context. A recurrent model (LSTM) needs no window: it reads
the text once in chunks, carrying its state, so every token is scored given all before it.
An encoder (masked LM) has no chain rule: ``score_text`` gives it pseudo-log-likelihood instead
(each token given all the others; see ``pseudo_likelihood.py``), in the same ``ScoreResult``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError
from ..models.task_head import refuse_task_model
from ..runtime import autocast, resolve_precision
from ..tokenization import encode, eos_token_id
from .pseudo_likelihood import pll_score_text
from .scores import ScoreResult, TokenScore, check_ids


def _window(model: torch.nn.Module, stride: int | None, max_length: int | None) -> tuple[int, int]:
    """Validated (max_length, stride); defaults: the model's context and half of it."""
    context = model.config.context_length
    max_length = context if max_length is None else max_length
    if not 1 <= max_length <= context:
        raise ConfigError(f"max_length must be in [1, {context}] (the model's context), "
                          f"got {max_length}")
    stride = max(max_length // 2, 1) if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be in [1, max_length={max_length}], got {stride}")
    return max_length, stride


RECURRENT_CHUNK = 1024  # tokens per forward call of a recurrent model (any size gives the same scores)


@torch.inference_mode()
def recurrent_token_logprobs(model: torch.nn.Module, ids: Sequence[int],
                             chunk: int = RECURRENT_CHUNK, precision: str = "fp32") -> torch.Tensor:
    """``token_logprobs`` for a recurrent model: one pass over ``ids`` in chunks of ``chunk``
    tokens, each starting from the state the previous one ended in."""
    device = next(model.parameters()).device
    seq = torch.tensor(list(ids), dtype=torch.long, device=device)
    out, state = [], None
    with autocast(device, resolve_precision(precision, device)):
        for begin in range(0, len(seq) - 1, chunk):
            end = min(begin + chunk, len(seq) - 1)
            logits, state = model(seq[None, begin:end], state)
            logprobs = logits[0].float().log_softmax(dim=-1).gather(-1, seq[begin + 1:end + 1, None])
            out.append(logprobs[:, 0].double().cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


@torch.inference_mode()
def token_logprobs(model: torch.nn.Module, ids: Sequence[int], stride: int | None = None,
                   max_length: int | None = None, precision: str = "fp32") -> torch.Tensor:
    """log P(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, float64 of length len(ids) - 1.

    Windows hold up to ``max_length`` input tokens (default: the model's context) and start
    ``stride`` tokens apart (default: max_length // 2); a window's inputs ids[b:e] predict
    ids[b+1:e+1], of which it keeps only those not scored by the window before. A recurrent
    model is scored by ``recurrent_token_logprobs`` instead (``stride`` does not apply).
    """
    if model.recurrent:
        return recurrent_token_logprobs(model, ids, max_length or RECURRENT_CHUNK, precision)
    max_length, stride = _window(model, stride, max_length)
    device = next(model.parameters()).device
    seq = torch.tensor(list(ids), dtype=torch.long, device=device)
    n_targets = len(seq) - 1
    out = torch.empty(max(n_targets, 0), dtype=torch.float64)
    scored, begin = 0, 0  # out[:scored] is filled; out[t] scores seq[t + 1]
    with autocast(device, resolve_precision(precision, device)):
        while scored < n_targets:
            end = min(begin + max_length, n_targets)
            logits = model(seq[None, begin:end])[0].float()
            logprobs = logits.log_softmax(dim=-1).gather(-1, seq[begin + 1:end + 1, None])[:, 0]
            out[scored:end] = logprobs[scored - begin:].double().cpu()
            scored, begin = end, begin + stride
    return out


def score_ids(model: torch.nn.Module, ids: Sequence[int], context_id: int | None = None,
              stride: int | None = None, max_length: int | None = None, precision: str = "fp32",
              token_name: Callable[[int], str | None] | None = None) -> ScoreResult:
    """Score token ids. With ``context_id`` (an end-of-text/BOS id) it is prepended as context, so
    every token is scored, the first one as the start of a document; without it the first token
    has no context and is not scored. ``token_name`` maps ids to the strings in the records."""
    check_ids(ids, model.config.vocab_size)
    if context_id is None and len(ids) < 2:
        raise DataError("text of one token has nothing to score without an end-of-text token as "
                        "context (the tokenizer has none)")
    seq = ([context_id] if context_id is not None else []) + list(ids)
    logprobs = token_logprobs(model, seq, stride, max_length, precision).tolist()
    first = len(ids) - len(logprobs)  # index of the first scored token: 0, or 1 without context
    return ScoreResult([TokenScore(index=first + i, id=ids[first + i],
                                   token=token_name(ids[first + i]) if token_name else None,
                                   logprob=lp) for i, lp in enumerate(logprobs)])


def score_text(model: torch.nn.Module, tokenizer: Tokenizer, text: str, stride: int | None = None,
               max_length: int | None = None, precision: str = "fp32",
               batch_size: int = 32) -> ScoreResult:
    """Score ``text``: its tokens (encoded without special tokens) are scored after the
    tokenizer's end-of-text token, as GPT-2 starts documents, so every token of the text counts;
    a tokenizer without one leaves the first token unscored. Token strings are vocab entries
    (``Ġthe`` for byte-level BPE). ``precision`` defaults to fp32 so scores do not depend on the
    hardware; see :func:`token_logprobs` for ``stride`` and ``max_length``.

    An encoder is scored by pseudo-log-likelihood (``pll_score_text``), ``batch_size`` masked
    copies of the text per forward pass; it centres a window on every token, so takes no stride."""
    refuse_task_model(model, "scoring needs a language model")
    if model.is_encoder:
        if stride is not None:
            raise ConfigError("stride does not apply to an encoder: pseudo-log-likelihood scores "
                              "each token in its own window centred on it")
        return pll_score_text(model, tokenizer, text, max_length, batch_size, precision)
    try:
        ids = encode(tokenizer, text)
    except Exception as exc:  # the Rust side raises a bare Exception
        raise DataError(f"cannot encode the text: {exc}") from None
    return score_ids(model, ids, context_id=eos_token_id(tokenizer), stride=stride,
                     max_length=max_length, precision=precision, token_name=tokenizer.id_to_token)

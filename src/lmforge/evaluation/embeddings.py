"""Sentence embeddings: one vector per text from a model's final hidden states.

    vectors = embed(model, tok, ["To be, or not to be", "Friends, Romans"], normalize=True)
    vectors.shape  # (2, n_embd), float32; vectors @ vectors.T are cosine similarities

Poolings:
- ``mean``: average of the hidden states of the text's tokens, padding excluded (the
  sentence-transformers convention; an encoder's [CLS] and [SEP] count as tokens, as there).
- ``cls``: the [CLS] hidden state (encoders only).
- ``pooler``: [CLS] through BERT's pooler, dense + tanh, trained by next-sentence or
  sentence-order prediction (encoders built with ``pooler=true`` only).

Encoders see ``[CLS] text [SEP]`` as in MLM training. An encoder-decoder (T5, BART) is embedded
by mean pooling its encoder's states (as Sentence-T5 does). Decoders (GPT) and LSTMs work too,
with mean pooling over their causal hidden states: each position has seen only the tokens
before it, so this is a weaker sentence representation than an encoder's, but it needs no
extra training.
Texts are batched by similar length and right-padded; padding is masked out of attention and
out of the mean, so a text's vector does not depend on what it was batched with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError
from ..models.task_head import refuse_task_model
from ..tokenization import encode
from .masked_inputs import frame_ids, model_autocast, padding_id, wrap

POOLINGS = ("mean", "cls", "pooler")


def _check(model: torch.nn.Module, pooling: str, cls_id: int | None, batch_size: int,
           max_length: int | None) -> int:
    """Validate the arguments; return the token budget per text."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    encoder = model.is_encoder
    if pooling != "mean" and not encoder:
        raise ConfigError(f"pooling '{pooling}' needs an encoder with a [CLS] token; use "
                          f"--pooling mean for a {model.kind} model")
    if pooling != "mean" and cls_id is None:
        raise ConfigError(f"pooling '{pooling}' needs a [CLS] token in the tokenizer; use --pooling mean")
    if pooling == "pooler" and model.pooler is None:
        raise ConfigError("this encoder has no pooler (pooler=false); use --pooling cls or mean")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    # An LSTM has no position limit; its context_length only bounds training's BPTT length.
    limit = None if model.recurrent else model.config.context_length
    if max_length is None:
        return limit or 1 << 30
    if max_length < 1 or (limit is not None and max_length > limit):
        raise ConfigError(f"max_length must be in [1, {limit}] (the model's context), got {max_length}")
    return max_length


def text_ids(tokenizer: Tokenizer, texts: Sequence[str], encoder: bool,
             max_length: int) -> list[list[int]]:
    """Each text's ids, truncated to ``max_length`` tokens; an encoder's framed in [CLS]/[SEP]
    (kept when truncating, as BERT tokenizers do)."""
    cls_id, sep_id = frame_ids(tokenizer) if encoder else (None, None)
    room = max_length - (cls_id is not None) - (sep_id is not None)
    if room < 0:
        raise ConfigError(f"max_length {max_length} leaves no room for [CLS] and [SEP]")
    out = []
    for i, text in enumerate(texts):
        try:
            ids = wrap(encode(tokenizer, text)[:room], cls_id, sep_id)
        except Exception as exc:  # the Rust side raises a bare Exception
            raise DataError(f"cannot encode text {i + 1}: {exc}") from None
        if not ids:
            raise DataError(f"text {i + 1} has no tokens to embed")
        out.append(ids)
    return out


def hidden_states(model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, d) of a right-padded batch, whatever the architecture."""
    if model.is_encoder:
        return model(ids, attention)
    if model.is_seq2seq:
        return model.encode(ids, attention)
    if model.recurrent:
        # Right padding comes after every real token, so it cannot reach them through the state.
        return model.lstm(model.embed(ids))[0]
    return model.hidden_states(ids, attention_mask=attention)


def pool(model: torch.nn.Module, hidden: torch.Tensor, attention: torch.Tensor,
         pooling: str) -> torch.Tensor:
    """(B, d) sentence vectors from hidden states (B, T, d) and the padding mask (B, T)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        return model.pooled(hidden)
    weights = attention.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


@torch.inference_mode()
def embed(model: torch.nn.Module, tokenizer: Tokenizer, texts: Sequence[str], pooling: str = "mean",
          normalize: bool = False, batch_size: int = 32, max_length: int | None = None,
          precision: str = "fp32") -> np.ndarray:
    """float32 array (len(texts), n_embd): one vector per text, in order. ``normalize`` scales
    each to unit L2 norm (dot products are then cosine similarities); texts longer than
    ``max_length`` tokens (default: the model's context) are truncated."""
    refuse_task_model(model, "embed takes a plain model")
    cls_id, _ = frame_ids(tokenizer)
    budget = _check(model, pooling, cls_id, batch_size, max_length)
    all_ids = text_ids(tokenizer, texts, model.is_encoder, budget)
    device = next(model.parameters()).device
    pad = padding_id(tokenizer)
    out = torch.empty(len(all_ids), model.config.n_embd, dtype=torch.float32)
    order = sorted(range(len(all_ids)), key=lambda i: len(all_ids[i]))  # less padding per batch
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(all_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :len(all_ids[i])] = torch.tensor(all_ids[i])
            attention[r, :len(all_ids[i])] = 1
        ids, attention = ids.to(device), attention.to(device)
        with model_autocast(model, precision):
            vectors = pool(model, hidden_states(model, ids, attention), attention, pooling)
        out[rows] = vectors.float().cpu()
    if normalize:
        out = torch.nn.functional.normalize(out, dim=-1)
    return out.numpy()

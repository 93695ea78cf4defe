"""What the masked-LM tools (fill-mask, pseudo-log-likelihood, embeddings) share: the check that
a model has a masked-LM head, the tokenizer's [MASK] id, the ids never worth predicting, and
text ids wrapped in [CLS] ... [SEP] exactly as the MLM objective framed them in training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError
from ..objectives.mlm import CLS_TOKENS, MASK_TOKENS, PAD_TOKENS, SEP_TOKENS, find_token
from ..models.task_head import refuse_task_model
from ..runtime import autocast, resolve_precision


def require_encoder(model: torch.nn.Module, what: str) -> None:
    """Refuse a decoder, an LSTM or an encoder without a masked-LM head: ``what`` needs
    predictions from both sides of a token."""
    refuse_task_model(model, f"{what} needs a language model")
    if not model.is_encoder:
        raise ConfigError(f"{what} needs an encoder model with a masked-LM head (arch=encoder, "
                          f"e.g. trained with --model bert-mini --objective mlm); this model's "
                          f"arch is {model.kind}")
    if not model.has_mlm_head():
        raise ConfigError(f"{what} needs a masked-LM head, and this encoder has none (imported "
                          "without one, e.g. a sentence-embedding model)")


def mask_token_id(tokenizer: Tokenizer) -> int:
    """Id of the tokenizer's [MASK] (or ``<mask>``) token."""
    mask_id = find_token(tokenizer, MASK_TOKENS)
    if mask_id is None:
        raise ConfigError("the tokenizer has no mask token ([MASK] or <mask>); use the tokenizer "
                          "the encoder was trained with")
    return mask_id


def padding_id(tokenizer: Tokenizer) -> int:
    """The [PAD] id, or 0: padded positions are masked out, so any id will do."""
    pad = find_token(tokenizer, PAD_TOKENS)
    return 0 if pad is None else pad


def frame_ids(tokenizer: Tokenizer) -> tuple[int | None, int | None]:
    """(cls_id, sep_id): the tokens the MLM objective put around every training window."""
    return find_token(tokenizer, CLS_TOKENS), find_token(tokenizer, SEP_TOKENS)


def wrap(ids: Sequence[int], cls_id: int | None, sep_id: int | None) -> list[int]:
    """``[CLS] ids [SEP]``, leaving out whichever of the two the tokenizer lacks."""
    return ([cls_id] if cls_id is not None else []) + list(ids) + ([sep_id] if sep_id is not None else [])


def unpredictable_ids(tokenizer: Tokenizer, model_vocab: int) -> torch.Tensor:
    """Boolean (model_vocab,): special tokens ([PAD], [UNK], [CLS], [SEP], [MASK], ...) and the
    padding rows of a model vocabulary larger than the tokenizer's, which no text decodes to."""
    special = torch.zeros(model_vocab, dtype=torch.bool)
    special[min(tokenizer.get_vocab_size(with_added_tokens=True), model_vocab):] = True
    added = [i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special]
    for candidates in (MASK_TOKENS, CLS_TOKENS, SEP_TOKENS, PAD_TOKENS):
        added.append(find_token(tokenizer, candidates))
    for idx in added:
        if idx is not None and idx < model_vocab:
            special[idx] = True
    return special


def model_autocast(model: torch.nn.Module, precision: str):
    """The autocast context for ``precision`` on the model's device."""
    device = next(model.parameters()).device
    return autocast(device, resolve_precision(precision, device))

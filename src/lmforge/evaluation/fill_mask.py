"""Fill in the blanks with a masked-LM encoder: the most likely tokens for each [MASK].

    for guesses in fill_mask(model, tok, "The capital of France is [MASK].", top_k=5):
        guesses[0].token, guesses[0].prob

The text is framed as in training ([CLS] text [SEP]) and read in one forward pass. Each mask is
predicted from the whole text with every other mask still hidden (as BERT and Hugging Face's
fill-mask pipeline do), so several masks are guessed independently, not jointly.
Probabilities are a softmax over the real vocabulary: special tokens ([UNK], [SEP], [MASK], ...)
are never proposed and their share of the probability is spread over the rest.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError
from ..objectives.mlm import continuation_flags
from ..tokenization import encode
from .masked_inputs import (frame_ids, mask_token_id, model_autocast, require_encoder,
                            unpredictable_ids, wrap)

# Written in the text where a token should be predicted; either works with any mask token.
MASK_LITERALS = re.compile(r"\[MASK\]|<mask>")


class Prediction(NamedTuple):
    """One guess for a mask: vocabulary string, probability and id."""

    token: str
    prob: float
    token_id: int


def encode_masked(tokenizer: Tokenizer, text: str, mask_id: int) -> list[int]:
    """Ids of ``text`` with every ``[MASK]`` / ``<mask>`` as the mask id. A whitespace-only token
    just before a mask (byte-level BPE's lone ``Ġ``) is dropped: the mask stands for a whole
    word, its leading space included, as in training."""
    if not MASK_LITERALS.search(text):
        raise DataError("no mask in the text: write [MASK] (or <mask>) where a token should be "
                        "predicted")
    mask = tokenizer.id_to_token(mask_id)
    try:
        ids = encode(tokenizer, MASK_LITERALS.sub(mask, text))
    except Exception as exc:  # the Rust side raises a bare Exception
        raise DataError(f"cannot encode the text: {exc}") from None
    out: list[int] = []
    for token_id in ids:
        if (token_id == mask_id and out and out[-1] != mask_id
                and tokenizer.decode(out[-1:], skip_special_tokens=False).isspace()):
            out.pop()
        out.append(token_id)
    return out


@torch.inference_mode()
def fill_mask(model: torch.nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5,
              precision: str = "fp32") -> list[list[Prediction]]:
    """The ``top_k`` most likely tokens for each mask in ``text``, most likely first: one list
    per mask, in the order the masks appear."""
    require_encoder(model, "fill-mask")
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    mask_id = mask_token_id(tokenizer)
    seq = wrap(encode_masked(tokenizer, text, mask_id), *frame_ids(tokenizer))
    context = model.config.context_length
    if len(seq) > context:
        raise DataError(f"the text is {len(seq)} tokens with [CLS]/[SEP], more than the model's "
                        f"context of {context}")
    device = next(model.parameters()).device
    ids = torch.tensor([seq], device=device)
    with model_autocast(model, precision):
        logits = model.mlm_logits(model(ids), ids == mask_id).float()
    banned = unpredictable_ids(tokenizer, logits.shape[-1]).to(device)
    probs = logits.masked_fill(banned, float("-inf")).softmax(dim=-1)
    top = probs.topk(min(top_k, int((~banned).sum())), dim=-1)
    return [[Prediction(tokenizer.id_to_token(i), p, i)
             for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)]


def fill_in(tokenizer: Tokenizer, text: str, token_ids: list[int]) -> str:
    """``text`` with its masks replaced, in order, by ``token_ids`` (e.g. the top guesses). A
    piece that continues a word (WordPiece ``##ing``; byte-level ``ing`` without ``Ġ``) is
    joined to the word before the mask."""
    continues = continuation_flags(tokenizer)
    parts = MASK_LITERALS.split(text)
    out = parts[0]
    for token_id, after in zip(token_ids, parts[1:]):
        piece = tokenizer.id_to_token(token_id)
        word = piece[2:] if piece.startswith("##") else tokenizer.decode([token_id]).strip()
        if token_id < len(continues) and continues[token_id]:
            out = out.rstrip()
        out += word + after
    return out

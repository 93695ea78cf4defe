"""Inspect a tokenizer (kind, vocab, special tokens, end-of-text id) and encode/decode with it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from ..errors import DataError
from .load import tokenizer_sha256

# End-of-text conventions of GPT-2, Llama/T5, BERT and others, in order of preference.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")


def eos_token_id(tok: Tokenizer) -> int | None:
    """Id of the first of ``<|endoftext|>``, ``</s>``, ``[SEP]``, ``<eos>`` in the vocab, else None."""
    for token in EOS_CANDIDATES:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


def special_tokens(tok: Tokenizer) -> list[str]:
    """The special (added) tokens of ``tok``, by id."""
    added = tok.get_added_tokens_decoder()
    return [added[i].content for i in sorted(added) if added[i].special]


def vocab_size(tok: Tokenizer) -> int:
    """Number of ids ``tok`` can produce (model vocab plus added tokens)."""
    return tok.get_vocab_size(with_added_tokens=True)


def _describe(node: dict[str, Any] | None) -> str:
    """'NFKC', 'Sequence(NFC, Lowercase)' ... for a normalizer/pre-tokenizer/decoder JSON node."""
    if not node:
        return "none"
    for key in ("normalizers", "pretokenizers", "decoders", "processors"):
        if key in node:
            return f"{node['type']}({', '.join(_describe(n) for n in node[key])})"
    return node["type"]


def _kind(spec: dict[str, Any]) -> str:
    model = spec["model"]["type"]
    pre_tokenizer = (spec.get("pre_tokenizer") or {}).get("type")
    if model == "WordLevel" and pre_tokenizer in ("Split", "WhitespaceSplit"):
        return "char" if pre_tokenizer == "Split" else "word"
    if model == "BPE":
        byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
        return "bpe" if byte_level else "bpe (not byte-level)"
    return model.lower()


def tokenizer_info(tok: Tokenizer) -> dict[str, Any]:
    """A summary of ``tok``: kind, model type, vocab size, special tokens, EOS, pipeline parts."""
    spec = json.loads(tok.to_str())
    eos = eos_token_id(tok)
    return {
        "kind": _kind(spec),
        "model": spec["model"]["type"],
        "vocab_size": vocab_size(tok),
        "special_tokens": special_tokens(tok),
        "eos_token": tok.id_to_token(eos) if eos is not None else None,
        "eos_id": eos,
        "unk_token": spec["model"].get("unk_token"),
        "normalizer": _describe(spec.get("normalizer")),
        "pre_tokenizer": _describe(spec.get("pre_tokenizer")),
        "post_processor": _describe(spec.get("post_processor")),
        "decoder": _describe(spec.get("decoder")),
        "sha256": tokenizer_sha256(tok),
    }


def encode(tok: Tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text``; ``add_special_tokens`` applies the post-processor (e.g. [CLS] ... [SEP])."""
    return tok.encode(text, add_special_tokens=add_special_tokens).ids


def decode(tok: Tokenizer, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """Text of ``ids``; special tokens are kept by default so that decode(encode(x)) == x."""
    size = vocab_size(tok)
    for token_id in ids:
        if not 0 <= token_id < size:
            raise DataError(f"token id {token_id} is out of range for vocab size {size}")
    return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

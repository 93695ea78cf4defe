"""Tokenizers: train (char, byte-level BPE, WordPiece), load, save, inspect, encode and decode.

    tok = train_tokenizer(["corpus.txt"], kind="bpe", vocab_size=4096)
    save_tokenizer(tok, "runs/tok")              # runs/tok/tokenizer.json
    tok = load_tokenizer("shared/data/tokenizers/gpt2")
    encode(tok, "Hello world")                   # [15496, 995]
"""

from .info import (EOS_CANDIDATES, decode, encode, eos_token_id, special_tokens, tokenizer_info,
                   vocab_size)
from .load import TOKENIZER_FILE, load_tokenizer, save_tokenizer, tokenizer_sha256
from .train import DEFAULT_SPECIAL_TOKENS, KINDS, train_tokenizer

__all__ = [
    "DEFAULT_SPECIAL_TOKENS", "EOS_CANDIDATES", "KINDS", "TOKENIZER_FILE",
    "decode", "encode", "eos_token_id", "load_tokenizer", "save_tokenizer", "special_tokens",
    "tokenizer_info", "tokenizer_sha256", "train_tokenizer", "vocab_size",
]

"""Load and save tokenizers, and fingerprint them.

``load_tokenizer`` understands a ``tokenizer.json`` (file or folder), a GPT-2 style folder with
``vocab.json`` + ``merges.txt``, and a BERT style folder (or file) with ``vocab.txt``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models

from ..errors import DataError
from ..files import atomic_file
from .pipelines import (BERT_SPECIALS, BERT_UNK, bert_post_processor, set_bert_pipeline,
                        set_byte_level_pipeline)

TOKENIZER_FILE = "tokenizer.json"
# Tokens of a vocab.json that are control tokens rather than text (GPT-2, RoBERTa conventions).
_GPT2_STYLE_SPECIAL = re.compile(r"<\|[^|<>]+\|>|<s>|</s>|<pad>|<unk>|<mask>")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_json(path: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception
        raise DataError(f"cannot load tokenizer {path}: {_first_line(exc)}") from None
    # Some published tokenizer.json files switch on padding/truncation (all-MiniLM-L6-v2: 128);
    # lmforge pads batches itself and never cuts text silently.
    tok.no_padding()
    tok.no_truncation()
    return tok


def _from_gpt2_files(folder: Path) -> Tokenizer:
    """A byte-level BPE from ``vocab.json`` + ``merges.txt``; ids are exactly the file's ids."""
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        tok = Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    except Exception as exc:
        raise DataError(f"cannot load GPT-2 style tokenizer from {folder}: {_first_line(exc)}") from None
    set_byte_level_pipeline(tok)
    specials = sorted((t for t in vocab if _GPT2_STYLE_SPECIAL.fullmatch(t)), key=vocab.get)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def _vocab_is_lowercase(tokens: list[str]) -> bool:
    return not any(t.lower() != t for t in tokens if not (t.startswith("[") and t.endswith("]")))


def _from_bert_vocab(vocab_path: Path) -> Tokenizer:
    """A BERT WordPiece from ``vocab.txt`` (one token per line, line number = id)."""
    try:
        tokens = vocab_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {vocab_path}: {_first_line(exc)}") from None
    if BERT_UNK not in tokens:
        raise DataError(f"{vocab_path}: no {BERT_UNK} token, not a BERT vocab.txt")
    config_path = vocab_path.parent / "tokenizer_config.json"
    lowercase = _vocab_is_lowercase(tokens)
    if config_path.is_file():
        try:
            lowercase = bool(json.loads(config_path.read_text(encoding="utf-8"))
                             .get("do_lower_case", lowercase))
        except (OSError, ValueError):
            pass  # a broken side file: keep the guess from the vocab
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=BERT_UNK, continuing_subword_prefix="##"))
    set_bert_pipeline(tok, lowercase=lowercase, normalization=None)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in BERT_SPECIALS if t in vocab])
    tok.post_processor = bert_post_processor(tok)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer.json`` file or a folder holding one of:
    ``tokenizer.json``; ``vocab.json`` + ``merges.txt`` (GPT-2 byte-level BPE, with
    ``<|endoftext|>`` as a special token); ``vocab.txt`` (BERT WordPiece); or a training run
    folder, whose ``model/`` holds the tokenizer (as ``from_pretrained(RUN_FOLDER)`` reads it).
    Raises DataError with one clear line when nothing loadable is there.
    """
    path = Path(path)
    if path.is_file() and path.name in ("vocab.json", "merges.txt"):
        path = path.parent
    if path.is_file() and path.suffix == ".gguf":  # read with the model, a layer above
        raise DataError(f"{path}: a GGUF file's tokenizer is read with its model: pass the file "
                        "as the model (lmforge.pipeline, predict, embed and every --model do)")
    if path.is_file():
        return _from_bert_vocab(path) if path.suffix == ".txt" else _from_json(path)
    if not path.is_dir():
        raise DataError(f"tokenizer not found: {path}")
    if (path / TOKENIZER_FILE).is_file():
        return _from_json(path / TOKENIZER_FILE)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _from_gpt2_files(path)
    if (path / "vocab.txt").is_file():
        return _from_bert_vocab(path / "vocab.txt")
    if (path / "model").is_dir() and path.name != "model":  # a run folder: its exported model
        try:
            return load_tokenizer(path / "model")
        except DataError:
            pass  # say what is missing in the folder the user named
    raise DataError(f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, "
                    "vocab.txt, or a run folder's model/ holding one")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write ``tok`` as ``tokenizer.json`` (into folder ``path``, or to ``path`` if it ends in .json).

    The file loads with ``tokenizers.Tokenizer.from_file`` and with
    ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``. Returns the file written.
    """
    path = Path(path)
    target = path if path.suffix == ".json" else path / TOKENIZER_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as partial:  # readers never see a half-written file
        tok.save(str(partial), pretty=True)
    return target


def canonical_json(tok: Tokenizer) -> str:
    """The tokenizer's JSON with sorted keys and no whitespace: equal tokenizers, equal text."""
    return json.dumps(json.loads(tok.to_str()), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


def tokenizer_sha256(tok: Tokenizer) -> str:
    """SHA-256 hex digest of :func:`canonical_json`: identifies a tokenizer across save/load."""
    return hashlib.sha256(canonical_json(tok).encode("utf-8")).hexdigest()

"""Train a tokenizer on raw text: char-level, word-level, GPT-2 style byte-level BPE, or BERT
WordPiece.

All four are Hugging Face ``tokenizers`` pipelines, so a trained tokenizer saves as a standard
``tokenizer.json`` that ``transformers`` loads too. Training text is streamed from the files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ..errors import ConfigError, DataError
from ..readers import TEXT, expand_inputs, input_format, iter_documents, iter_lines
from .pipelines import (BERT_SPECIALS, BERT_UNK, CHAR_UNK, ENDOFTEXT, NORMALIZATIONS,
                        bert_post_processor, set_bert_pipeline, set_byte_level_pipeline,
                        set_char_pipeline, set_word_pipeline, text_normalizer)

KINDS = ("char", "word", "bpe", "wordpiece")
DEFAULT_SPECIAL_TOKENS = {"char": [ENDOFTEXT], "word": [ENDOFTEXT], "bpe": [ENDOFTEXT],
                          "wordpiece": BERT_SPECIALS}
BYTE_ALPHABET = 256
UNLIMITED_VOCAB = 1 << 30
TRAIN_BATCH_LINES = 1000


def _check_args(kind: str, vocab_size: int | None, specials: list[str],
                normalization: str | None, min_frequency: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"tokenizer kind must be one of {', '.join(KINDS)}, got '{kind}'")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be none, nfc or nfkc, got '{normalization}'")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be at least 1, got {min_frequency}")
    if len(set(specials)) != len(specials) or not all(specials):
        raise ConfigError("special tokens must be distinct non-empty strings")
    if vocab_size is None:
        if kind not in ("char", "word"):
            raise ConfigError(f"vocab_size is required for a {kind} tokenizer")
        return
    smallest = len(specials) + (BYTE_ALPHABET if kind == "bpe" else 1)
    if vocab_size < smallest:
        what = "256 bytes + special tokens" if kind == "bpe" else "special tokens + 1"
        raise ConfigError(f"vocab_size {vocab_size} is too small for {kind}: need at least "
                          f"{smallest} ({what})")


def _training_text(paths: Sequence[str], encoding: str, counter: list[int]) -> Iterator[list[str]]:
    """Batches of lines (newlines kept, so a char vocab learns them) or JSONL/Parquet records."""
    batch: list[str] = []
    for path in paths:
        if input_format(path) == TEXT:
            texts = iter_lines(path, encoding)
        else:
            texts = iter_documents(path, encoding=encoding)
        for text in texts:
            batch.append(text)
            counter[0] += len(text)
            if len(batch) >= TRAIN_BATCH_LINES:
                yield batch
                batch = []
    if batch:
        yield batch


def _model_and_trainer(kind: str, vocab_size: int | None, specials: list[str],
                       min_frequency: int, show_progress: bool):
    if kind == "char":
        # A character seen once is still a character: min_frequency does not apply.
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size or UNLIMITED_VOCAB,
                                            min_frequency=1, special_tokens=specials,
                                            show_progress=show_progress)
        return Tokenizer(models.WordLevel(unk_token=CHAR_UNK)), trainer
    if kind == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=specials, show_progress=show_progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        return Tokenizer(models.BPE()), trainer
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=specials, show_progress=show_progress,
                                        continuing_subword_prefix="##")
    return Tokenizer(models.WordPiece(unk_token=BERT_UNK, continuing_subword_prefix="##")), trainer


def _word_vocab(tokenizer: Tokenizer, batches: Iterable[list[str]], specials: list[str],
                vocab_size: int | None, min_frequency: int) -> dict[str, int]:
    """Specials first, then the words seen ``min_frequency`` times or more, most frequent first
    (ties by word), capped at ``vocab_size`` ids in all.

    Counted here rather than by ``WordLevelTrainer``: it counts a word equal to a special token
    (WikiText's literal ``<unk>``) as a word too, and the two ids then collide, leaving holes.
    """
    counts: Counter[str] = Counter()
    for batch in batches:
        for text in batch:
            if tokenizer.normalizer is not None:
                text = tokenizer.normalizer.normalize_str(text)
            counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text))
    for token in specials:
        counts.pop(token, None)
    words = sorted((w for w, c in counts.items() if c >= min_frequency),
                   key=lambda w: (-counts[w], w))
    if vocab_size is not None:
        words = words[:vocab_size - len(specials)]
    return {token: i for i, token in enumerate([*specials, *words])}


def train_tokenizer(files: Sequence[str | Path], kind: str = "bpe", vocab_size: int | None = None,
                    special_tokens: Sequence[str] | None = None, lowercase: bool = False,
                    normalization: str | None = None, min_frequency: int = 2,
                    encoding: str = "utf-8", show_progress: bool = False) -> Tokenizer:
    """Train a ``kind`` tokenizer ("char", "word", "bpe" or "wordpiece") on text files or folders.

    - char: one token per Unicode character (newline included) and a ``<unk>`` for characters
      never seen; ``vocab_size`` (optional) caps the vocab to the most frequent characters.
    - word: one token per whitespace-separated word, for already tokenized text (WikiText,
      PTB); words seen fewer than ``min_frequency`` times, beyond the ``vocab_size`` most
      frequent (optional cap) or never seen are ``<unk>``. Decoding joins words with single
      spaces, so text with single spaces between tokens round-trips (line breaks do not:
      a prepared dataset marks them with its end-of-text id when lines are documents).
    - bpe: GPT-2 style byte-level BPE; all 256 bytes are in the vocab, so nothing is unknown
      and decode(encode(text)) == text.
    - wordpiece: BERT style (BertNormalizer, BertPreTokenizer, ``##`` continuations) with the
      post-processor ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]``.

    ``special_tokens`` default to ``<|endoftext|>`` (char, word, bpe) or ``[PAD] [UNK] [CLS] [SEP]
    [MASK]`` (wordpiece) and take the first ids. ``files`` may hold .txt, .jsonl, .parquet,
    .gz files and folders of them, read as ``encoding``; text is streamed, never loaded whole.
    """
    specials = list(DEFAULT_SPECIAL_TOKENS.get(kind, []) if special_tokens is None else special_tokens)
    if normalization == "none":
        normalization = None
    _check_args(kind, vocab_size, specials, normalization, min_frequency)
    # The model's unknown token must exist in the vocab, or unseen text fails to encode.
    unk = {"char": CHAR_UNK, "word": CHAR_UNK, "wordpiece": BERT_UNK}.get(kind)
    if unk and unk not in specials:
        specials.append(unk)
    paths = expand_inputs(files)

    if kind == "word":
        return _train_word_tokenizer(paths, specials, vocab_size, lowercase, normalization,
                                     min_frequency, encoding, files)
    tokenizer, trainer = _model_and_trainer(kind, vocab_size, specials, min_frequency, show_progress)
    if kind == "char":
        set_char_pipeline(tokenizer)
        tokenizer.normalizer = text_normalizer(lowercase, normalization)
    elif kind == "bpe":
        set_byte_level_pipeline(tokenizer)
        tokenizer.normalizer = text_normalizer(lowercase, normalization)
    else:
        set_bert_pipeline(tokenizer, lowercase, normalization)

    chars = [0]
    tokenizer.train_from_iterator(_training_text(paths, encoding, chars), trainer=trainer)
    if chars[0] == 0:
        raise DataError(f"no text to train on in: {', '.join(map(str, files))}")
    if kind == "wordpiece":
        tokenizer.post_processor = bert_post_processor(tokenizer)
    return tokenizer


def _train_word_tokenizer(paths: list, specials: list[str], vocab_size: int | None,
                          lowercase: bool, normalization: str | None, min_frequency: int,
                          encoding: str, files: Sequence[str | Path]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({CHAR_UNK: 0}, unk_token=CHAR_UNK))  # vocab set below
    set_word_pipeline(tokenizer)
    tokenizer.normalizer = text_normalizer(lowercase, normalization)
    chars = [0]
    vocab = _word_vocab(tokenizer, _training_text(paths, encoding, chars), specials, vocab_size,
                        min_frequency)
    if chars[0] == 0:
        raise DataError(f"no text to train on in: {', '.join(map(str, files))}")
    tokenizer.model = models.WordLevel(vocab, unk_token=CHAR_UNK)
    tokenizer.add_special_tokens(specials)  # matched in raw text, kept at their ids
    return tokenizer

"""The on-disk layout of a prepared dataset, shared by its writer (:mod:`.prepare`) and its
reader (:mod:`.dataset`): ``meta.json``, ``{split}-NNNNN.bin`` token shards and, with sentence
splitting, a ``.sent.bin`` index of sentence starts beside each shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError

FORMAT = "lmforge-tokens/1"
META_FILE = "meta.json"
SENTENCE_INDEX_SUFFIX = ".sent.bin"
SENTENCE_DTYPE = np.dtype("<u8")


def sentence_index_name(shard: str) -> str:
    """``train-00000.bin`` -> ``train-00000.sent.bin``: the sentence index beside a shard."""
    return shard[:-len(".bin")] + SENTENCE_INDEX_SUFFIX


def read_meta(root: Path) -> dict:
    path = Path(root) / META_FILE
    if not Path(root).exists():
        raise DataError(f"dataset not found: {root}")
    if not path.is_file():
        raise DataError(f"{root} is not a prepared dataset (no meta.json); run `lmforge prepare` first")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt {path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta

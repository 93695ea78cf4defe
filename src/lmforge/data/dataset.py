"""Read prepared token shards through ``numpy.memmap`` and cut them into fixed-length windows.

Samplers, all with explicit state so a resumed run sees exactly the batches it would have:
``RandomWindows`` draws window starts uniformly (nanoGPT style); ``SequentialWindows`` walks
non-overlapping windows in a shuffled order, epoch by epoch; ``StreamBatches`` walks parallel
contiguous streams for recurrent models (truncated BPTT).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DataError
from .layout import read_meta, sentence_index_name

_SCAN_TOKENS = 1 << 24  # EOS search block: bounds the memory of documents()


class MissingSplitError(DataError):
    """A prepared dataset without the split asked for (e.g. no validation tokens)."""


class TokenShards:
    """One split of a prepared dataset: a list of memmapped shards of token ids.

    Documents (ended by the EOS id) and, for datasets prepared with ``--split-sentences``,
    sentences can be read too: :meth:`documents`, :meth:`sentences`,
    :meth:`document_sentences`, :meth:`sample_document`, :meth:`iter_document_sentences`.
    """

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        info = self.meta["splits"].get(split)
        if not info or not info.get("tokens"):
            raise MissingSplitError(f"dataset {self.root} has no '{split}' tokens")
        self.split = split
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.shards, self.names = [], []
        for name, count in zip(info["shards"], info["shard_tokens"]):
            path = self.root / name
            if not path.is_file():
                raise DataError(f"dataset shard missing: {path}")
            if path.stat().st_size != count * dtype.itemsize:
                raise DataError(f"dataset shard {path} has {path.stat().st_size} bytes, "
                                f"meta.json says {count} tokens of {dtype.name}")
            if count:
                self.shards.append(np.memmap(path, dtype=dtype, mode="r", shape=(count,)))
                self.names.append(name)
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        if self.has_sentences:
            self._check_sentence_index(info)
        self._documents: dict[int, np.ndarray] = {}
        self._sentences: dict[int, np.ndarray] = {}

    def _check_sentence_index(self, info: dict) -> None:
        counts = dict(zip(info["shards"], info.get("shard_sentences", [])))
        for name in self.names:
            path = self.root / sentence_index_name(name)
            if not path.is_file():
                raise DataError(f"dataset sentence index missing: {path}")
            if name in counts and path.stat().st_size != 8 * counts[name]:
                raise DataError(f"sentence index {path} has {path.stat().st_size} bytes, "
                                f"meta.json says {counts[name]} sentences of uint64")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def window_starts(self, length: int) -> np.ndarray:
        """Per shard, how many window starts exist for windows of ``length`` tokens."""
        return np.maximum(self.lengths - length + 1, 0)

    def window(self, shard: int, start: int, length: int) -> np.ndarray:
        return np.asarray(self.shards[shard][start:start + length], dtype=np.int64)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``start .. start + length`` of the split read as one sequence (shards
        concatenated in order), across shard boundaries."""
        parts, ends = [], np.cumsum(self.lengths)
        shard = int(np.searchsorted(ends, start, side="right"))
        offset = start - (int(ends[shard - 1]) if shard else 0)
        while length > 0 and shard < len(self.shards):
            part = self.window(shard, offset, length)
            parts.append(part)
            length -= len(part)
            shard, offset = shard + 1, 0
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def eos_id(self) -> int:
        """The id that ends every document."""
        return int(self.meta["eos_id"])

    @property
    def has_sentences(self) -> bool:
        """Whether the dataset has a sentence index (``lmforge prepare --split-sentences``)."""
        return bool(self.meta.get("sentence_index", False))

    def documents(self, shard: int) -> np.ndarray:
        """``(n, 2)`` int64 ``(start, end)`` token offsets of the documents of ``shard``.

        Found from the EOS positions (on first use, then cached); ``end`` is the EOS position,
        so the EOS is not part of the span. Without a sentence index a shard may begin inside a
        document cut by the previous shard, and tokens after its last EOS (a document that the
        next shard continues) belong to no span; with one, shards hold whole documents.
        """
        if shard not in self._documents:
            tokens, eos = self.shards[shard], self.eos_id
            ends = np.concatenate([np.flatnonzero(tokens[i:i + _SCAN_TOKENS] == eos) + i
                                   for i in range(0, len(tokens), _SCAN_TOKENS)])
            starts = np.concatenate([[0], ends[:-1] + 1]) if ends.size else ends
            self._documents[shard] = np.stack([starts, ends], axis=1).astype(np.int64)
        return self._documents[shard]

    def sentences(self, shard: int) -> np.ndarray:
        """Sorted int64 token offsets, within ``shard``, where its sentences start."""
        self._require_sentences()
        if shard not in self._sentences:
            path = self.root / sentence_index_name(self.names[shard])
            # Stored as uint64; read as int64 (same bytes below 2**63) so that arithmetic with
            # other offsets stays integer instead of turning into float64.
            self._sentences[shard] = np.memmap(path, dtype="<i8", mode="r") \
                if path.stat().st_size else np.zeros(0, dtype=np.int64)
        return self._sentences[shard]

    def document_sentences(self, shard: int, doc: int) -> list[np.ndarray]:
        """Document ``doc`` of ``shard`` as a list of its sentences' int64 token ids (no EOS)."""
        start, end = (int(x) for x in self.documents(shard)[doc])
        index = self.sentences(shard)
        if start == end:
            return []
        # Sentence starts inside the document, past its first token (which always starts one).
        lo, hi = np.searchsorted(index, [start + 1, end])
        tokens = np.asarray(self.shards[shard][start:end], dtype=np.int64)
        return np.split(tokens, np.asarray(index[lo:hi], dtype=np.int64) - start)

    def iter_document_sentences(self) -> Iterator[list[np.ndarray]]:
        """Every document of the split, in order, as :meth:`document_sentences` gives it."""
        self._require_sentences()
        for shard in range(len(self.shards)):
            for doc in range(len(self.documents(shard))):
                yield self.document_sentences(shard, doc)

    def sample_document(self, rng: np.random.Generator) -> list[np.ndarray]:
        """A uniformly random document of the split as a list of sentence token arrays.

        What a next-sentence / sentence-order pair builder draws from. The first call scans
        every shard for its documents.
        """
        self._require_sentences()
        counts = np.array([len(self.documents(s)) for s in range(len(self.shards))])
        if not counts.sum():
            raise DataError(f"the {self.split} split of {self.root} has no complete document")
        shard, doc = _locate(counts, np.array([rng.integers(counts.sum())]))
        return self.document_sentences(int(shard[0]), int(doc[0]))

    def _require_sentences(self) -> None:
        if not self.has_sentences:
            raise DataError(f"dataset {self.root} was prepared without --split-sentences; "
                            "NSP/SOP need sentence boundaries")


def _locate(counts: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map flat indices over concatenated per-shard ranges to (shard, offset)."""
    ends = np.cumsum(counts)
    shard = np.searchsorted(ends, flat, side="right")
    offset = flat - (ends[shard] - counts[shard])
    return shard, offset


def _row_range(batch_size: int, rows: tuple[int, int] | None) -> tuple[int, int]:
    """The rows of every batch a sampler reads: ``rows`` (one data-parallel rank's share of the
    global batch) or all of them."""
    lo, hi = rows if rows is not None else (0, batch_size)
    if not 0 <= lo < hi <= batch_size:
        raise ValueError(f"rows {rows} outside a batch of {batch_size}")
    return lo, hi


class RandomWindows:
    """Windows of ``length`` tokens at uniformly random starts; state = the generator state.

    With ``rows=(lo, hi)`` (a data-parallel rank) the whole batch's starts are drawn, so the
    generator advances exactly as in one process, but only rows lo..hi are read."""

    def __init__(self, data: TokenShards, length: int, batch_size: int, seed: int,
                 rows: tuple[int, int] | None = None):
        self.data, self.length, self.batch_size = data, length, batch_size
        self.lo, self.hi = _row_range(batch_size, rows)
        self.counts = data.window_starts(length)
        self.total = int(self.counts.sum())
        if self.total <= 0:
            raise DataError(f"the {data.split} split ({len(data)} tokens) is shorter than one "
                            f"window of {length} tokens; lower block_size")
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> torch.Tensor:
        flat = torch.randint(self.total, (self.batch_size,), generator=self.generator).numpy()
        shard, offset = _locate(self.counts, flat[self.lo:self.hi])
        return torch.from_numpy(np.stack([self.data.window(s, o, self.length)
                                          for s, o in zip(shard, offset)]))

    def state_dict(self) -> dict:
        return {"kind": "random", "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class SequentialWindows:
    """Non-overlapping windows, shuffled per epoch by ``seed + epoch``; state = (epoch, index).
    ``rows=(lo, hi)``: read only those rows of every batch (see ``RandomWindows``)."""

    def __init__(self, data: TokenShards, length: int, batch_size: int, seed: int,
                 shuffle: bool = True, stride: int | None = None,
                 rows: tuple[int, int] | None = None):
        self.data, self.length, self.batch_size = data, length, batch_size
        self.lo, self.hi = _row_range(batch_size, rows)
        self.seed, self.shuffle = seed, shuffle
        # Windows overlap by one token for causal LM (length = block + 1, stride = block).
        self.stride = stride or length
        self.counts = np.array([max((n - length) // self.stride + 1, 0) for n in data.lengths])
        self.total = int(self.counts.sum())
        if self.total <= 0:
            raise DataError(f"the {data.split} split ({len(data)} tokens) is shorter than one "
                            f"window of {length} tokens; lower block_size")
        self.epoch, self.index = 0, 0
        self._order = self._make_order()

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.total // self.batch_size)

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.total)
        return np.random.default_rng(self.seed + self.epoch).permutation(self.total)

    def next_batch(self) -> torch.Tensor:
        rows = []
        for row in range(self.batch_size):
            if self.index >= self.total:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._make_order()
            flat = self._order[self.index: self.index + 1]
            self.index += 1
            if self.lo <= row < self.hi:
                shard, k = _locate(self.counts, flat)
                rows.append(self.data.window(int(shard[0]), int(k[0]) * self.stride, self.length))
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict:
        return {"kind": "sequential", "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._make_order()


def fixed_windows(data: TokenShards, length: int, count: int, stride: int | None = None) -> torch.Tensor:
    """``count`` windows spread evenly over the split: the same validation set at every eval."""
    stride = stride or length
    seq = SequentialWindows(data, length, 1, seed=0, shuffle=False, stride=stride)
    count = min(count, seq.total)
    picks = np.linspace(0, seq.total - 1, count).round().astype(np.int64)
    shard, k = _locate(seq.counts, picks)
    return torch.from_numpy(np.stack([data.window(int(s), int(o) * stride, length)
                                      for s, o in zip(shard, k)]))


class StreamBatch(NamedTuple):
    """A batch of ``StreamBatches``: the windows and whether they start the streams (the first
    batch of an epoch), where carried state must be dropped."""

    windows: torch.Tensor  # (streams, block_size + 1)
    starts: bool


class StreamBatches:
    """Parallel contiguous streams, the classic Penn Treebank batching for truncated BPTT.

    The split, read as one sequence, is cut into ``batch_size`` equal streams (a remainder of
    fewer than ``batch_size`` tokens is dropped). Batch k holds tokens ``k*T .. k*T + T`` of
    every stream (T = ``block_size`` inputs, the last token only as a target), so row i of
    batch k + 1 continues row i of batch k. An epoch ends when a stream has no full window left
    (up to T - 1 tokens per stream are skipped); the next starts over at position 0.
    State = (epoch, position). ``rows=(lo, hi)``: read only streams lo..hi (one rank's).
    """

    def __init__(self, data: TokenShards, block_size: int, batch_size: int,
                 rows: tuple[int, int] | None = None):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.lo, self.hi = _row_range(batch_size, rows)
        self.stream_length = len(data) // batch_size
        self.steps_per_epoch = max(self.stream_length - 1, 0) // block_size
        if self.steps_per_epoch < 1:
            raise DataError(f"the {data.split} split ({len(data)} tokens) is too short for "
                            f"{batch_size} streams of {block_size + 1} tokens; lower batch_size "
                            "or block_size")
        self.epoch, self.position = 0, 0  # position: tokens into every stream

    def next_batch(self) -> StreamBatch:
        if self.position + self.block_size + 1 > self.stream_length:
            self.epoch, self.position = self.epoch + 1, 0
        rows = [self.data.read(i * self.stream_length + self.position, self.block_size + 1)
                for i in range(self.lo, self.hi)]
        batch = StreamBatch(torch.from_numpy(np.stack(rows)), starts=self.position == 0)
        self.position += self.block_size
        return batch

    def state_dict(self) -> dict:
        return {"kind": "streams", "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

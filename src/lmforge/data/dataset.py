"""Read prepared token shards through ``numpy.memmap`` and cut them into fixed-length windows.

Two samplers, both with explicit state so a resumed run sees exactly the batches it would have:
``RandomWindows`` draws window starts uniformly (nanoGPT style); ``SequentialWindows`` walks
non-overlapping windows in a shuffled order, epoch by epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FORMAT = "lmforge-tokens/1"


class TokenShards:
    """One split of a prepared dataset: a list of memmapped shards of token ids."""

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        info = self.meta["splits"].get(split)
        if not info or not info.get("tokens"):
            raise DataError(f"dataset {self.root} has no '{split}' tokens")
        self.split = split
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.shards = []
        for name, count in zip(info["shards"], info["shard_tokens"]):
            path = self.root / name
            if not path.is_file():
                raise DataError(f"dataset shard missing: {path}")
            if path.stat().st_size != count * dtype.itemsize:
                raise DataError(f"dataset shard {path} has {path.stat().st_size} bytes, "
                                f"meta.json says {count} tokens of {dtype.name}")
            if count:
                self.shards.append(np.memmap(path, dtype=dtype, mode="r", shape=(count,)))
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)

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


def read_meta(root: Path) -> dict:
    path = Path(root) / "meta.json"
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


def _locate(counts: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map flat indices over concatenated per-shard ranges to (shard, offset)."""
    ends = np.cumsum(counts)
    shard = np.searchsorted(ends, flat, side="right")
    offset = flat - (ends[shard] - counts[shard])
    return shard, offset


class RandomWindows:
    """Windows of ``length`` tokens at uniformly random starts; state = the generator state."""

    def __init__(self, data: TokenShards, length: int, batch_size: int, seed: int):
        self.data, self.length, self.batch_size = data, length, batch_size
        self.counts = data.window_starts(length)
        self.total = int(self.counts.sum())
        if self.total <= 0:
            raise DataError(f"the {data.split} split ({len(data)} tokens) is shorter than one "
                            f"window of {length} tokens; lower block_size")
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> torch.Tensor:
        flat = torch.randint(self.total, (self.batch_size,), generator=self.generator).numpy()
        shard, offset = _locate(self.counts, flat)
        return torch.from_numpy(np.stack([self.data.window(s, o, self.length)
                                          for s, o in zip(shard, offset)]))

    def state_dict(self) -> dict:
        return {"kind": "random", "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class SequentialWindows:
    """Non-overlapping windows, shuffled per epoch by ``seed + epoch``; state = (epoch, index)."""

    def __init__(self, data: TokenShards, length: int, batch_size: int, seed: int,
                 shuffle: bool = True, stride: int | None = None):
        self.data, self.length, self.batch_size = data, length, batch_size
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

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.total)
        return np.random.default_rng(self.seed + self.epoch).permutation(self.total)

    def next_batch(self) -> torch.Tensor:
        rows = []
        for _ in range(self.batch_size):
            if self.index >= self.total:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._make_order()
            flat = self._order[self.index: self.index + 1]
            self.index += 1
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

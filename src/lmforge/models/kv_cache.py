"""Key/value caches for decoding: :class:`KVCache` holds a batch decoded in lockstep (every row at
the same length, shorter prompts left-padded); :class:`SlotCache` holds independent sequences,
each at its own length, that join and leave a running batch (continuous batching in a server).

A cache tells the model which keys each new query may see (``attention_mask``), stores the new
keys/values of every layer (``update``) and then moves on (``advance``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig


def causal_mask(T: int, start: int, attention_mask: torch.Tensor | None, cached: bool,
                device: torch.device) -> torch.Tensor | None:
    """Boolean (B or 1, 1, T, start + T) mask for T queries after ``start`` cached keys, or None
    where the fused causal kernel applies (no padding, and no cache or a one-token step).

    ``attention_mask`` (B, start + T) marks real tokens with 1 and padding with 0, or, without a
    cache, (B, T, T) says which keys each query may see (packed sequences: a block per example).
    """
    if attention_mask is None and (not cached or T == 1):
        return None
    if attention_mask is None and start == 0 and T > 1 and cached:
        attention_mask = torch.ones(1, T, dtype=torch.bool, device=device)
    q_pos = torch.arange(start, start + T, device=device)[:, None]
    k_pos = torch.arange(start + T, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if attention_mask is not None:
        if attention_mask.dim() == 3:
            mask = mask & attention_mask[:, None].bool()
        else:
            mask = mask & attention_mask[:, None, None, : start + T].bool()
        # A padding query would attend to nothing; some kernels return NaN for such rows.
        # Let every query see itself (its output is ignored anyway).
        mask = mask | (k_pos == q_pos)[None, None]
    return mask


@dataclass
class KVCache:
    """Pre-allocated keys/values for every layer; ``length`` is how many positions are filled."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype,
              device: torch.device) -> "KVCache":
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)])

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def attention_mask(self, T: int, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        return causal_mask(T, self.length, attention_mask, True, self.k[0].device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        self.length += T

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search, dropping finished sequences)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]


class SlotCache:
    """Keys/values of up to ``slots`` independent sequences, each at its own length.

    The running sequences occupy rows ``0 .. active - 1``, so a decoding step attends over views
    of the cache (no gathering copies): :meth:`decode_inputs` gives the step's position ids, the
    model writes each row's new key/value at that row's own length and masks the keys past it.
    A sequence joins with :meth:`insert` (its keys/values from a prefill pass) and leaves with
    :meth:`remove`, which moves the last running row into its place. Memory grows with the
    longest running sequence (doubling, up to ``max_len``) rather than being reserved for the
    whole context up front: 16 slots of SmolLM2's 8,192 positions would hold 3 GB in bf16.
    """

    INITIAL_CAPACITY = 256

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], max_len: int):
        self.k, self.v, self.max_len = k, v, max_len
        slots = k[0].shape[0]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=k[0].device)
        self.host_lengths = [0] * slots  # the same on the host: no device sync per step
        self.active = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, slots: int, max_len: int, dtype: torch.dtype,
              device: torch.device) -> "SlotCache":
        shape = (slots, cfg.n_kv_head, min(max_len, cls.INITIAL_CAPACITY), cfg.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
                   max_len)

    def reserve(self, length: int) -> None:
        """Make room for sequences of ``length`` positions (at most ``max_len``)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise ValueError(f"{length} positions exceed the cache's {self.max_len}")
        size = min(self.max_len, max(length, 2 * self.capacity))

        def grown(t: torch.Tensor) -> torch.Tensor:
            new = t.new_zeros(t.shape[0], t.shape[1], size, t.shape[3])
            new[:, :, :t.shape[2]] = t
            return new
        self.k = [grown(t) for t in self.k]
        self.v = [grown(t) for t in self.v]

    @property
    def slots(self) -> int:
        return self.k[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def length(self) -> int:
        """The longest running sequence (what the model checks against its context)."""
        return max(self.host_lengths[:self.active], default=0)

    def insert(self, source: KVCache, row: int, start: int, end: int) -> int:
        """Add a sequence whose keys/values are ``source``'s row ``row``, positions
        ``start:end`` (a left-padded prefill batch); returns its slot."""
        if self.active == self.slots:
            raise RuntimeError("no free slot")
        slot, size = self.active, end - start
        self.reserve(size)
        for mine, theirs in ((self.k, source.k), (self.v, source.v)):
            for layer in range(len(mine)):
                mine[layer][slot, :, :size] = theirs[layer][row, :, start:end]
        self.lengths[slot] = size
        self.host_lengths[slot] = size
        self.active += 1
        return slot

    def remove(self, slot: int) -> int | None:
        """Free ``slot``; the last running sequence moves into it. Returns the slot that moved
        (now at ``slot``), or None when ``slot`` was the last."""
        last = self.active - 1
        self.active = last
        if slot == last:
            return None
        size = self.host_lengths[last]
        for cache in (self.k, self.v):
            for t in cache:
                t[slot, :, :size] = t[last, :, :size]
        self.lengths[slot] = self.lengths[last]
        self.host_lengths[slot] = size
        return last

    def decode_inputs(self) -> torch.Tensor:
        """Position ids (active, 1) of the running sequences' next tokens."""
        return self.lengths[:self.active, None]

    def attention_mask(self, T: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if T != 1:
            raise ValueError("a SlotCache decodes one token per sequence a step")
        self.reserve(self.length + 1)  # before any layer writes this step's keys
        width = self.length + 1
        keys = torch.arange(width, device=self.lengths.device)
        return (keys[None, :] <= self.lengths[:self.active, None])[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        rows = torch.arange(self.active, device=k.device)
        at = self.lengths[:self.active]
        self.k[layer][rows, :, at] = k[:, :, 0]
        self.v[layer][rows, :, at] = v[:, :, 0]
        width = self.length + 1
        return self.k[layer][:self.active, :, :width], self.v[layer][:self.active, :, :width]

    def advance(self, T: int) -> None:
        self.lengths[:self.active] += T
        for slot in range(self.active):
            self.host_lengths[slot] += T

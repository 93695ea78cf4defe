"""How each kind of model advances a batch of sequences by one token: a *step* gives next-token
logits for growing token sequences and can reorder its rows (its caches with them).

The decoding loops (sampling, greedy, beam search) and the timing behind ``precision="auto"``
are written once over this interface:

- :class:`DecoderStep`: a Transformer decoder over left-padded prompts, with a KV cache;
- :class:`Seq2SeqStep`: an encoder-decoder (the encoder runs once; the decoder keeps a
  self-attention KV cache and the cross-attention keys/values of the encoder output);
- :class:`RecurrentStep`: an LSTM, which carries its state instead of a cache.

    step = make_step(model, prompts, max_len=len(prompt) + 50)
    tokens = start_tokens(model, len(prompts))   # (B, 0), or (B, 1) decoder start tokens
    logits = step(tokens)                        # (B, V) float
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..errors import ConfigError

PAD_ID = 0  # any id works: padded positions are masked out of attention


class Step(Protocol):
    """Next-token logits for a batch of sequences, with state that follows row reordering."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Float logits (N, V) of the token after ``tokens`` (N, t), the sequences so far."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (repeated indices copy a row: one source becomes several beams)."""


def left_pad(prompts: Sequence[Sequence[int]],
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, both (B, T), shorter prompts padded on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so padding does not shift a prompt's positions."""
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def next_logits(model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache) -> torch.Tensor:
    """Float logits (B, V) at the last position. With a cache only the tokens it does not hold
    yet are fed (the whole prompt first, then one token a step); without one the whole sequence
    is recomputed."""
    if cache is not None:
        ids, positions = ids[:, cache.length:], positions[:, cache.length:]
    logits = model(ids, position_ids=positions, attention_mask=mask, cache=cache, last_only=True)
    return logits[:, -1].float()


class DecoderStep:
    """A Transformer decoder as a :class:`Step` over the tokens generated after its left-padded
    prompts (the prompts stay inside the step). ``decode_model``, if given, runs the one-token
    steps once the cache holds the prompts (a compiled twin of ``model``)."""

    def __init__(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_len: int,
                 use_cache: bool = True, decode_model: torch.nn.Module | None = None):
        self.model = model
        self.decode_model = decode_model if use_cache and decode_model is not None else model
        self.ids, self.mask = left_pad(prompts, next(model.parameters()).device)
        self.positions = positions_from_mask(self.mask)
        self.padded = not bool(self.mask.all())  # without padding the fused causal kernels apply
        self.cache = model.new_cache(len(prompts), max_len) if use_cache else None

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        t = generated.shape[1]
        ids = torch.cat([self.ids, generated], dim=1)
        mask = torch.cat([self.mask, torch.ones_like(generated)], dim=1)
        steps = torch.arange(1, t + 1, device=ids.device)[None]
        positions = torch.cat([self.positions, self.positions[:, -1:] + steps], dim=1)
        model = self.decode_model if self.cache is not None and self.cache.length else self.model
        return next_logits(model, ids, positions, mask if self.padded else None, self.cache)

    def reorder(self, index: torch.Tensor) -> None:
        self.ids, self.mask, self.positions = (t.index_select(0, index)
                                               for t in (self.ids, self.mask, self.positions))
        if self.cache is not None:
            self.cache.reorder(index)


class Seq2SeqStep:
    """An encoder-decoder as a :class:`Step`: the sources are encoded once at construction;
    each call decodes the tokens the cache does not hold yet (all of them without a cache)."""

    def __init__(self, model: torch.nn.Module, sources: Sequence[Sequence[int]], max_len: int,
                 use_cache: bool = True):
        self.model = model
        device = next(model.parameters()).device
        width = max(len(s) for s in sources)
        ids = torch.zeros((len(sources), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, source in enumerate(sources):  # right-padded: the encoder sees all positions
            ids[row, :len(source)] = torch.tensor(source, dtype=torch.long)
            mask[row, :len(source)] = 1
        self.mask = mask if not bool(mask.all()) else None
        self.hidden = model.encode(ids, self.mask)
        self.cache = model.new_cache(len(sources), max_len) if use_cache else None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            tokens = tokens[:, self.cache.length:]
        hidden = self.model.decode(tokens, self.hidden, self.mask, self.cache)
        return self.model.logits(hidden[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        self.hidden = self.hidden.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)


class RecurrentStep:
    """A recurrent LM (LSTM) as a :class:`Step`: each prompt is read once at construction, alone
    unless all have the same length, so no padding enters its state; each call feeds the tokens
    generated since the last one and carries the state. There is no context window to fill."""

    def __init__(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                 max_len: int | None = None, use_cache: bool = True):
        self.model = model
        device = next(model.parameters()).device
        groups = [prompts] if len({len(p) for p in prompts}) == 1 else [[p] for p in prompts]
        logits, states = [], []
        for group in groups:
            out, state = model(torch.tensor(group, dtype=torch.long, device=device), last_only=True)
            logits.append(out[:, -1].float())
            states.append(state)
        self.logits = torch.cat(logits)
        self.state = tuple(torch.cat(parts, dim=1) for parts in zip(*states))  # (layers, B, d)
        self.fed = 0  # generated tokens already in the state

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        if generated.shape[1] > self.fed:
            out, self.state = self.model(generated[:, self.fed:], self.state, last_only=True)
            self.logits, self.fed = out[:, -1].float(), generated.shape[1]
        return self.logits

    def reorder(self, index: torch.Tensor) -> None:
        self.logits = self.logits.index_select(0, index)
        self.state = tuple(s.index_select(1, index) for s in self.state)


def make_step(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_len: int,
              use_cache: bool = True, decode_model: torch.nn.Module | None = None) -> Step:
    """The :class:`Step` of ``model``'s kind over ``prompts`` (an encoder-decoder's sources),
    with room for ``max_len`` decoder positions."""
    if model.is_seq2seq:
        return Seq2SeqStep(model, prompts, max_len, use_cache)
    if model.recurrent:
        return RecurrentStep(model, prompts)
    if not model.is_decoder:
        raise ConfigError(f"generation needs a decoder, LSTM or encoder-decoder, got a {model.kind}")
    return DecoderStep(model, prompts, max_len, use_cache, decode_model)


def start_tokens(model: torch.nn.Module, batch: int,
                 decoder_start_token_id: int | None = None) -> torch.Tensor:
    """What every generated sequence begins with, as the step is fed: an encoder-decoder's
    decoder start token (B, 1), nothing (B, 0) for a decoder, whose prompts live in its step."""
    device = next(model.parameters()).device
    if not model.is_seq2seq:
        return torch.zeros((batch, 0), dtype=torch.long, device=device)
    start = decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    if start is None:
        raise ConfigError("the model config has no decoder_start_token_id; pass decoder_start_token_id")
    return torch.full((batch, 1), start, dtype=torch.long, device=device)

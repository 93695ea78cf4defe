"""Denoising objectives for encoder-decoder models: the encoder reads corrupted text, the decoder
writes what was lost (T5) or the original (BART).

``t5_span`` -- T5 span corruption (Raffel et al. 2020). ``noise_density`` of the tokens (15%)
fall in spans of mean length ``mean_span_length`` (3), drawn exactly as T5's
``random_spans_noise_mask``: the numbers of noise tokens and spans are fixed by the length, and
noise and kept spans alternate with random lengths. Each noise span becomes one sentinel
(``<extra_id_0>``, ``<extra_id_1>``, ...) in the input; the target is each sentinel followed by
its span, then the end-of-text token. Raw windows are longer than the model's block so that the
input (and the shorter target) fill it, as T5's ``compute_input_and_target_lengths``.

``bart`` -- BART denoising (Lewis et al. 2020) with switchable noises, applied in fairseq's
order: sentence permutation, token masking, token deletion, text infilling, document rotation.
Text infilling masks ``text_infilling`` of the tokens (30%) in spans of Poisson(3) lengths, each
span replaced by ONE mask token (a zero-length span inserts one). The target is the original
window; sentence permutation needs a dataset prepared with ``--split-sentences``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..data.dataset import RandomWindows, SequentialWindows, TokenShards, _locate
from ..errors import ConfigError
from .base import option, register
from .mlm import MASK_TOKENS, find_token
from .seq2seq import Seq2SeqObjective, Seq2SeqOptions

SENTINEL = "<extra_id_{}>"


# ---------------------------------------------------------------------------------------------
# T5 span corruption


def t5_span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of ``length`` tokens, as T5 counts them."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def t5_lengths(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(input, target) lengths after span corruption of ``length`` tokens, EOS included."""
    num_noise, num_spans = t5_span_counts(length, noise_density, mean_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def t5_window_length(block_size: int, noise_density: float, mean_span_length: float) -> int:
    """The longest raw window whose corrupted input and target both fit ``block_size``."""
    length = 2
    while max(t5_lengths(length + 1, noise_density, mean_span_length)) <= block_size:
        length += 1
    return length


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Lengths (each >= 1, summing to ``num_items``) of a uniformly random split into
    ``num_segments`` consecutive segments."""
    cuts = torch.randperm(num_items - 1, generator=generator)[:num_segments - 1] + 1
    edges = torch.cat([torch.zeros(1, dtype=torch.long), cuts.sort().values,
                       torch.tensor([num_items])])
    return edges.diff()


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            generator: torch.Generator) -> torch.Tensor:
    """Boolean noise mask (length,) as T5's ``random_spans_noise_mask``: kept and noise spans
    alternate, starting with kept and ending with noise, with random lengths."""
    num_noise, num_spans = t5_span_counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)
    kept_lengths = _random_segmentation(length - num_noise, num_spans, generator)
    lengths = torch.stack([kept_lengths, noise_lengths], dim=1).flatten()
    is_noise = torch.tensor([False, True]).repeat(num_spans)
    return is_noise.repeat_interleave(lengths)


def missing_sentinels(have: int, need: int) -> ConfigError:
    """The error for a tokenizer with ``have`` of the ``need`` sentinels, saying how to add them."""
    last = SENTINEL.format(need - 1)
    return ConfigError(
        f"objective 't5_span' needs {need} sentinel tokens {SENTINEL.format(0)} ... {last} in "
        f"the tokenizer, which lacks {SENTINEL.format(have)}; train the tokenizer with them, "
        f"e.g. `lmforge tokenizer train ... --special-tokens '<|endoftext|>' '<pad>' "
        f"'{SENTINEL.format(0)}' ... '{last}'`")


def span_corrupt(tokens: torch.Tensor, noise: torch.Tensor, sentinels: torch.Tensor,
                 eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of T5 span corruption: in the input each noise span becomes the next
    sentinel; the target is each sentinel followed by its span. Both end with ``eos_id``."""
    starts = noise & ~torch.cat([torch.zeros(1, dtype=torch.bool), noise[:-1]])
    num_spans = int(starts.sum())
    if num_spans > len(sentinels):
        raise missing_sentinels(len(sentinels), num_spans)
    span_index = starts.long().cumsum(0) - 1
    with_sentinels = torch.where(starts, sentinels[span_index.clamp(min=0)], tokens)
    inputs = with_sentinels[~noise | starts]
    # Target: the noise tokens, each span shifted right by the sentinels before it.
    noise_tokens, noise_starts = tokens[noise], starts[noise]
    positions = torch.arange(len(noise_tokens)) + noise_starts.long().cumsum(0)
    targets = torch.empty(len(noise_tokens) + num_spans, dtype=tokens.dtype)
    targets[positions] = noise_tokens
    targets[positions[noise_starts] - 1] = sentinels[:num_spans]
    eos = torch.tensor([eos_id], dtype=tokens.dtype)
    return torch.cat([inputs, eos]), torch.cat([targets, eos])


def sentinel_ids(tokenizer) -> list[int]:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... for as long as they exist."""
    ids = []
    while (idx := tokenizer.token_to_id(SENTINEL.format(len(ids)))) is not None:
        ids.append(idx)
    return ids


@dataclass
class T5SpanOptions(Seq2SeqOptions):
    noise_density: float = option(0.15, "share of tokens corrupted")
    mean_span_length: float = option(3.0, "mean length of a corrupted span")


@register
class T5SpanCorruption(Seq2SeqObjective):
    """T5 span corruption (see the module docstring); options ``noise_density``,
    ``mean_span_length``."""

    name = "t5_span"
    default_start = "pad"
    Options = T5SpanOptions

    def __init__(self, tokenizer=None, meta: dict | None = None, **options):
        super().__init__(tokenizer, meta, **options)
        noise_density, mean_span_length = self.options.noise_density, self.options.mean_span_length
        if not 0 < noise_density < 1 or mean_span_length < 1:
            raise ConfigError("objective_args: need 0 < noise_density < 1 and mean_span_length >= 1")
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.sentinels = torch.tensor(sentinel_ids(tokenizer), dtype=torch.long)
        if not len(self.sentinels):
            raise missing_sentinels(0, 1)

    def window_length(self, block_size: int) -> int:
        length = t5_window_length(block_size, self.noise_density, self.mean_span_length)
        spans = t5_span_counts(length, self.noise_density, self.mean_span_length)[1]
        if spans > len(self.sentinels):
            raise missing_sentinels(len(self.sentinels), spans)
        return length

    def corrupt(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = random_spans_noise_mask(len(window), self.noise_density, self.mean_span_length,
                                        self.generator)
        return span_corrupt(window, noise, self.sentinels, self.eos_id)


# ---------------------------------------------------------------------------------------------
# BART noises: functions of one 1-D token tensor and a generator


def permute_sentences(tokens: torch.Tensor, sentence_starts: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """The window's sentences in random order (a window's first, partial sentence included)."""
    cuts = sentence_starts.nonzero().flatten()
    cuts = cuts[cuts > 0].tolist()
    sentences = torch.tensor_split(tokens, cuts)
    order = torch.randperm(len(sentences), generator=generator)
    return torch.cat([sentences[i] for i in order.tolist()])


def mask_tokens(tokens: torch.Tensor, ratio: float, mask_id: int,
                generator: torch.Generator) -> torch.Tensor:
    """BERT-style token masking: ``round(ratio * n)`` random tokens become ``mask_id``."""
    picks = torch.randperm(len(tokens), generator=generator)[:round(ratio * len(tokens))]
    out = tokens.clone()
    out[picks] = mask_id
    return out


def delete_tokens(tokens: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Token deletion: ``round(ratio * n)`` random tokens removed (the model must find where)."""
    keep = torch.ones(len(tokens), dtype=torch.bool)
    keep[torch.randperm(len(tokens), generator=generator)[:round(ratio * len(tokens))]] = False
    return tokens[keep]


def infilling_spans(length: int, ratio: float, poisson_lambda: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Span lengths for text infilling as fairseq draws them: Poisson(``poisson_lambda``)
    lengths until they cover ``round(ratio * length)`` tokens, the last one cut to fit exactly.
    Returns the non-zero lengths and how many zero-length spans (mask insertions) there were."""
    budget = round(ratio * length)
    if budget == 0:
        return torch.zeros(0, dtype=torch.long), 0
    rate = torch.full((budget,), float(poisson_lambda))
    lengths = torch.poisson(rate, generator=generator).long()
    while int(lengths.sum()) < budget:
        lengths = torch.cat([lengths, torch.poisson(rate, generator=generator).long()])
    cumulative = lengths.cumsum(0)
    last = int((cumulative >= budget).nonzero()[0])
    lengths = lengths[:last + 1].clone()
    lengths[last] = budget - (int(cumulative[last - 1]) if last else 0)
    return lengths[lengths > 0], int((lengths == 0).sum())


def text_infilling(tokens: torch.Tensor, ratio: float, poisson_lambda: float, mask_id: int,
                   generator: torch.Generator) -> torch.Tensor:
    """BART text infilling: spans covering ``ratio`` of the tokens each become ONE ``mask_id``,
    at random non-overlapping, non-adjacent places; zero-length spans insert a mask."""
    spans, inserts = infilling_spans(len(tokens), ratio, poisson_lambda, generator)
    spans = spans.tolist()
    kept = len(tokens) - sum(spans)
    while len(spans) > 1 and kept < len(spans) - 1:  # too crowded for a gap between each: merge
        spans[-2:] = [spans[-2] + spans[-1]]
    # Gaps of kept tokens around the spans: the inner ones at least 1 (adjacent spans would
    # read as one mask), the rest of the kept tokens spread uniformly (stars and bars).
    k, free = len(spans), kept - max(len(spans) - 1, 0)
    bars = torch.randperm(free + k, generator=generator)[:k].sort().values
    edges = torch.cat([torch.tensor([-1]), bars, torch.tensor([free + k])])
    gaps = (edges.diff() - 1).tolist()
    pieces, at = [], 0
    for i, span in enumerate(spans):
        gap = gaps[i] + (1 if i > 0 else 0)
        pieces += [tokens[at:at + gap], torch.tensor([mask_id], dtype=tokens.dtype)]
        at += gap + span
    pieces.append(tokens[at:])
    out = torch.cat(pieces)
    if inserts:
        is_insert = torch.zeros(len(out) + inserts, dtype=torch.bool)
        is_insert[torch.randperm(len(out) + inserts, generator=generator)[:inserts]] = True
        inserted = torch.full((len(out) + inserts,), mask_id, dtype=tokens.dtype)
        inserted[~is_insert] = out
        out = inserted
    return out


def rotate_document(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Document rotation: the sequence starts at a random token (never the first) and wraps."""
    if len(tokens) < 2:
        return tokens
    return torch.roll(tokens, -int(torch.randint(1, len(tokens), (1,), generator=generator)))


class MarkedWindows(NamedTuple):
    """Token windows (B, L) and where their sentences start (bool, B, L)."""

    tokens: torch.Tensor
    sentence_starts: torch.Tensor


def marked_windows(data: TokenShards, shards, offsets, length: int) -> MarkedWindows:
    """The windows at (shard, offset) with their sentence starts from the sentence index."""
    tokens = np.stack([data.window(int(s), int(o), length) for s, o in zip(shards, offsets)])
    starts = torch.zeros(tokens.shape, dtype=torch.bool)
    for row, (s, o) in enumerate(zip(shards, offsets)):
        index = data.sentences(int(s))
        lo, hi = np.searchsorted(index, [int(o), int(o) + length])
        starts[row, torch.from_numpy(np.asarray(index[lo:hi], dtype=np.int64) - int(o))] = True
    return MarkedWindows(torch.from_numpy(tokens), starts)


class SentenceWindows(RandomWindows):
    """:class:`RandomWindows` that also say where the sentences of each window start."""

    def next_batch(self) -> MarkedWindows:
        flat = torch.randint(self.total, (self.batch_size,), generator=self.generator).numpy()
        return marked_windows(self.data, *_locate(self.counts, flat), self.length)


@dataclass
class BartOptions(Seq2SeqOptions):
    text_infilling: float = option(0.3, "share of tokens in spans replaced by one <mask> each (0 = off)")
    poisson_lambda: float = option(3.0, "mean span length of text infilling (Poisson)")
    token_masking: float = option(0.0, "share of tokens replaced by <mask>")
    token_deletion: float = option(0.0, "share of tokens deleted")
    sentence_permutation: bool = option(False, "shuffle the sentences of each window")
    document_rotation: bool = option(False, "rotate each window to start at a random token")


@register
class BartDenoising(Seq2SeqObjective):
    """BART denoising (see the module docstring). Options: ``text_infilling`` (share of tokens,
    0 = off), ``poisson_lambda``, ``token_masking`` and ``token_deletion`` (shares),
    ``sentence_permutation`` and ``document_rotation`` (on/off)."""

    name = "bart"
    default_start = "eos"  # BART's decoder starts with </s>
    Options = BartOptions

    def __init__(self, tokenizer=None, meta: dict | None = None, **options):
        super().__init__(tokenizer, meta, **options)
        o = self.options
        text_infilling, poisson_lambda, token_masking = o.text_infilling, o.poisson_lambda, o.token_masking
        token_deletion, sentence_permutation, document_rotation = (
            o.token_deletion, o.sentence_permutation, o.document_rotation)
        for name, value in (("text_infilling", text_infilling), ("token_masking", token_masking),
                            ("token_deletion", token_deletion)):
            if not 0 <= value < 1:
                raise ConfigError(f"objective_args: {name} must be in [0, 1), got {value}")
        if poisson_lambda <= 0:
            raise ConfigError(f"objective_args: poisson_lambda must be > 0, got {poisson_lambda}")
        self.infilling, self.poisson_lambda = text_infilling, poisson_lambda
        self.masking, self.deletion = token_masking, token_deletion
        self.permutation, self.rotation = bool(sentence_permutation), bool(document_rotation)
        if not (self.infilling or self.masking or self.deletion or self.permutation or self.rotation):
            raise ConfigError("objective 'bart' needs at least one noise (text_infilling, "
                              "token_masking, token_deletion, sentence_permutation, document_rotation)")
        self.mask_id = find_token(tokenizer, MASK_TOKENS)
        if self.mask_id is None and (self.infilling or self.masking):
            raise ConfigError("mask token missing from the tokenizer: text infilling and token "
                              "masking need <mask> (`lmforge tokenizer train --special-tokens ... "
                              "'<mask>'`)")

    def window_length(self, block_size: int) -> int:
        return block_size - 1  # + EOS

    # ---- sentence boundaries ------------------------------------------------------------
    def _require_sentences(self, data: TokenShards) -> None:
        if not data.has_sentences:
            raise ConfigError(f"objective 'bart' with sentence_permutation needs sentence "
                              f"boundaries, and dataset {data.root} has none: prepare it with "
                              "`lmforge prepare --split-sentences`")

    def train_sampler(self, data: TokenShards, block_size: int, batch_size: int, seed: int,
                      sampling: str = "random"):
        if not self.permutation:
            return super().train_sampler(data, block_size, batch_size, seed, sampling)
        self._require_sentences(data)
        if sampling != "random":
            raise ConfigError("objective 'bart' with sentence_permutation samples random windows "
                              "only; drop sampling='sequential'")
        return SentenceWindows(data, self.window_length(block_size), batch_size, seed)

    def eval_batches(self, data: TokenShards, block_size: int, batch_size: int, count: int) -> list:
        if not self.permutation:
            return super().eval_batches(data, block_size, batch_size, count)
        self._require_sentences(data)
        length = self.window_length(block_size)
        spread = SequentialWindows(data, length, 1, seed=0, shuffle=False)
        picks = np.linspace(0, spread.total - 1, min(count * batch_size, spread.total))
        shards, k = _locate(spread.counts, picks.round().astype(np.int64))
        windows = marked_windows(data, shards, k * length, length)
        saved, self.generator = self.generator, torch.Generator().manual_seed(1234)
        try:
            return [self.make_batch(MarkedWindows(t, s)) for t, s in
                    zip(windows.tokens.split(batch_size), windows.sentence_starts.split(batch_size))]
        finally:
            self.generator = saved

    # ---- noise --------------------------------------------------------------------------
    def make_batch(self, windows) -> dict[str, torch.Tensor]:
        if isinstance(windows, MarkedWindows):
            return self.collate([self.corrupt(w, s) for w, s in zip(*windows)])
        if self.permutation:
            raise ConfigError("objective 'bart' with sentence_permutation needs windows with "
                              "sentence starts (its own train_sampler / eval_batches)")
        return self.collate([self.corrupt(w) for w in windows])

    def corrupt(self, window: torch.Tensor,
                sentence_starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        g, x = self.generator, window
        if self.permutation:
            x = permute_sentences(x, sentence_starts, g)
        if self.masking:
            x = mask_tokens(x, self.masking, self.mask_id, g)
        if self.deletion:
            x = delete_tokens(x, self.deletion, g)
        if self.infilling:
            x = text_infilling(x, self.infilling, self.poisson_lambda, self.mask_id, g)
        if self.rotation:
            x = rotate_document(x, g)
        eos = torch.tensor([self.eos_id], dtype=window.dtype)
        # Inserted masks can make the source longer than the window; it must fit the model.
        return torch.cat([x[:len(window)], eos]), torch.cat([window, eos])

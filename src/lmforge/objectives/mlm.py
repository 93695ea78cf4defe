"""Masked language modeling (BERT): predict tokens hidden from a bidirectional encoder.

Masks are drawn afresh every time a batch is built (RoBERTa's dynamic masking) from the
objective's own generator, whose state is checkpointed. Selection never touches special tokens
or padding; a selected token becomes [MASK] 80% of the time, a random token 10%, itself 10%.
Whole-word masking selects words (a word-initial token and its continuations) instead of single
tokens; span masking (SpanBERT) selects contiguous runs of words with geometric lengths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Objective, option, register

log = logging.getLogger(__name__)

UNIGRAM_SAMPLE_TOKENS = 20_000_000  # enough for stable log frequencies; bounds the count's time

MASK_TOKENS = ("[MASK]", "<mask>")
CLS_TOKENS = ("[CLS]", "<s>")
SEP_TOKENS = ("[SEP]", "</s>")
PAD_TOKENS = ("[PAD]", "<pad>")


def find_token(tokenizer, candidates: tuple[str, ...]) -> int | None:
    for token in candidates:
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return idx
    return None


def continuation_flags(tokenizer) -> torch.Tensor:
    """Per vocab id: True when the token continues a word (WordPiece ``##x``; byte-level BPE
    tokens without the leading-space marker ``Ġ``; SentencePiece tokens without ``▁``)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    flags = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    pieces = list(vocab)
    uses_hash = any(p.startswith("##") for p in pieces)
    uses_g = any(p.startswith("Ġ") for p in pieces)
    uses_sp = any(p.startswith("▁") for p in pieces)
    for piece, idx in vocab.items():
        if uses_hash:
            flags[idx] = piece.startswith("##")
        elif uses_g or uses_sp:
            marker = "Ġ" if uses_g else "▁"
            flags[idx] = not piece.startswith(marker) and piece[:1].isalnum()
    return flags


def unigram_log_frequencies(data, vocab_size: int) -> torch.Tensor:
    """log p(token) over (the first tokens of) a dataset's shards, add-one smoothed, centred."""
    counts = np.ones(vocab_size, dtype=np.int64)
    left = UNIGRAM_SAMPLE_TOKENS
    for shard in data.shards:
        part = np.asarray(shard[:left]).astype(np.int64)
        counts += np.bincount(part[part < vocab_size], minlength=vocab_size)
        left -= len(part)
        if left <= 0:
            break
    logp = torch.from_numpy(np.log(counts / counts.sum())).float()
    return logp - logp.mean()


@dataclass
class MLMOptions:
    mask_prob: float = option(0.15, "share of tokens to predict")
    replace_prob: float = option(0.8, "share of the predicted tokens replaced by [MASK]")
    random_prob: float = option(0.1, "share of the predicted tokens replaced by a random token "
                                     "(the rest are kept)")
    whole_word: bool = option(False, "mask whole words (all pieces of a word together)")
    span: bool = option(False, "mask spans of whole words, lengths ~ Geometric(span_p) (SpanBERT)")
    span_p: float = option(0.2, "geometric parameter of span lengths")
    max_span: int = option(10, "longest span, in words")
    seed: int | None = option(None, "seed of the masking generator (default: from the run's seed)")
    head_init: str = option("identity", "an encoder without a masked-LM head (an imported "
                                        "sentence encoder) gets one, decoder tied to its embeddings: "
                                        "its transform dense starts as 'identity' or 'standard' init")
    head_bias: str = option("unigram", "the added head's vocab bias: 'unigram' (log token "
                                    "frequencies of the training data) or 'zero'")


@register
class MaskedLM(Objective):
    name = "mlm"
    Options = MLMOptions

    def __init__(self, tokenizer=None, meta: dict | None = None, **options: Any):
        super().__init__(tokenizer, meta, **options)
        o = self.options
        mask_prob, replace_prob, random_prob = o.mask_prob, o.replace_prob, o.random_prob
        if tokenizer is None:
            raise ConfigError("objective 'mlm' needs the dataset's tokenizer.json (for [MASK] and specials)")
        if o.head_init not in ("identity", "standard") or o.head_bias not in ("zero", "unigram"):
            raise ConfigError("objective_args: head_init must be identity or standard, head_bias "
                              "zero or unigram")
        if not 0 < mask_prob < 1 or replace_prob < 0 or random_prob < 0 or replace_prob + random_prob > 1:
            raise ConfigError("objective_args: need 0 < mask_prob < 1 and replace_prob + random_prob <= 1")
        self.mask_id = find_token(tokenizer, MASK_TOKENS)
        if self.mask_id is None:
            raise ConfigError("mask token missing from the tokenizer: train it with a [MASK] special "
                              "token (e.g. `lmforge tokenizer train --kind wordpiece`)")
        self.cls_id = find_token(tokenizer, CLS_TOKENS)
        self.sep_id = find_token(tokenizer, SEP_TOKENS)
        self.pad_id = find_token(tokenizer, PAD_TOKENS)
        self.mask_prob, self.replace_prob, self.random_prob = mask_prob, replace_prob, random_prob
        self.whole_word, self.span = o.whole_word or o.span, o.span
        self.span_p, self.max_span = o.span_p, o.max_span
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        specials = [i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special]
        self.special = torch.zeros(self.vocab_size, dtype=torch.bool)
        for idx in [*specials, self.mask_id, self.cls_id, self.sep_id, self.pad_id, self.meta.get("eos_id")]:
            if idx is not None:
                self.special[idx] = True
        self.random_ids = (~self.special).nonzero().flatten()  # random replacements are real tokens
        self.continuation = continuation_flags(tokenizer)[: self.vocab_size] if self.whole_word else None
        # Default: derived from the run's seed (the engine seeds torch first), no draw from it.
        self.generator = torch.Generator().manual_seed(torch.initial_seed() + 1 if o.seed is None else o.seed)

    # ---- data ---------------------------------------------------------------------------
    def window_length(self, block_size: int) -> int:
        return block_size - (self.cls_id is not None) - (self.sep_id is not None)

    def prepare_model(self, model: torch.nn.Module, data=None) -> None:
        """Continued pretraining of an encoder imported without a masked-LM head: add one whose
        decoder is the (tied) token embedding matrix, so its first predictions are already
        informative (Gururangan et al. 2020 continue MLM from a pretrained encoder)."""
        if not getattr(model, "is_encoder", False) or model.has_mlm_head() or not hasattr(model, "add_mlm_head"):
            return
        bias = None
        if self.options.head_bias == "unigram" and data is not None:
            bias = unigram_log_frequencies(data, model.config.vocab_size)
        model.add_mlm_head(self.options.head_init, bias)
        log.warning(f"added a masked-LM head to the encoder (decoder tied to its token embeddings, "
                    f"{self.options.head_init} transform, {self.options.head_bias} bias)")

    def check_model(self, model: torch.nn.Module) -> None:
        if not model.is_encoder:
            raise ConfigError(f"objective 'mlm' needs an encoder model (e.g. --model bert-mini), "
                              f"got a {model.kind}")
        if not model.has_mlm_head():
            raise ConfigError("objective 'mlm' needs an encoder with a masked-LM head "
                              "(model field mlm_head=true)")

    def add_specials(self, windows: torch.Tensor) -> torch.Tensor:
        parts = []
        B = windows.shape[0]
        if self.cls_id is not None:
            parts.append(torch.full((B, 1), self.cls_id, dtype=windows.dtype))
        parts.append(windows)
        if self.sep_id is not None:
            parts.append(torch.full((B, 1), self.sep_id, dtype=windows.dtype))
        return torch.cat(parts, dim=1)

    def select(self, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Boolean (B, T) mask of the positions to predict."""
        eligible = ~self.special[ids]
        if not self.whole_word:
            draw = torch.rand(ids.shape, generator=generator)
            return (draw < self.mask_prob) & eligible
        starts = eligible & ~self.continuation[ids]  # word-initial tokens
        word_id = torch.cumsum(starts.long(), dim=1)  # tokens of one word share an id
        word_id = torch.where(eligible, word_id, torch.zeros_like(word_id))
        n_words = int(word_id.max()) + 1
        if self.span:
            chosen = self._span_words(word_id, eligible, n_words, generator)
        else:
            chosen = torch.rand((ids.shape[0], n_words), generator=generator) < self.mask_prob
            chosen[:, 0] = False  # id 0 = not a word (specials)
        return torch.gather(chosen, 1, word_id) & eligible

    def _span_words(self, word_id, eligible, n_words, generator) -> torch.Tensor:
        """SpanBERT: geometric(p) span lengths in words (clipped to max_span), random starts,
        until about mask_prob of each sequence's tokens are covered."""
        B = word_id.shape[0]
        chosen = torch.zeros((B, n_words), dtype=torch.bool)
        for b in range(B):
            words = int(word_id[b].max())
            budget = int(round(self.mask_prob * int(eligible[b].sum())))
            covered, tries = 0, 0
            while covered < budget and words > 0 and tries < 100:
                tries += 1
                length = int(torch.empty(1).geometric_(self.span_p, generator=generator).clamp(max=self.max_span))
                start = int(torch.randint(1, words + 1, (1,), generator=generator))
                span = slice(start, min(start + length, words + 1))
                new = ~chosen[b, span]
                chosen[b, span] = True
                covered += int(torch.isin(word_id[b], torch.arange(words + 1)[span][new]).sum())
        return chosen

    def corrupt(self, ids: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        selected = self.select(ids, generator)
        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        draw = torch.rand(ids.shape, generator=generator)
        inputs = ids.clone()
        to_mask = selected & (draw < self.replace_prob)
        to_random = selected & (draw >= self.replace_prob) & (draw < self.replace_prob + self.random_prob)
        inputs[to_mask] = self.mask_id
        picks = torch.randint(len(self.random_ids), (int(to_random.sum()),), generator=generator)
        inputs[to_random] = self.random_ids[picks]
        return {"input_ids": inputs, "labels": labels}

    def make_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.corrupt(self.add_specials(windows), self.generator)

    def eval_batches(self, data, block_size: int, batch_size: int, count: int) -> list:
        with self.fixed_generator():
            return super().eval_batches(data, block_size, batch_size, count)

    # ---- loss ---------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(batch["input_ids"])
        selected = batch["labels"] != -100
        logits = model.mlm_logits(hidden, selected)  # only the selected ~15% hit the vocab matmul
        return F.cross_entropy(logits.float(), batch["labels"][selected])

    @torch.no_grad()
    def eval_metrics(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
        return self._mlm_accuracy(model, model(batch["input_ids"]), batch)

    @staticmethod
    def _mlm_accuracy(model, hidden, batch) -> dict[str, tuple[float, int]]:
        selected = batch["labels"] != -100
        pred = model.mlm_logits(hidden, selected).argmax(-1)
        return {"mlm_acc": (float((pred == batch["labels"][selected]).sum()), int(selected.sum()))}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

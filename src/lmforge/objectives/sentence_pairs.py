"""Sentence-pair objectives on the encoder, each combined with masked LM as in the papers:

- ``nsp`` (BERT): segment B is the actual continuation of A (label 0) or, half the time, text
  from another document (label 1).
- ``sop`` (ALBERT): A and B are consecutive segments of one document, swapped half the time
  (label 1), so topic cues cannot give the answer away.

Instances follow BERT's ``create_pretraining_data.py``: a target length of block_size - 3
(10% of the time a shorter random one), a chunk of whole sentences from a random document split
at a random sentence boundary, ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1, and a pair
longer than the block truncated longest-first, one token at a time from the front or the back
(counted and logged, never dropped silently). Documents and sentences come from a dataset
prepared with ``lmforge prepare --split-sentences``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import TokenShards
from ..errors import ConfigError, DataError
from .base import option, register
from .mlm import MaskedLM, MLMOptions


class PairSampler:
    """Draws pair instances with the objective's generator; its position is that generator's
    state, which the objective checkpoints."""

    def __init__(self, objective: "SentencePairObjective", data: TokenShards, block_size: int,
                 batch_size: int):
        self.objective, self.data, self.batch_size = objective, data, batch_size
        self.max_tokens = block_size - 3  # room for [CLS] A [SEP] B [SEP]
        data.sentences(0)  # fails clearly when the dataset has no sentence index
        self.doc_counts = np.array([len(data.documents(s)) for s in range(len(data.shards))])
        if self.doc_counts.sum() < 2:
            raise DataError(f"objective '{objective.name}' needs a corpus with at least 2 documents "
                            f"({data.root} has {int(self.doc_counts.sum())}); prepare it with "
                            "document boundaries (e.g. --split-on-blank-lines)")
        # Running token counts over all documents: segment A starts at a document drawn in
        # proportion to its length, as BERT's pass over every sentence of every document gives
        # (uniform documents would let a corpus of many short ones, like fortunes, dominate).
        spans = np.concatenate([data.documents(s) for s in range(len(data.shards))])
        self.doc_tokens = np.cumsum(spans[:, 1] - spans[:, 0])
        self.doc_offsets = np.cumsum(self.doc_counts)

    def next_batch(self) -> list[tuple[np.ndarray, np.ndarray, int]]:
        return [self.objective.instance(self, self.objective.generator) for _ in range(self.batch_size)]

    def random_document(self, g: torch.Generator, exclude: tuple[int, int] | None = None,
                        by_length: bool = False):
        """A random non-empty document ``((shard, doc), sentences)``: uniform over documents
        (B of a "not next" pair, as BERT), or in proportion to their tokens (A)."""
        for _ in range(10):
            if by_length and self.doc_tokens[-1] > 0:
                token = int(torch.randint(int(self.doc_tokens[-1]), (1,), generator=g))
                flat = int(np.searchsorted(self.doc_tokens, token, side="right"))
            else:
                flat = int(torch.randint(int(self.doc_counts.sum()), (1,), generator=g))
            shard = int(np.searchsorted(self.doc_offsets, flat, side="right"))
            doc = flat - int(self.doc_offsets[shard - 1] if shard else 0)
            sentences = [s for s in self.data.document_sentences(shard, doc) if len(s)]
            if sentences and (shard, doc) != exclude:
                return (shard, doc), sentences
        return (shard, doc), sentences

    def state_dict(self) -> dict:
        return {"kind": "pairs"}

    def load_state_dict(self, state: dict) -> None:
        pass


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive, as Python's random.randint)."""
    return int(torch.randint(low, high + 1, (), generator=g))


@dataclass
class SentencePairOptions(MLMOptions):
    mlm: bool = option(True, "train masked LM alongside the sentence-pair head")
    short_seq_prob: float = option(0.1, "share of pairs cut to a random shorter length (BERT)")
    documents: str = option("by_length", "how segment A's document is drawn: by_length (BERT: "
                                         "longer documents more often) or uniform")


class SentencePairObjective(MaskedLM):
    """MLM plus a two-way sentence-pair head; subclasses decide how B relates to A."""

    Options = SentencePairOptions

    def __init__(self, tokenizer=None, meta: dict | None = None, **options: Any):
        super().__init__(tokenizer, meta, **options)
        mlm, short_seq_prob, documents = self.options.mlm, self.options.short_seq_prob, self.options.documents
        if self.cls_id is None or self.sep_id is None or self.pad_id is None:
            raise ConfigError(f"objective '{self.name}' needs [CLS], [SEP] and [PAD] tokens in the "
                              "tokenizer (train one with --kind wordpiece)")
        if documents not in ("by_length", "uniform"):
            raise ConfigError(f"objective option 'documents' must be 'by_length' (BERT) or 'uniform', "
                              f"got {documents!r}")
        self.use_mlm, self.short_seq_prob = mlm, short_seq_prob
        self.by_length = documents == "by_length"  # how segment A's document is drawn
        self.truncated = 0  # pairs longer than the block, truncated longest-first

    def check_model(self, model) -> None:
        if self.use_mlm:
            super().check_model(model)
        elif not model.is_encoder:
            raise ConfigError(f"objective '{self.name}' needs an encoder model (e.g. --model "
                              f"bert-mini), got a {model.kind}")
        if model.sentence_head is None:
            raise ConfigError(f"objective '{self.name}' needs an encoder with a pooler and a "
                              "sentence head (model fields pooler=true, sentence_head=true)")

    def train_sampler(self, data, block_size, batch_size, seed, sampling="random"):
        return PairSampler(self, data, block_size, batch_size)

    def eval_batches(self, data, block_size: int, batch_size: int, count: int) -> list:
        truncated = self.truncated
        try:
            with self.fixed_generator():
                sampler = PairSampler(self, data, block_size, batch_size)
                return [self.make_batch(sampler.next_batch()) for _ in range(count)]
        finally:
            self.truncated = truncated  # validation pairs are not training's truncations

    # ---- instances ----------------------------------------------------------------------
    def instance(self, sampler: PairSampler, g: torch.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        target = sampler.max_tokens
        if _rand(g) < self.short_seq_prob:
            target = _randint(2, sampler.max_tokens, g)
        where, sentences = sampler.random_document(g, by_length=self.by_length)
        start = _randint(0, max(len(sentences) - 2, 0), g)
        chunk, length = [], 0
        for sentence in sentences[start:]:
            chunk.append(sentence)
            length += len(sentence)
            if length >= target and len(chunk) >= 2:
                break
        a_end = _randint(1, len(chunk) - 1, g) if len(chunk) >= 2 else 1
        a, b, label = self.pair(chunk, a_end, target, sampler, where, g)
        return self.truncate(a, b, sampler.max_tokens, g) + (label,)

    def pair(self, chunk, a_end, target, sampler, where, g):
        raise NotImplementedError

    def truncate(self, a: np.ndarray, b: np.ndarray, max_tokens: int, g: torch.Generator):
        """BERT's truncate_seq_pair: drop from the longer segment, front or back at random."""
        if len(a) + len(b) <= max_tokens:
            return a, b
        self.truncated += 1
        a, b = list(a), list(b)
        while len(a) + len(b) > max_tokens:
            longer = a if len(a) > len(b) else b
            if _rand(g) < 0.5:
                del longer[0]
            else:
                longer.pop()
        return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)

    # ---- batches and loss ---------------------------------------------------------------
    def make_batch(self, instances: list[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, torch.Tensor]:
        width = max(len(a) + len(b) + 3 for a, b, _ in instances)  # dynamic padding
        ids = torch.full((len(instances), width), self.pad_id, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for row, (a, b, _) in enumerate(instances):
            seq = [self.cls_id, *a.tolist(), self.sep_id, *b.tolist(), self.sep_id]
            ids[row, :len(seq)] = torch.tensor(seq)
            types[row, len(a) + 2:len(seq)] = 1
            mask[row, :len(seq)] = 1
        batch = self.corrupt(ids, self.generator) if self.use_mlm else {
            "input_ids": ids, "labels": torch.full_like(ids, -100)}
        batch.update(token_type_ids=types, attention_mask=mask,
                     sentence_label=torch.tensor([label for *_, label in instances]))
        return batch

    def window_length(self, block_size: int) -> int:
        return block_size

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        pair_loss = F.cross_entropy(model.sentence_logits(hidden).float(), batch["sentence_label"])
        if not self.use_mlm:
            return pair_loss
        selected = batch["labels"] != -100
        logits = model.mlm_logits(hidden, selected)
        return F.cross_entropy(logits.float(), batch["labels"][selected]) + pair_loss

    @torch.no_grad()
    def eval_metrics(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[float, int]]:
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        pred = model.sentence_logits(hidden).argmax(-1)
        metrics = {f"{self.name}_acc": (float((pred == batch["sentence_label"]).sum()), len(pred))}
        if self.use_mlm:
            metrics.update(self._mlm_accuracy(model, hidden, batch))
        return metrics

    def log_metrics(self) -> dict[str, float]:
        return {"truncated_pairs": self.truncated}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "truncated": self.truncated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.truncated = int(state.get("truncated", 0))


@register
class NextSentencePrediction(SentencePairObjective):
    name = "nsp"

    def pair(self, chunk, a_end, target, sampler, where, g):
        a = np.concatenate(chunk[:a_end])
        if len(chunk) == 1 or _rand(g) < 0.5:
            _, other = sampler.random_document(g, exclude=where)
            start = _randint(0, len(other) - 1, g)
            b_parts, length = [], 0
            for sentence in other[start:]:
                b_parts.append(sentence)
                length += len(sentence)
                if len(a) + length >= target:
                    break
            return a, np.concatenate(b_parts), 1  # B is random text: "not next"
        return a, np.concatenate(chunk[a_end:]), 0


@register
class SentenceOrderPrediction(SentencePairObjective):
    name = "sop"

    def pair(self, chunk, a_end, target, sampler, where, g):
        if len(chunk) == 1:  # one long sentence: split it in two at a random token
            sentence = chunk[0]
            cut = _randint(1, max(len(sentence) - 1, 1), g)
            chunk, a_end = [sentence[:cut], sentence[cut:]], 1
        a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
        if _rand(g) < 0.5:
            return b, a, 1  # swapped
        return a, b, 0

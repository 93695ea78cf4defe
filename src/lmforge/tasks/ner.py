"""Token classification (named-entity recognition): one tag per word, scored on entities.

Data: CoNLL files (``token<TAB>tag`` as WNUT-17, or ``token POS chunk tag`` as CoNLL-2003: the
tag is the last column, ``-DOCSTART-`` lines are skipped, a blank line ends a sentence) and JSONL
``{"tokens": [...], "tags": [...]}``; for predict also ``{"text": "..."}`` (whitespace-split).

Tags follow one of three schemes: IOB1 (an entity starts with I-, B- only separates two adjacent
entities of one type), IOB2 (every entity starts with B-) or BIOES (B-, I-, E- and S- for
one-word entities). The model learns the training data's scheme (or ``label_scheme``); files in
another scheme are converted through their entity spans.

Each word's label sits on its first sub-token; later sub-tokens and special tokens are -100, so
the loss and the predictions are per word. Sentences longer than ``max_length`` are cut into
consecutive chunks of whole words and put back together after prediction. Metrics are seqeval's
entity-level precision / recall / F1 (micro, macro and per type) and token accuracy.

    {"tokens": ["Empire", "State", "Building", "=", "ESB"], "tags": ["B-location", ...]}
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import TaskObjective, cross_entropy, option, register_task
from .tabular import json_records

log = logging.getLogger(__name__)

SCHEMES = ("IOB1", "IOB2", "BIOES")
TAG = re.compile(r"O|[BIES]-.+")


# ---- tags and schemes ---------------------------------------------------------------------
def detect_scheme(sequences: list[list[str]]) -> str:
    """BIOES if S-/E- tags appear; IOB1 if some entity starts with I- (an I-X that does not
    follow B-X or I-X); otherwise IOB2."""
    iob1 = False
    for tags in sequences:
        prev = "O"
        for tag in tags:
            if tag[:2] in ("S-", "E-"):
                return "BIOES"
            if tag.startswith("I-") and prev[2:] != tag[2:]:
                iob1 = True
            prev = tag
    return "IOB1" if iob1 else "IOB2"


def spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) word spans read leniently as conlleval does (seqeval's default mode):
    any B-/S-, or an I-/E- after O or another type, starts an entity. Works for every scheme."""
    from seqeval.metrics.sequence_labeling import get_entities
    return [(t, s, e + 1) for t, s, e in get_entities(list(tags))]


def entities(tags: list[str], scheme: str) -> list[tuple[str, int, int]]:
    """The (type, start, end) entities the metrics count: seqeval's strict reading for IOB2 and
    BIOES (an entity must start with B-/S- and end properly, otherwise it is no entity), the
    lenient conlleval reading for IOB1 (where entities legitimately start with I-)."""
    if scheme == "IOB1":
        return spans(tags)
    from seqeval.scheme import IOB2, IOBES, Tokens
    found = Tokens(list(tags), {"IOB2": IOB2, "BIOES": IOBES}[scheme]).entities
    return [(e.tag, e.start, e.end) for e in found]


def to_scheme(tags: list[str], scheme: str) -> list[str]:
    """``tags`` (any scheme) rewritten in ``scheme``, keeping every entity span."""
    out = ["O"] * len(tags)
    prev_end, prev_type = -1, None
    for t, s, e in spans(tags):
        if scheme == "BIOES":
            out[s:e] = [f"S-{t}"] if e - s == 1 else [f"B-{t}"] + [f"I-{t}"] * (e - s - 2) + [f"E-{t}"]
        elif scheme == "IOB2":
            out[s:e] = [f"B-{t}"] + [f"I-{t}"] * (e - s - 1)
        else:  # IOB1: B- only where an entity directly follows one of the same type
            first = "B" if (s == prev_end and t == prev_type) else "I"
            out[s:e] = [f"{first}-{t}"] + [f"I-{t}"] * (e - s - 1)
        prev_end, prev_type = e, t
    return out


def entity_scores(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict[str, float]:
    """seqeval's entity-level scores: micro precision / recall / F1, macro F1 and F1 per type,
    plus token accuracy. IOB2 and BIOES are scored with ``mode="strict"`` and the scheme class
    (IOB2 / IOBES): an entity counts only if it is well formed, so a model gets no credit for an
    entity it opened with I-; seqeval supports IOBES only in strict mode. IOB1, where entities
    do open with I-, is scored in seqeval's default mode, the conlleval-compatible reading that
    IOB1 data (CoNLL-2003's original files) was published with; seqeval's auto-detection and
    documented strict schemes do not cover IOB1."""
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2, IOBES
    out = {"accuracy": float(accuracy_score(gold, pred))}
    if not any(entities(seq, scheme) for seq in gold + pred):  # seqeval's averages would be NaN
        return out | {"precision": 0.0, "recall": 0.0, "f1": 0.0, "macro_f1": 0.0}
    mode = {} if scheme == "IOB1" else {"mode": "strict", "scheme": {"IOB2": IOB2, "BIOES": IOBES}[scheme]}
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **mode)
    micro, macro = report.pop("micro avg"), report.pop("macro avg")
    report.pop("weighted avg")
    out |= {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]), "macro_f1": float(macro["f1-score"])}
    return out | {f"f1_{t}": float(row["f1-score"]) for t, row in sorted(report.items())}


# ---- reading ------------------------------------------------------------------------------
@dataclass
class Sentence:
    """Words with their tags (None when unlabeled). ``text`` is the sentence as a string and
    ``starts`` each word's character offset in it: the words joined by single spaces, unless
    the sentence came as a ``{"text": ...}`` line (then offsets point into that text)."""

    tokens: list[str]
    tags: list[str] | None = None
    line: int = 0
    text: str = ""
    starts: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.starts and self.tokens:
            self.text = " ".join(self.tokens)
            self.starts, pos = [], 0
            for token in self.tokens:
                self.starts.append(pos)
                pos += len(token) + 1

    def entity(self, kind: str, first: int, end: int) -> dict:
        """Words ``first``..``end - 1`` as {"type", "text", "start", "end"}, offsets in ``text``."""
        start, stop = self.starts[first], self.starts[end - 1] + len(self.tokens[end - 1])
        return {"type": kind, "text": self.text[start:stop], "start": start, "end": stop}

    @classmethod
    def from_text(cls, text: str, line: int = 0) -> "Sentence":
        words = list(re.finditer(r"\S+", text))
        return cls([m.group() for m in words], None, line, text, [m.start() for m in words])


def read_sentences(path: str | Path, labeled: bool = True, encoding: str = "utf-8") -> list[Sentence]:
    """Sentences of a CoNLL file or a JSONL file (``.jsonl``/``.json``). ``labeled`` False reads
    tags only if present and drops them (predict). Each malformed line is one DataError naming
    the file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    try:
        lines = p.read_text(encoding=f"{encoding}-sig" if encoding == "utf-8" else encoding).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p}: {exc}") from None
    reader = _jsonl if p.suffix in (".jsonl", ".json") else _conll
    sentences = reader(p, lines, labeled)
    if not sentences:
        raise DataError(f"{p}: no sentences")
    return sentences


def _check_tags(path: Path, n: int, tags: list[str]) -> None:
    for tag in tags:
        if not tag:
            raise DataError(f"{path}:{n}: empty tag")
        if not TAG.fullmatch(tag):
            raise DataError(f"{path}:{n}: tag {tag!r} is not O or B-/I-/E-/S-TYPE")


def _conll(path: Path, lines: list[str], labeled: bool) -> list[Sentence]:
    sentences, tokens, tags, first, columns, columns_line = [], [], [], 0, None, 0
    for n, line in enumerate(lines + [""], 1):
        if not line.strip():
            if tokens:
                sentences.append(Sentence(tokens, tags if labeled else None, first))
            tokens, tags = [], []
            continue
        cells = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if cells[0] == "-DOCSTART-":
            continue
        if columns is None:
            columns, columns_line = len(cells), n
            if labeled and columns < 2:
                raise DataError(f"{path}:{n}: expected a token and a tag (token<TAB>tag or "
                                f"'token POS chunk tag'), found 1 column")
        if len(cells) != columns:
            raise DataError(f"{path}:{n}: expected {columns} columns (as on line {columns_line}), "
                            f"found {len(cells)}")
        if labeled:
            _check_tags(path, n, [cells[-1]])
        first = first if tokens else n
        tokens.append(cells[0])
        tags.append(cells[-1])
    return sentences


def _jsonl(path: Path, lines: list[str], labeled: bool) -> list[Sentence]:
    sentences = []
    for n, record in json_records(path, lines):
        if "tokens" not in record:
            if not labeled and isinstance(record.get("text"), str):
                sentences.append(Sentence.from_text(record["text"], n))
                continue
            raise DataError(f"{path}:{n}: expected a 'tokens' list"
                            f"{'' if labeled else ' or a text'} (fields: {', '.join(record)})")
        tokens = record["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise DataError(f"{path}:{n}: 'tokens' must be a list of non-empty strings")
        tags = record.get("tags")
        if labeled:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise DataError(f"{path}:{n}: expected a 'tags' list of strings (B-PER, O, ...)")
            if len(tags) != len(tokens):
                raise DataError(f"{path}:{n}: {len(tokens)} tokens but {len(tags)} tags")
            _check_tags(path, n, tags)
        sentences.append(Sentence(tokens, tags if labeled else None, n))
    return sentences


# ---- the task -----------------------------------------------------------------------------
@dataclass
class TokenClassificationOptions:
    labels: list[str] | None = option(None, "tags in id order (default: from the training data)")
    label_scheme: str | None = option(None, "IOB1, IOB2 or BIOES (default: detected from the tags)")
    encoding: str = option("utf-8", "encoding of the data files")


@register_task
class TokenClassification(TaskObjective):
    """Cross-entropy over each word's first sub-token; metrics seqeval entity precision /
    recall / F1 (micro; macro and per type too) and token accuracy. Options (``--task_args``):
    ``label_scheme`` IOB1, IOB2 or BIOES (default: detected from the training tags) and the
    files' ``encoding``; ``labels`` come from an existing head."""

    name = "token-classification"
    head = "token-classification"
    default_metric = "val_f1"
    Options = TokenClassificationOptions

    def __init__(self, tokenizer, arch: str, max_length: int, **options):
        super().__init__(tokenizer, arch, max_length, **options)
        labels, label_scheme, encoding = self.options.labels, self.options.label_scheme, self.options.encoding
        scheme = (label_scheme or "detect").upper().replace("IOBES", "BIOES")
        if scheme not in SCHEMES + ("DETECT",):
            raise ConfigError(f"label_scheme must be {', '.join(SCHEMES)} or detect, got {label_scheme!r}")
        self.scheme = None if scheme == "DETECT" else scheme
        self.labels = list(labels) if labels else None
        if self.labels:  # a head's labels (e.g. imported from Hugging Face, saved without a scheme)
            if bad := [t for t in self.labels if not TAG.fullmatch(t)]:
                raise ConfigError(f"token classification labels must be O or B-/I-/E-/S-TYPE tags, got {bad[:3]}")
            if self.scheme is None and any(t[:2] in ("S-", "E-") for t in self.labels):
                self.scheme = "BIOES"
        self.encoding = encoding
        self.budget = max_length - (2 if arch == "encoder" else 1)  # room left by the framing
        if self.budget < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for words")
        self.space_prefix = self._needs_space_prefix()

    def _needs_space_prefix(self) -> bool:
        """Whether pre-split words must carry their leading space to be tokenized as in running
        text: byte-level BPEs (GPT-2, Llama 3) fold the space into the word ("Ġworld")."""
        def ids(x, **kw):
            return self.tokenizer.encode(x, add_special_tokens=False, **kw).ids
        running = ids("Hello world")
        return (ids(["Hello", "world"], is_pretokenized=True) != running
                and ids(["Hello", " world"], is_pretokenized=True) == running)

    # ---- data ---------------------------------------------------------------------------
    def read(self, path: str, labeled: bool = True) -> list[Sentence]:
        return read_sentences(path, labeled, self.encoding)

    def in_scheme(self, sentences: list[Sentence]) -> list[Sentence]:
        """``sentences`` with their tags in the model's scheme (converted if the file's differs)."""
        labeled = [s.tags for s in sentences if s.tags is not None]
        found = detect_scheme(labeled)
        self.scheme = self.scheme or found  # a head saved without its scheme
        if not labeled or found == self.scheme:
            return sentences
        log.info(f"converting {found} tags to the model's {self.scheme}")
        return [replace(s, tags=to_scheme(s.tags, self.scheme)) if s.tags is not None else s
                for s in sentences]

    def fit_labels(self, sentences: list[Sentence]) -> None:
        """Scheme (unless given) and label set from the training tags: sorted, "O" first."""
        detected = self.scheme is None
        found = sorted({t for s in self.in_scheme(sentences) for t in s.tags} - {"O"})
        if detected:
            log.info(f"label scheme: {self.scheme} (detected)")
        if self.labels is None:
            if not found:
                raise DataError("the training data has no entity tags (only O)")
            self.labels = ["O"] + found
        elif unknown := [t for t in found if t not in self.labels]:
            raise DataError(f"training tags {unknown} are not among the model head's labels {self.labels}")

    def word_pieces(self, sentences: list[Sentence]) -> list[list[list[int]]]:
        """Sub-token ids of every word of every sentence (a word may have none, e.g. a lone
        control character)."""
        words = [[t if i == 0 or not self.space_prefix else " " + t for i, t in enumerate(s.tokens)]
                 for s in sentences]
        out = []
        for s, enc in zip(sentences, self.tokenizer.encode_batch(words, is_pretokenized=True,
                                                                 add_special_tokens=False)):
            pieces = [[] for _ in s.tokens]
            for token_id, w in zip(enc.ids, enc.word_ids):
                if w is not None:
                    pieces[w].append(token_id)
            out.append(pieces)
        return out

    def chunks(self, pieces: list[list[int]]) -> list[list[int]]:
        """Consecutive runs of whole words whose sub-tokens fit ``max_length`` (a single word
        longer than that keeps its first sub-tokens)."""
        runs, current, length = [], [], 0
        for w, p in enumerate(pieces):
            size = min(len(p), self.budget)
            if current and length + size > self.budget:
                runs.append(current)
                current, length = [], 0
            current.append(w)
            length += size
        return runs + [current] if current else runs

    def featurize(self, sentences: list[Sentence], training: bool) -> list[dict]:
        """One feature per chunk: ids, the position of each word's first sub-token, its word
        index and (labeled) the label ids there, -100 elsewhere."""
        sentences = self.in_scheme(sentences)
        index = {tag: i for i, tag in enumerate(self.labels)}
        outside = index.get("O", 0)
        unseen: Counter = Counter()
        features, split = [], 0
        for i, (sentence, pieces) in enumerate(zip(sentences, self.word_pieces(sentences))):
            runs = self.chunks(pieces)
            split += len(runs) > 1
            for run in runs:
                ids, positions, words = [], [], []
                for w in run:
                    if not pieces[w]:
                        continue
                    if len(pieces[w]) > self.budget:
                        self.truncated += 1
                    positions.append(len(ids) + (1 if self.arch == "encoder" else 0))
                    words.append(w)
                    ids += pieces[w][:self.budget]
                if training and not words:
                    continue
                ids, types = self.frame(ids)
                labels = None
                if sentence.tags is not None:
                    labels = [-100] * len(ids)
                    for pos, w in zip(positions, words):
                        tag = sentence.tags[w]
                        if tag not in index:
                            unseen[tag] += 1
                        labels[pos] = index.get(tag, outside)  # unseen in training: O for the loss
                features.append({"input_ids": ids, "token_type_ids": types, "labels": labels,
                                 "positions": positions, "words": words, "sentence": i,
                                 "example": sentence, "index": len(features)})
        if split:
            log.info(f"{split} sentence(s) longer than {self.max_length} tokens were split into chunks")
        if unseen:
            counts = ", ".join(f"{t} x{c}" for t, c in sorted(unseen.items()))
            log.warning(f"{sum(unseen.values())} word(s) have tags not seen in training ({counts}); "
                        "they count as O in the loss and as gold entities in the metrics")
        return features

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.base_batch(features)
        if features[0]["labels"] is not None:
            width = batch["input_ids"].shape[1]
            batch["labels"] = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"]))
                                            for f in features], dtype=torch.long)
        return batch

    def eval_batches(self, data, block_size: int, batch_size: int, count: int) -> list:
        """As the base class, each batch also carrying its features (for word reassembly)."""
        order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
        groups = [[data[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
        return [{**self.collate(g), "features": g} for g in groups]

    # ---- training -----------------------------------------------------------------------
    def loss(self, model, batch) -> torch.Tensor:
        return cross_entropy(self.forward(model, batch).flatten(0, 1), batch["labels"].flatten())

    @torch.no_grad()
    def word_tags(self, model, batches, device, autocast_ctx,
                  word_probs: dict[int, list[float]] | None = None
                  ) -> tuple[dict[int, tuple[Sentence, list[str]]], float]:
        """({sentence index: (sentence, predicted tag per word)}, mean loss over labeled words)
        over ``batches``: each word takes its first sub-token's argmax; chunks are put back per
        sentence, and a word without sub-tokens is O. ``word_probs``, when given, receives each
        sentence's probability of each word's tag."""
        out, loss, count = {}, 0.0, 0
        for batch in batches:
            features = batch["features"]
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            with autocast_ctx():
                logits = self.forward(model, batch).float()
            if "labels" in batch:
                n = int((batch["labels"] != -100).sum())
                if n:
                    loss += cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).item() * n
                    count += n
            prob, best = logits.softmax(-1).max(-1)
            prob, best = prob.cpu(), best.cpu()
            for row, f in enumerate(features):
                _, tags = out.setdefault(f["sentence"], (f["example"], ["O"] * len(f["example"].tokens)))
                probs = None if word_probs is None else word_probs.setdefault(f["sentence"], [1.0] * len(tags))
                for pos, w in zip(f["positions"], f["words"]):
                    tags[w] = self.labels[int(best[row, pos])]
                    if probs is not None:
                        probs[w] = float(prob[row, pos])
        return out, loss / max(count, 1)

    def evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        found, loss = self.word_tags(model, batches, device, autocast_ctx)
        sentences, pred = [found[i][0] for i in sorted(found)], [found[i][1] for i in sorted(found)]
        scores = entity_scores([s.tags for s in sentences], pred, self.scheme)
        # Every type of the label set and the gold data gets a score, so runs report the same keys.
        types = {t[2:] for t in self.labels + [t for s in sentences for t in s.tags] if t != "O"}
        scores |= {f"f1_{t}": scores.get(f"f1_{t}", 0.0) for t in sorted(types)}
        head = ("precision", "recall", "f1", "macro_f1", "accuracy")
        ordered = {k: scores[k] for k in head} | {k: v for k, v in sorted(scores.items()) if k not in head}
        return {"val_loss": loss, **{f"val_{k}": v for k, v in ordered.items()}}

    def predict(self, model, sentences: list[Sentence], batch_size: int, device, autocast_ctx) -> list[dict]:
        unlabeled = [replace(s, tags=None) for s in sentences]
        features = self.featurize(unlabeled, training=False)
        batches = self.eval_batches(features, 0, batch_size, 0)
        probs: dict[int, list[float]] = {}
        found, _ = self.word_tags(model, batches, device, autocast_ctx, probs)
        out = []
        for i, s in enumerate(unlabeled):
            tags = found[i][1] if i in found else ["O"] * len(s.tokens)
            # An entity's score: the mean probability of its words' tags (transformers' "simple").
            out.append({"tokens": s.tokens, "tags": tags,
                        "entities": [{**s.entity(t, a, b), "score": round(float(np.mean(probs[i][a:b])), 4)}
                                     for t, a, b in entities(tags, self.scheme)]})
        return out

    def describe(self, example: Sentence) -> dict:
        return {"text": example.text}

    def spec_options(self) -> dict:
        return {"labels": self.labels, "label_scheme": self.scheme,
                "extra": {"label_scheme": self.scheme}}

"""Sequence classification and regression, single texts or pairs (GLUE-style): one label per
text from a pooled representation (encoders: BERT's pooler or [CLS]; decoders: the last token;
encoder-decoders: the mean of the encoder states)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .base import TaskObjective, cross_entropy, option, register_task
from .metrics import classification_metrics, confusion, regression_metrics
from .tabular import Row, read_rows

log = logging.getLogger(__name__)


def sorted_labels(values: set[str]) -> list[str]:
    """Label names in id order: numerically when they are all integers ("0" < "1" < "10")."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


@dataclass
class ClassificationOptions:
    labels: list[str] | None = option(None, "class names in id order (default: from the training data)")
    class_weights: str | None = option(None, "'balanced' weighs classes by inverse frequency")
    text_column: str | None = option(None, "text column/field")
    text_pair_column: str | None = option(None, "second text of a pair")
    label_column: str | None = option(None, "label column/field")
    encoding: str = option("utf-8", "encoding of the data files")


@register_task
class SequenceClassification(TaskObjective):
    """Cross-entropy over ``labels`` (optionally class-weighted); metrics accuracy, precision,
    recall, F1 (the second label is the positive class of a binary task), macro F1 and MCC."""

    name = "classification"
    head = "classification"
    default_metric = "val_accuracy"
    Options = ClassificationOptions
    label_dtype = torch.long

    def __init__(self, tokenizer, arch: str, max_length: int, **options):
        super().__init__(tokenizer, arch, max_length, **options)
        o = self.options
        labels, class_weights, encoding = o.labels, o.class_weights, o.encoding
        text_column, text_pair_column, label_column = o.text_column, o.text_pair_column, o.label_column
        if class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights must be 'balanced' or unset, got {class_weights!r}")
        self.labels = list(labels) if labels else None
        self.class_weights, self.weight = class_weights, None
        self.columns = dict(text_column=text_column, pair_column=text_pair_column, label_column=label_column)
        self.encoding = encoding
        self.last_confusion: np.ndarray | None = None

    # ---- data ---------------------------------------------------------------------------
    def read(self, path: str, labeled: bool = True) -> list[Row]:
        return read_rows(path, **self.columns, labeled=labeled, encoding=self.encoding)

    def fit_labels(self, rows: list[Row]) -> None:
        """Label set from the training rows (unless the model's head already fixes it)."""
        found = sorted_labels({r.label for r in rows})
        if self.labels is None:
            if len(found) < 2:
                raise DataError(f"the training data has only {len(found)} distinct label "
                                f"({', '.join(map(repr, found)) or 'none'}) in {len(rows)} "
                                "example(s); classification needs examples of at least 2 labels")
            self.labels = found
        elif unknown := [x for x in found if x not in self.labels]:
            raise DataError(f"training labels {unknown} are not among the model head's labels {self.labels}")
        if self.class_weights == "balanced":
            ids = np.array([self.labels.index(r.label) for r in rows])
            counts = np.bincount(ids, minlength=len(self.labels)).astype(np.float64)
            self.weight = torch.tensor(len(ids) / (len(self.labels) * np.maximum(counts, 1)),
                                       dtype=torch.float32)

    def target(self, label: str):
        return self.labels.index(label)

    def featurize(self, rows: list[Row], training: bool) -> list[dict]:
        features, unseen = [], {}
        for i, row in enumerate(rows):
            target = None
            if row.label is not None:
                try:
                    target = self.target(row.label)
                except (ValueError, DataError):
                    unseen[row.label] = unseen.get(row.label, 0) + 1
                    continue
            ids, types = self.frame(self.encode(row.text),
                                    self.encode(row.pair) if row.pair is not None else None)
            features.append({"input_ids": ids, "token_type_ids": types, "label": target, "index": i})
        if unseen:
            if training:
                raise DataError(f"training labels {sorted(unseen)} cannot be used")
            log.warning(f"{sum(unseen.values())} evaluation example(s) have labels not seen in "
                        f"training ({', '.join(sorted(unseen))}); they are left out of the metrics")
        return features

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.base_batch(features)
        if features[0]["label"] is not None:
            batch["labels"] = torch.tensor([f["label"] for f in features],
                                           dtype=self.label_dtype)
        return batch

    # ---- training -----------------------------------------------------------------------
    def loss(self, model, batch) -> torch.Tensor:
        weight = self.weight.to(batch["labels"].device) if self.weight is not None else None
        return cross_entropy(self.forward(model, batch), batch["labels"], weight)

    @torch.no_grad()
    def outputs(self, model, batches, device, autocast_ctx) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(outputs in feature order, labels or None, feature indexes) over ``batches``."""
        outs, labels, index = [], [], []
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx():
                outs.append(self.forward(model, batch).float().cpu())
            index.append(batch["index"].cpu())
            if "labels" in batch:
                labels.append(batch["labels"].cpu())
        order = torch.cat(index).argsort()
        return (torch.cat(outs)[order], torch.cat(labels)[order] if labels else None,
                torch.cat(index)[order])

    def evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        logits, labels, _ = self.outputs(model, batches, device, autocast_ctx)
        loss = cross_entropy(logits, labels).item()
        pred = logits.argmax(-1).tolist()
        self.last_confusion = confusion(labels.tolist(), pred, len(self.labels))
        metrics = classification_metrics(labels.tolist(), pred, self.labels)
        return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}

    def predict(self, model, rows: list[Row], batch_size: int, device, autocast_ctx) -> list[dict]:
        features = self.featurize([Row(r.text, r.pair, None, r.line) for r in rows], training=False)
        logits, _, _ = self.outputs(model, self.eval_batches(features, 0, batch_size, 0), device, autocast_ctx)
        probs = logits.softmax(-1)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {lab: round(float(x), 6) for lab, x in zip(self.labels, p)}}
                for p in probs]

    def spec_options(self) -> dict:
        return {"labels": self.labels}


@register_task
class Regression(SequenceClassification):
    """Mean squared error on a real-valued label (STS-B's 0-5 similarity); metrics Pearson,
    Spearman and MSE."""

    name = "regression"
    head = "regression"
    default_metric = "val_pearson"
    label_dtype = torch.float32

    def fit_labels(self, rows: list[Row]) -> None:
        self.labels = []
        for r in rows:
            self.target(r.label, r.line)

    def target(self, label: str, line: int | None = None) -> float:
        try:
            return float(label)
        except ValueError:
            raise DataError(f"regression label {label!r}{f' (line {line})' if line else ''} is not a number") from None

    def loss(self, model, batch) -> torch.Tensor:
        return F.mse_loss(self.forward(model, batch).float(), batch["labels"])

    def evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        pred, gold, _ = self.outputs(model, batches, device, autocast_ctx)
        metrics = regression_metrics(gold.tolist(), pred.tolist())
        return {"val_loss": F.mse_loss(pred, gold).item(), **{f"val_{k}": v for k, v in metrics.items()}}

    def predict(self, model, rows: list[Row], batch_size: int, device, autocast_ctx) -> list[dict]:
        features = self.featurize([Row(r.text, r.pair, None, r.line) for r in rows], training=False)
        pred, _, _ = self.outputs(model, self.eval_batches(features, 0, batch_size, 0), device, autocast_ctx)
        return [{"score": round(float(x), 6)} for x in pred]

    def spec_options(self) -> dict:
        return {}

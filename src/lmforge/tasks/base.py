"""What every fine-tuning task shares: the objective interface the engine trains through,
epoch batching with dynamic padding and length grouping, and text framing per architecture.

A task objective reads labeled files into examples, turns examples into features (token ids and
targets), and gives the engine batches, a loss and whole-set validation metrics; ``predict``
turns raw examples into JSON-ready predictions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..objectives.base import Objective, option  # noqa: F401  (option: for the task modules)
from ..objectives.mlm import CLS_TOKENS, PAD_TOKENS, SEP_TOKENS, find_token
from ..tokenization import eos_token_id

log = logging.getLogger(__name__)

TASKS: dict[str, type["TaskObjective"]] = {}


def register_task(cls):
    TASKS[cls.name] = cls
    return cls


def all_tasks() -> dict[str, type["TaskObjective"]]:
    """Every registered task by name (the task modules register themselves when the
    ``lmforge.tasks`` package is imported)."""
    return TASKS


def get_task(name: str) -> type["TaskObjective"]:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


class EpochBatches:
    """Shuffled passes over ``features``: each epoch is a permutation (seeded by seed + epoch),
    cut into chunks of 50 batches whose examples are sorted by length, so a batch holds examples
    of similar length and pads little (length-grouped batching); batch order is shuffled too.
    State = (epoch, batch index) for exact resume."""

    def __init__(self, features: list[dict], batch_size: int, seed: int, group_by_length: bool = True):
        if not features:
            raise ConfigError("no training examples")
        self.features, self.batch_size, self.seed = features, batch_size, seed
        self.group = group_by_length
        self.lengths = np.array([len(f["input_ids"]) for f in features])
        self.epoch, self.index = 0, 0
        self._batches = self._plan()

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def _plan(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.features))
        if self.group:
            chunk = 50 * self.batch_size
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")]
                                    for c in np.array_split(order, max(1, -(-len(order) // chunk)))])
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))] if self.group else batches

    def next_batch(self) -> list[dict]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._plan()
        rows = self._batches[self.index]
        self.index += 1
        return [self.features[i] for i in rows]

    def state_dict(self) -> dict:
        return {"kind": "epochs", "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = self._plan()


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class TaskObjective(Objective):
    """Base of the fine-tuning objectives (see the module docstring). Subclasses set ``name``,
    ``head`` (the TaskSpec task, or None for tasks that train the backbone's own LM head) and
    ``default_metric``, and implement ``read``, ``featurize``, ``collate``, ``loss``,
    ``evaluate`` and ``predict``."""

    head: str | None = None
    default_metric = "val_loss"
    archs = ("encoder", "decoder", "encoder-decoder")
    noun = "task"

    def __init__(self, tokenizer, arch: str, max_length: int, **options: Any):
        super().__init__(tokenizer, {}, **options)  # unknown options: one clear ConfigError
        if arch not in self.archs:
            raise ConfigError(f"task '{self.name}' does not fit a {arch} model "
                              f"(needs {' or '.join(self.archs)})")
        self.arch, self.max_length = arch, max_length
        self.pad_id = find_token(tokenizer, PAD_TOKENS)
        self.eos_id = eos_token_id(tokenizer)
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0  # padding is masked out
        self.cls_id, self.sep_id = find_token(tokenizer, CLS_TOKENS), find_token(tokenizer, SEP_TOKENS)
        if arch == "encoder" and (self.cls_id is None or self.sep_id is None):
            raise ConfigError("an encoder task needs [CLS] and [SEP] (or <s> and </s>) in the tokenizer")
        if arch != "encoder" and self.eos_id is None:
            raise ConfigError("a decoder task needs an end-of-text token in the tokenizer")
        self.truncated = 0

    # ---- text framing -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def frame(self, a: list[int], b: list[int] | None = None,
              max_length: int | None = None) -> tuple[list[int], list[int]]:
        """(ids, token types) of one or two segments as the architecture was pretrained:
        encoders ``[CLS] a [SEP] b [SEP]`` (types 0 then 1, as BERT); decoders and
        encoder-decoders ``a <eos> b <eos>`` (the last token summarises the text). Too long:
        the longer segment loses tokens from its end first (BERT's longest-first rule)."""
        limit = max_length or self.max_length
        special = (2 if self.arch == "encoder" else 1) + (1 if b is not None else 0)
        a, b = list(a), (list(b) if b is not None else None)
        if len(a) + len(b or []) + special > limit:
            self.truncated += 1
            while len(a) + len(b or []) + special > limit:
                if b is not None and len(b) > len(a):
                    b.pop()
                elif a:
                    a.pop()
                else:
                    b.pop()
        if self.arch == "encoder":
            ids = [self.cls_id] + a + [self.sep_id]
            types = [0] * len(ids)
            if b is not None:
                ids += b + [self.sep_id]
                types += [1] * (len(b) + 1)
            return ids, types
        ids = a + [self.eos_id] + ((b + [self.eos_id]) if b is not None else [])
        return ids, [0] * len(ids)

    # ---- engine interface -----------------------------------------------------------------
    def train_sampler(self, data, block_size, batch_size, seed, sampling="random"):
        return EpochBatches(data, batch_size, seed, group_by_length=True)

    def eval_batches(self, data, block_size: int, batch_size: int, count: int) -> list:
        """Every validation feature once (``count`` does not apply), in length order."""
        order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
        return [self.collate([data[i] for i in order[s:s + batch_size]])
                for s in range(0, len(order), batch_size)]

    def make_batch(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.collate(features)

    def base_batch(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """input_ids (right-padded), attention_mask, token_type_ids and each feature's index."""
        ids = pad([f["input_ids"] for f in features], self.pad_id)
        mask = pad([[1] * len(f["input_ids"]) for f in features], 0)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "index": torch.tensor([f["index"] for f in features], dtype=torch.long)}
        if self.arch == "encoder":
            batch["token_type_ids"] = pad([f["token_type_ids"] for f in features], 0)
        return batch

    def forward(self, model, batch) -> torch.Tensor:
        return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def log_metrics(self) -> dict[str, float]:
        return {"truncated": self.truncated} if self.truncated else {}

    def check_model(self, model) -> None:
        if self.head is not None and getattr(model, "spec", None) is None:
            raise ConfigError(f"task '{self.name}' needs a model with a task head")

    # ---- task-specific --------------------------------------------------------------------
    def read(self, path: str, **options) -> list:
        raise NotImplementedError

    def featurize(self, examples: list, training: bool) -> list[dict]:
        raise NotImplementedError

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, model, examples: list, batch_size: int, device, autocast_ctx) -> list[dict]:
        raise NotImplementedError

    def describe(self, example) -> dict:
        """The input fields echoed beside a prediction."""
        out = {"text": example.text}
        if getattr(example, "pair", None) is not None:
            out["text_pair"] = example.pair
        return out

    def spec_options(self) -> dict:
        """TaskSpec fields (labels, label scheme, options predict needs) for a new head."""
        return {}


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=-100)

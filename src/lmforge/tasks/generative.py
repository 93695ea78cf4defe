"""Generative fine-tuning: the backbone's own LM head learns to write the output text.

``seq2seq`` (translation, summarization, any text-to-text) reads source/target pairs. An
encoder-decoder reads ``source <eos>`` and its decoder learns ``target <eos>`` by teacher
forcing from the model's ``decoder_start_token_id``; a decoder reads ``source <eos> target
<eos>`` (or ``prompt_template`` filled with the source, then the target) and only the target
tokens carry a loss. Validation adds greedy (or beam) generation on up to ``max_eval_examples``
examples, scored with BLEU and chrF (sacrebleu) and ROUGE-1/2/L (rouge-score).

``sft`` (instruction tuning, decoders) reads prompt/response or chat-message JSONL, renders each
conversation with the model's Jinja chat template exactly as transformers' apply_chat_template
does (ChatML when the model has none) and trains on the assistant turns only: each response and
the end-of-turn marker after it (see :mod:`.chat`). ``packing`` concatenates examples into
block_size windows in which each example attends only to itself, with positions restarting per
example, so a packed batch has the same loss as its examples one by one.

Both train the backbone itself (no head). The task options (task_args) are recorded in the
run's config.yaml, so `lmforge predict` / `lmforge evaluate` on the run generate the same way.

    lmforge finetune --task seq2seq --model t5-tiny --tokenizer tok.json --data eng-fra.tsv
    lmforge finetune --task sft --model SmolLM2-135M-Instruct.Q4_1.gguf --data chats.jsonl \
        --task_args '{"packing": true}'
    lmforge predict --model runs/finetune --data prompts.jsonl
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import EpochBatches, TaskObjective, cross_entropy, option, pad, register_task
from ..tokenization.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate, special_token_strings
from .metrics import generation_metrics
from .tabular import json_records

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Examples and readers

SOURCE_NAMES = ("source", "input", "src", "text", "sentence", "prompt", "document", "article")
TARGET_NAMES = ("target", "output", "tgt", "summary", "translation", "response", "highlights")
PROMPT_NAMES = ("prompt", "instruction", "sentence", "text", "input")


@dataclass
class TextPair:
    """A seq2seq example; ``target`` is None when predicting."""

    source: str
    target: str | None
    line: int


@dataclass
class Conversation:
    """An SFT example: chat messages ({"role", "content"}) in order, reference turns included."""

    messages: list[dict]
    line: int


def _read_lines(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def read_jsonl(path: Path, encoding: str = "utf-8") -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a bad line is a DataError naming it."""
    records = json_records(path, _read_lines(path, encoding))
    if not records:
        raise DataError(f"{path}: no examples")
    return records


def read_table(path: Path, encoding: str, columns: dict, names: dict[str, tuple[str, ...]]
               ) -> tuple[list[tuple[int, list[str]]], dict[str, int | None]]:
    """Rows of a .tsv/.csv file and the index of each wanted column. ``columns`` maps a role to
    a column name or 0-based number (None: the role's usual ``names``, else its position). The
    first row is a header when a column is asked for by name or it holds one of the names."""
    delimiter = "," if path.suffix == ".csv" else "\t"
    # TSV text often carries raw quote characters: never treat them as quoting.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with path.open(encoding=f"{encoding}-sig" if encoding == "utf-8" else encoding, newline="") as f:
            lines = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not lines:
        raise DataError(f"{path}: no examples")
    by_name = any(isinstance(c, str) and not c.isdigit() for c in columns.values() if c is not None)
    first = [c.strip() for c in lines[0]]
    header = first if by_name or any(c in n for n in names.values() for c in first) else None
    index: dict[str, int | None] = {}
    for position, (role, want) in enumerate(columns.items()):
        if isinstance(want, int) or (isinstance(want, str) and want.isdigit()):
            index[role] = int(want)
        elif header is None:
            index[role] = position
        elif want is not None:
            if want not in header:
                raise DataError(f"{path}: {role} column '{want}' not found (columns: {', '.join(header)})")
            index[role] = header.index(want)
        else:
            index[role] = next((header.index(c) for c in names[role] if c in header), None)
    start = 2 if header is not None else 1
    body = lines[1:] if header is not None else lines
    return [(n, cells) for n, cells in enumerate(body, start) if any(c.strip() for c in cells)], index


def read_pairs(path: str, source_column=None, target_column=None, labeled: bool = True,
               encoding: str = "utf-8") -> list[TextPair]:
    """Source/target pairs from JSONL (fields source/target or input/output, or the named
    ones) or a TSV/CSV (the named columns, else the first two of a header-less file; other
    columns, such as Tatoeba's attribution, are left alone)."""
    p = Path(path)
    pairs = []
    if p.suffix == ".jsonl":
        for n, record in read_jsonl(p, encoding):
            src = source_column or next((k for k in SOURCE_NAMES if k in record), None)
            tgt = target_column or next((k for k in TARGET_NAMES if k in record), None)
            if src not in record:
                raise DataError(f"{p}:{n}: no source field (looked for {src or ', '.join(SOURCE_NAMES)}; "
                                f"fields: {', '.join(record)})")
            if labeled and tgt not in record:
                raise DataError(f"{p}:{n}: no target field (looked for {tgt or ', '.join(TARGET_NAMES)}; "
                                f"fields: {', '.join(record)})")
            pairs.append(_pair(p, n, record[src], record.get(tgt) if labeled else None, labeled))
        return pairs
    rows, index = read_table(p, encoding, {"source": source_column, "target": target_column},
                             {"source": SOURCE_NAMES, "target": TARGET_NAMES})
    s, t = index["source"], index["target"]
    if s is None or (labeled and t is None):
        raise DataError(f"{p}: no {'source' if s is None else 'target'} column; name it with "
                        "task_args source_column / target_column")
    for n, cells in rows:
        need = max(s, t if labeled else 0)
        if len(cells) <= need:
            raise DataError(f"{p}:{n}: expected at least {need + 1} columns, found {len(cells)}")
        pairs.append(_pair(p, n, cells[s], cells[t] if labeled else None, labeled))
    if not pairs:
        raise DataError(f"{p}: no examples")
    return pairs


def _pair(path: Path, n: int, source, target, labeled: bool) -> TextPair:
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"{path}:{n}: empty or non-text source")
    if labeled and (not isinstance(target, str) or not target.strip()):
        raise DataError(f"{path}:{n}: empty or non-text target")
    return TextPair(source, target, n)


def read_conversations(path: str, labeled: bool = True, encoding: str = "utf-8") -> list[Conversation]:
    """Conversations from JSONL lines {"prompt", "response"} or {"messages": [{"role",
    "content"}, ...]} (either with an optional "system"), or prompts alone (to predict) from a
    TSV/CSV with a prompt column. Labeled data needs an assistant turn in every example."""
    p = Path(path)
    if p.suffix != ".jsonl":
        if labeled:
            raise DataError(f"{p}: sft training and evaluation data is JSONL with prompt/response "
                            "or messages")
        rows, index = read_table(p, encoding, {"prompt": None}, {"prompt": PROMPT_NAMES})
        if index["prompt"] is None:
            raise DataError(f"{p}: no prompt column (looked for {', '.join(PROMPT_NAMES)})")
        return [Conversation([{"role": "user", "content": cells[index["prompt"]]}], n)
                for n, cells in rows if len(cells) > index["prompt"]]
    return [_conversation(record, f"{p}:{n}", n, labeled) for n, record in read_jsonl(p, encoding)]


def _conversation(record: dict, where: str, line: int, labeled: bool) -> Conversation:
    system = record.get("system")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: \"messages\" must be a non-empty list")
        for m in messages:
            if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                    or not isinstance(m.get("content"), str)):
                raise DataError(f"{where}: each message needs a string \"role\" and \"content\"")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": str(system)})
    elif "prompt" in record:
        messages = [{"role": "user", "content": str(record["prompt"])}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": str(system)})
        if "response" in record:
            messages.append({"role": "assistant", "content": str(record["response"])})
        elif labeled:
            raise DataError(f"{where}: the prompt has no \"response\"")
    else:
        raise DataError(f"{where}: expected \"prompt\" and \"response\", or \"messages\" "
                        f"(fields: {', '.join(record) or 'none'})")
    if labeled and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message to learn from")
    return Conversation(messages, line)


# ---------------------------------------------------------------------------------------------
# Shared: batches, the LM loss on labeled positions, evaluation and generation


@dataclass
class GenerativeOptions:
    max_new_tokens: int = option(64, "longest generated answer (evaluation and predict)")
    num_beams: int = option(1, "beam search width (1 = greedy)")
    max_eval_examples: int | None = option(200, "validation examples generated at each evaluation "
                                                "(0 = all; none = no generation)")
    encoding: str = option("utf-8", "encoding of the data files")
    tokenizer_config: dict | None = option(None, "the model's tokenizer_config (special tokens, chat template)")


class GenerativeTask(TaskObjective):
    """Base of seq2seq and sft: features hold ``input_ids`` and ``labels`` (decoders: aligned
    with the ids, -100 where no loss; encoder-decoders: the target ids), ``prompt_ids`` (what
    generation starts from) and the ``reference`` text."""

    head = None
    forward_only = False  # evaluation generates
    Options = GenerativeOptions

    def __init__(self, tokenizer, arch: str, max_length: int, **options):
        super().__init__(tokenizer, arch, max_length, **options)
        o = self.options
        max_new_tokens, num_beams, max_eval_examples = o.max_new_tokens, o.num_beams, o.max_eval_examples
        encoding, tokenizer_config = o.encoding, o.tokenizer_config
        for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("num_beams", num_beams, 1),
                                 ("max_eval_examples", max_eval_examples, 0)):
            if name == "max_eval_examples" and value is None:
                continue  # no generation at evaluation
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"task option {name} must be an integer >= {low}, got {value!r}")
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.max_eval_examples, self.encoding = max_eval_examples, encoding
        self.tokenizer_config = tokenizer_config or {}
        self.stop_ids: set[int] = {self.eos_id}
        self.stop_texts: list[str] = []
        self.eval_features: list[dict] = []
        self.eval_batch_size = 32
        self.dropped = 0  # examples with no target token left after truncation

    # ---- batches ------------------------------------------------------------------------
    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": pad(ids, self.pad_id), "attention_mask": pad([[1] * len(x) for x in ids], 0),
                 "index": torch.tensor([f["index"] for f in features], dtype=torch.long)}
        if features[0].get("labels") is not None:
            batch["labels"] = pad([f["labels"] for f in features], -100)
        if "segment_ids" in features[0]:  # packed windows
            batch["position_ids"] = pad([f["position_ids"] for f in features], 0)
            batch["segment_ids"] = pad([f["segment_ids"] for f in features], 0)
        return batch

    def eval_batches(self, data, block_size: int, batch_size: int, count: int) -> list:
        self.eval_features, self.eval_batch_size = data, batch_size  # for generation at evaluate
        return super().eval_batches(data, block_size, batch_size, count)

    def generated_metrics(self, model, autocast_ctx) -> dict[str, float]:
        """BLEU, chrF, ROUGE and exact match of generated outputs for the first
        ``max_eval_examples`` labeled validation examples (0: all of them; None: none)."""
        if self.max_eval_examples is None:
            return {}
        chosen = [f for f in self.eval_features if f["reference"] is not None]
        chosen = chosen[:self.max_eval_examples or None]
        if not chosen:
            return {}
        hyps = self.generate_texts(model, [f["prompt_ids"] for f in chosen], self.eval_batch_size,
                                   autocast_ctx)
        scores = generation_metrics(hyps, [f["reference"] for f in chosen])
        return {f"val_{k}": v for k, v in scores.items()}

    def decoder_start(self, model) -> int:
        start = model.config.decoder_start_token_id
        return start if start is not None else self.pad_id

    def check_model(self, model) -> None:
        cfg = model.config
        if model.is_seq2seq and cfg.decoder_start_token_id is None:
            # T5 starts the decoder with its pad token, BART with </s>; recorded in the config
            # so generation starts it the same way.
            cfg.decoder_start_token_id = self.pad_id if cfg.pos_embedding == "relative" else self.eos_id

    # ---- loss ---------------------------------------------------------------------------
    def labeled_logits(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) at the positions that carry a label only: the vocabulary
        projection skips prompt and padding positions."""
        model = getattr(model, "_orig_mod", model)  # a compiled model: its module's methods
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if self.arch == "encoder-decoder":
            src_mask = None if bool(mask.all()) else mask
            start = torch.full_like(labels[:, :1], self.decoder_start(model))
            shifted = torch.cat([start, labels[:, :-1]], dim=1)  # teacher forcing
            decoder_ids = shifted.masked_fill(shifted == -100, self.pad_id)
            hidden = model.decode(decoder_ids, model.encode(ids, src_mask), src_mask)
            chosen = labels != -100
            return model.logits(hidden[chosen]), labels[chosen]
        attention = None if bool(mask.all()) else mask
        if "segment_ids" in batch:  # packed: each example sees only its own tokens
            seg = batch["segment_ids"]
            attention = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
        hidden = model.hidden_states(ids, batch.get("position_ids"), attention)
        target = labels[:, 1:]
        chosen = target != -100
        return model.logits(hidden[:, :-1][chosen]), target[chosen]

    def loss(self, model, batch) -> torch.Tensor:
        return cross_entropy(*self.labeled_logits(model, batch))

    @torch.no_grad()
    def teacher_forced(self, model, batches, device, autocast_ctx) -> tuple[float, float]:
        """Token-weighted mean loss and next-token accuracy over the labeled tokens."""
        total, correct, count = 0.0, 0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx():
                logits, labels = self.labeled_logits(model, batch)
            total += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            count += labels.numel()
        if count == 0:
            raise DataError("no target tokens to evaluate")
        return total / count, correct / count

    # ---- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate_texts(self, model, prompts: list[list[int]], batch_size: int, autocast_ctx) -> list[str]:
        """Greedy (or ``num_beams`` beam search) output text of each prompt, batched by length,
        in the run's precision (``autocast_ctx``)."""
        from ..generation.seq2seq import generate_tokens
        model = getattr(model, "_orig_mod", model)
        was_training = model.training
        model.eval()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        kwargs = {"greedy": True} if self.num_beams == 1 else {}
        if self.arch == "encoder-decoder":
            kwargs["decoder_start_token_id"] = self.decoder_start(model)
        try:
            for s in range(0, len(order), batch_size):
                rows = order[s:s + batch_size]
                with autocast_ctx():  # precision "fp32": generation adds no autocast of its own
                    done = generate_tokens(model, [prompts[i] for i in rows], self.max_new_tokens,
                                           num_beams=self.num_beams, precision="fp32",
                                           stop_token_ids=sorted(self.stop_ids),
                                           stream=self._stop_at_text(len(rows)), **kwargs)
                for i, completion in zip(rows, done):
                    out[i] = self.output_text(completion.tokens)
        finally:
            model.train(was_training)
        return out

    def _stop_at_text(self, rows: int):
        """A stream callback ending a row once its text shows an end-of-turn marker that is
        several tokens long (the model's tokenizer lacks it as one token)."""
        if not self.stop_texts:
            return None
        seen: list[list[int]] = [[] for _ in range(rows)]

        def stream(row: int, token_id: int) -> bool:
            seen[row].append(token_id)
            tail = self.tokenizer.decode(seen[row][-16:], skip_special_tokens=False)
            return any(s in tail for s in self.stop_texts)
        return stream

    def output_text(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=not self.stop_texts)
        for stop in self.stop_texts:
            text = text.split(stop, 1)[0]
        return text.strip()

    def log_metrics(self) -> dict[str, float]:
        out = super().log_metrics()
        return out | ({"dropped": self.dropped} if self.dropped else {})


# ---------------------------------------------------------------------------------------------
# seq2seq


@dataclass
class Seq2SeqTaskOptions(GenerativeOptions):
    source_column: str | None = option(None, "source text column/field")
    target_column: str | None = option(None, "target text column/field")
    prompt_template: str | None = option(None, "text around the source, with {source} once")


@register_task
class Seq2Seq(GenerativeTask):
    """Text to text on an encoder-decoder or a decoder (see the module docstring). Options:
    source_column / target_column, prompt_template (with ``{source}``), max_new_tokens and
    num_beams (generation at evaluation and predict), max_eval_examples (generated at each
    evaluation; 0 = all)."""

    name = "seq2seq"
    default_metric = "val_bleu"
    archs = ("decoder", "encoder-decoder")
    Options = Seq2SeqTaskOptions

    def __init__(self, tokenizer, arch: str, max_length: int, **options):
        super().__init__(tokenizer, arch, max_length, **options)
        o = self.options
        source_column, target_column, prompt_template = o.source_column, o.target_column, o.prompt_template
        self.columns = dict(source_column=source_column, target_column=target_column)
        self.template = None
        if prompt_template is not None:
            if not isinstance(prompt_template, str) or prompt_template.count("{source}") != 1:
                raise ConfigError("task option prompt_template must contain {source} once, got "
                                  f"{prompt_template!r}")
            self.template = prompt_template.split("{source}")

    def read(self, path: str, labeled: bool = True) -> list[TextPair]:
        return read_pairs(path, **self.columns, labeled=labeled, encoding=self.encoding)

    def fit_labels(self, rows) -> None:
        pass

    def prompt(self, source: str) -> tuple[list[int], list[int]]:
        """(source ids, the fixed ids after them): ``source <eos>``, or the template around
        the source (an encoder-decoder's source still ends with <eos>)."""
        if self.template is None:
            return self.encode(source), [self.eos_id]
        head, tail = self.template
        fixed = self.encode(tail) if tail else []
        return self.encode(head + source), fixed + ([self.eos_id] if self.arch == "encoder-decoder" else [])

    def featurize(self, rows: list[TextPair], training: bool) -> list[dict]:
        features = []
        for i, row in enumerate(rows):
            src, fixed = self.prompt(row.source)
            tgt = self.encode(row.target) if row.target is not None else None
            src, tgt = self._fit(src, len(fixed), tgt)
            prompt = src + fixed
            feature = {"prompt_ids": prompt, "reference": row.target, "index": i,
                       "input_ids": prompt, "labels": None}
            if tgt is not None:
                tgt = tgt + [self.eos_id]
                if self.arch == "encoder-decoder":
                    feature["labels"] = tgt
                else:
                    feature["input_ids"] = prompt + tgt
                    feature["labels"] = [-100] * len(prompt) + tgt
            features.append(feature)
        return features

    def _fit(self, src: list[int], fixed: int, tgt: list[int] | None):
        """Cut source and target (whose <eos> is added after) to the length limits: each
        stack's own for an encoder-decoder, longest first within one window for a decoder."""
        limit, t = self.max_length, len(tgt) if tgt is not None else 0
        if self.arch == "encoder-decoder":
            cut_src, cut_tgt = src[:max(1, limit - fixed)], tgt[:limit - 1] if tgt is not None else None
        else:
            room = limit - fixed - (1 if tgt is not None else 0)
            s = len(src)
            while s + t > room and (s > 1 or t > 1):
                if t > s:
                    t -= 1
                else:
                    s -= 1
            cut_src, cut_tgt = src[:s], tgt[:t] if tgt is not None else None
        if len(cut_src) < len(src) or (tgt is not None and len(cut_tgt) < len(tgt)):
            self.truncated += 1
        return cut_src, cut_tgt

    def evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        loss, acc = self.teacher_forced(model, batches, device, autocast_ctx)
        metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_token_acc": acc}
        return metrics | self.generated_metrics(model, autocast_ctx)

    def predict(self, model, rows: list[TextPair], batch_size: int, device, autocast_ctx) -> list[dict]:
        features = self.featurize([TextPair(r.source, None, r.line) for r in rows], training=False)
        texts = self.generate_texts(model, [f["prompt_ids"] for f in features], batch_size, autocast_ctx)
        return [{"generated": t} for t in texts]

    def describe(self, example: TextPair) -> dict:
        return {"source": example.source}


# ---------------------------------------------------------------------------------------------
# sft


@dataclass
class SFTOptions(GenerativeOptions):
    chat_template: str | None = option(None, "a Jinja chat template or a path to one (default: the "
                                             "model's, else ChatML)")
    packing: bool = option(False, "pack several conversations into one training window")
    max_new_tokens: int = option(256, "longest generated response (predict)")
    max_eval_examples: int | None = option(None, "validation responses generated and scored at "
                                                 "each evaluation (0 = all; default none)")


@register_task
class SFT(GenerativeTask):
    """Instruction tuning of a decoder on chat conversations (see the module docstring).
    Options: chat_template (a Jinja template or a path to one; default the model's
    tokenizer_config chat_template, else ChatML), packing, max_new_tokens and num_beams
    (predict), max_eval_examples (generate the responses of that many validation examples at
    each evaluation and score them: exact match is the accuracy of label-like responses;
    0 = all; default none, as long responses are slow to generate)."""

    name = "sft"
    default_metric = "val_loss"
    archs = ("decoder",)
    Options = SFTOptions

    def __init__(self, tokenizer, arch: str, max_length: int, **options):
        super().__init__(tokenizer, arch, max_length, **options)
        chat_template, packing = self.options.chat_template, self.options.packing
        if not isinstance(packing, bool):
            raise ConfigError(f"task option packing must be true or false, got {packing!r}")
        self.packing = packing
        if chat_template is not None and "{" not in chat_template and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text(encoding="utf-8")
        source = chat_template or self.tokenizer_config.get("chat_template") or DEFAULT_CHAT_TEMPLATE
        if not isinstance(source, str):  # a list of named templates: the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
            if source is None:
                raise ConfigError("the tokenizer_config has no default chat template")
        specials = special_token_strings(self.tokenizer_config, tokenizer, self.eos_id)
        self.template = ChatTemplate(source, specials)
        self.end_of_turn = self.template.end_of_turn(tokenizer)
        # Generation stops at the end of the turn: one token id, or its text when the
        # tokenizer spells it in several tokens (ChatML markers in a plain BPE).
        eot_id = tokenizer.token_to_id(self.end_of_turn) if self.end_of_turn else None
        eos_id = tokenizer.token_to_id(specials["eos_token"]) if "eos_token" in specials else None
        self.stop_ids |= {i for i in (eot_id, eos_id) if i is not None}
        if self.end_of_turn and eot_id is None:
            self.stop_texts = [self.end_of_turn]

    def read(self, path: str, labeled: bool = True) -> list[Conversation]:
        return read_conversations(path, labeled=labeled, encoding=self.encoding)

    def fit_labels(self, rows) -> None:
        pass

    # ---- rendering and masking ----------------------------------------------------------
    def encode_conversation(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(ids, labels aligned with them) of a rendered conversation: labels are the ids on
        the assistant spans, -100 elsewhere."""
        text = self.template.render(messages)
        spans = self.template.assistant_spans(text, messages, self.end_of_turn)
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids, labels = list(enc.ids), []
        for token_id, (start, _) in zip(ids, enc.offsets):
            inside = any(a <= start < b for a, b in spans)
            labels.append(token_id if inside else -100)
        if not self.end_of_turn and messages[-1]["role"] == "assistant":
            ids.append(self.eos_id)  # the template marks no end: teach the model to stop
            labels.append(self.eos_id)
        return ids, labels

    def featurize(self, rows: list[Conversation], training: bool) -> list[dict]:
        features, dropped = [], 0
        for i, conv in enumerate(rows):
            try:
                if not any(m["role"] == "assistant" for m in conv.messages):  # to predict
                    ids = self.prompt_ids(conv)
                    features.append({"input_ids": ids, "labels": None, "prompt_ids": ids,
                                     "reference": None, "index": i})
                    continue
                ids, labels = self.encode_conversation(conv.messages)
            except DataError as exc:
                raise DataError(f"line {conv.line}: {exc}") from None
            if len(ids) > self.max_length:
                ids, labels = ids[:self.max_length], labels[:self.max_length]
                self.truncated += 1
            if all(x == -100 for x in labels[1:]):
                dropped += 1  # the response fell beyond max_length
                continue
            reference = [m["content"] for m in conv.messages if m["role"] == "assistant"][-1]
            prompt = None if training or self.max_eval_examples is None else self.prompt_ids(conv)
            features.append({"input_ids": ids, "labels": labels, "prompt_ids": prompt,
                             "reference": reference, "index": i})
        if dropped:
            log.warning(f"{dropped} conversation(s) have no response token within "
                        f"{self.max_length} tokens and were left out")
        self.dropped += dropped
        return features

    def prompt_ids(self, conv: Conversation) -> list[int]:
        """The conversation up to (not including) its last assistant turn, with the
        template's generation prompt."""
        messages = conv.messages
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        text = self.template.render(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    # ---- packing ------------------------------------------------------------------------
    def train_sampler(self, data, block_size, batch_size, seed, sampling="random"):
        if self.packing:
            examples = len(data)
            data = pack(data, block_size, seed)
            log.info(f"packed {examples} examples into {len(data)} windows of up to {block_size} tokens")
        return EpochBatches(data, batch_size, seed, group_by_length=True)

    # ---- evaluation and prediction ------------------------------------------------------
    def evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        loss, acc = self.teacher_forced(model, batches, device, autocast_ctx)
        metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_response_acc": acc}
        return metrics | self.generated_metrics(model, autocast_ctx)

    def predict(self, model, rows: list[Conversation], batch_size: int, device, autocast_ctx) -> list[dict]:
        prompts = []
        for conv in rows:
            try:
                prompts.append(self.prompt_ids(conv))
            except DataError as exc:
                raise DataError(f"line {conv.line}: {exc}") from None
        return [{"generated": t} for t in self.generate_texts(model, prompts, batch_size, autocast_ctx)]

    def describe(self, example: Conversation) -> dict:
        messages = example.messages
        if messages[-1]["role"] == "assistant":  # the reference answer, not part of the input
            messages = messages[:-1]
        users = [m["content"] for m in messages if m["role"] == "user"]
        out = {"prompt": users[-1] if users else ""}
        if len(messages) > 1:
            out["messages"] = messages
        return out


def pack(features: list[dict], block_size: int, seed: int) -> list[dict]:
    """Examples (shuffled once, by ``seed``) concatenated greedily into windows of at most
    ``block_size`` tokens. Each token keeps its example's number (``segment_ids``, 1, 2, ...)
    and its position within the example, so attention and positions see the examples apart;
    an example's first token is never a target (nothing of its own precedes it)."""
    order = np.random.default_rng(seed).permutation(len(features))
    windows, current, used = [], [], 0
    for i in order:
        f = features[i]
        if current and used + len(f["input_ids"]) > block_size:
            windows.append(_join(current))
            current, used = [], 0
        current.append(f)
        used += len(f["input_ids"])
    if current:
        windows.append(_join(current))
    return windows


def _join(parts: list[dict]) -> dict:
    ids, labels, positions, segments = [], [], [], []
    for k, f in enumerate(parts, 1):
        n = len(f["input_ids"])
        ids += f["input_ids"]
        labels += [-100] + f["labels"][1:]
        positions += range(n)
        segments += [k] * n
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "segment_ids": segments,
            "index": -1, "prompt_ids": None, "reference": None}

"""Extractive question answering (SQuAD 1.1 / 2.0): the answer is a span of the context, found
from one start and one end logit per token (BERT's recipe).

The question comes first and the context second (``[CLS] q [SEP] context [SEP]`` for encoders,
``q <eos> context <eos>`` for decoders). A context longer than the model's window is cut into
overlapping windows ``doc_stride`` tokens apart; each window keeps the character offsets of its
context tokens, so a predicted token span maps back to an exact span of the context. A question
without an answer in a window (or at all: SQuAD 2.0) points both logits at position 0, whose
score is the "no answer" score. Post-processing searches the ``n_best`` starts and ends of every
window of a question and answers "" when no span beats the null score by ``null_threshold``.
Metrics are the official SQuAD v2 evaluation (exact match and token F1, on its 0-100 scale).

    lmforge finetune --task qa --model MODEL --data train-v2.0.json --val_data dev-v2.0.json \\
        --task_args '{"doc_stride": 128}'
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import TaskObjective, cross_entropy, option, register_task
from .metrics import normalize_answer
from .tabular import json_records


@dataclass
class Question:
    """One question about a context. ``answers`` are (text, character start) pairs of the
    context: empty for an unanswerable question, None when unlabeled (predict)."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] | None

    @property
    def impossible(self) -> bool:
        return self.answers is not None and not self.answers


# ---- reading ------------------------------------------------------------------------------
def read_questions(path: str | Path, labeled: bool = True,
                   articles: list[int] | None = None) -> list[Question]:
    """Questions from a SQuAD JSON file (``data[].paragraphs[].qas[]``; ``articles`` picks
    0-based articles) or from JSON lines ``{"id", "question", "context", "answers"}`` with
    answers as SQuAD's list of ``{"text", "answer_start"}`` or Hugging Face's dict of lists."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSON lines (or broken JSON: reported by line below)
    if isinstance(whole, dict) and "data" in whole:
        questions = _squad(path, whole["data"], labeled, articles)
    elif articles is not None:
        raise ConfigError(f"the task option 'articles' selects articles of a SQuAD JSON file; "
                          f"{path} is not one")
    else:
        questions = _json_lines(path, text, labeled)
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions


def _squad(path: Path, data: list, labeled: bool, articles: list[int] | None) -> list[Question]:
    if articles is not None:
        if bad := [a for a in articles if not isinstance(a, int) or not 0 <= a < len(data)]:
            raise ConfigError(f"articles {bad} are not in {path} (it has {len(data)} articles, "
                              f"numbered from 0)")
        data = [data[a] for a in sorted(set(articles))]
    questions = []
    try:
        for article in data:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = None
                    if labeled:
                        answers = [] if qa.get("is_impossible") else \
                            [(a["text"], int(a["answer_start"])) for a in qa["answers"]]
                    question = Question(str(qa["id"]), qa["question"], context, answers)
                    questions.append(_checked(path, question))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a SQuAD file (a question or paragraph lacks or misformats "
                        f"{exc})") from None
    return questions


def _json_lines(path: Path, text: str, labeled: bool) -> list[Question]:
    questions = []
    for n, record in json_records(path, text.splitlines()):
        if not {"question", "context"} <= set(record):
            raise DataError(f"{path}:{n}: expected a JSON object with 'question' and 'context'")
        answers = None
        if labeled:
            if "answers" not in record:
                raise DataError(f"{path}:{n}: no 'answers' field (use [] for an unanswerable question)")
            raw = record["answers"]
            if isinstance(raw, dict):  # Hugging Face datasets: {"text": [...], "answer_start": [...]}
                raw = [{"text": t, "answer_start": s}
                       for t, s in zip(raw.get("text", []), raw.get("answer_start", []))]
            try:
                answers = [(a["text"], int(a["answer_start"])) for a in raw]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}:{n}: answers must be objects with 'text' and "
                                "'answer_start'") from None
        question = Question(str(record.get("id", n)), str(record["question"]), str(record["context"]),
                            answers)
        questions.append(_checked(path, question))
    return questions


def _checked(path: Path, q: Question) -> Question:
    for text, start in q.answers or []:
        if q.context[start:start + len(text)] != text:
            raise DataError(f"{path}: question {q.id}: answer {text!r} is not at answer_start "
                            f"{start} of its context")
    return q


# ---- windows and spans ----------------------------------------------------------------------
def window_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """First context token of each window of ``room`` tokens, ``stride`` apart (at most
    ``room``, so no token is skipped), until the last window reaches the end."""
    starts = [0]
    while starts[-1] + room < n_tokens:
        starts.append(starts[-1] + min(stride, room))
    return starts


def token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token overlapping the characters [start, end), or None."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


@dataclass
class Window:
    """One window's logits and where its context tokens are: positions ``context_start`` on,
    with ``offsets`` their character spans in the context."""

    start_logits: np.ndarray
    end_logits: np.ndarray
    context_start: int
    offsets: list[tuple[int, int]]
    null: int = 0  # the "no answer" position: [CLS], or a decoder's last token


def best_answer(context: str, windows: list[Window], n_best: int = 20, max_answer_length: int = 30,
                null_threshold: float = 0.0, allow_null: bool = True) -> dict:
    """The best span over a question's windows: among the ``n_best`` start and end logits of
    each window, spans of context tokens with start <= end and at most ``max_answer_length``
    tokens, scored start + end logit. With ``allow_null`` (SQuAD 2.0) the answer is "" when
    the null score (start + end logit at the window's null position, the lowest over windows)
    exceeds the best span's score by more than ``null_threshold``. Offsets are characters: context[start:end] == answer
    (without the leading space a byte-level BPE token carries; blank spans are no answer)."""
    null = min(float(w.start_logits[w.null] + w.end_logits[w.null]) for w in windows)
    best = None  # (score, first char, end char)
    for w in windows:
        starts = np.argsort(-w.start_logits)[:n_best]
        ends = np.argsort(-w.end_logits)[:n_best]
        for s in starts:
            for e in ends:
                i, j = s - w.context_start, e - w.context_start
                if not 0 <= i <= j < len(w.offsets) or j - i + 1 > max_answer_length:
                    continue
                score = float(w.start_logits[s] + w.end_logits[e])
                if (best is None or score > best[0]) and context[w.offsets[i][0]:w.offsets[j][1]].strip():
                    best = (score, w.offsets[i][0], w.offsets[j][1])
    if best is None or (allow_null and null > best[0] + null_threshold):
        return {"answer": "", "start": 0, "end": 0, "score": round(null, 4)}
    score, a, b = best
    span = context[a:b]
    a, b = a + len(span) - len(span.lstrip()), b - len(span) + len(span.rstrip())  # BPE's spaces
    return {"answer": context[a:b], "start": a, "end": b, "score": round(score, 4)}


# ---- the official SQuAD v2 evaluation -------------------------------------------------------
def exact_match(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def token_f1(gold: str, pred: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:  # no answer: right only if both are empty
        return float(gold_tokens == pred_tokens)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(golds: list[list[str]], preds: list[str]) -> dict[str, float]:
    """SQuAD v2's evaluate script: per question the best EM / F1 over its gold answers (those
    that normalize to nothing are dropped; none left: the gold is ""), averaged x 100 over all
    questions, those with answers (HasAns_) and those without (NoAns_), with counts."""
    exact, f1, has_answer = [], [], []
    for answers, pred in zip(golds, preds, strict=True):
        gold = [a for a in answers if normalize_answer(a)] or [""]
        exact.append(max(exact_match(g, pred) for g in gold))
        f1.append(max(token_f1(g, pred) for g in gold))
        has_answer.append(bool(answers))
    exact, f1, has_answer = np.array(exact, float), np.array(f1, float), np.array(has_answer)
    out = {"exact": 100 * exact.mean(), "f1": 100 * f1.mean(), "total": float(len(exact))}
    for name, part in (("HasAns", has_answer), ("NoAns", ~has_answer)):
        if part.any():
            out |= {f"{name}_exact": 100 * exact[part].mean(), f"{name}_f1": 100 * f1[part].mean(),
                    f"{name}_total": float(part.sum())}
    return {k: float(v) for k, v in out.items()}


# ---- the task -------------------------------------------------------------------------------
@dataclass
class QAOptions:
    doc_stride: int = option(128, "tokens between the starts of consecutive context windows")
    max_query_length: int = option(64, "question tokens kept")
    max_answer_length: int = option(30, "longest answer, in tokens")
    n_best: int = option(20, "starts and ends searched per window")
    null_threshold: float = option(0.0, "answer \"\" when the null score beats the best span by more")
    version_2_with_negative: bool | None = option(None, "questions may be unanswerable (default: "
                                                        "true when a training question is)")
    articles: list[int] | None = option(None, "0-based articles of the training file to use")


@register_task
class QuestionAnswering(TaskObjective):
    """Start/end cross-entropy (their mean) over the tokens of each window; validation runs the
    full post-processing and scores EM / F1 per question. Task options (``--task_args``):

    - ``doc_stride`` (128): tokens between the starts of consecutive windows (Google's
      run_squad.py; Hugging Face's run_qa.py names the overlap instead);
    - ``max_query_length`` (64): question tokens kept; ``max_answer_length`` (30): longest
      answer in tokens; ``n_best`` (20): starts and ends searched per window;
    - ``null_threshold`` (0.0) and ``version_2_with_negative`` (default: true when a training
      question is unanswerable): when "" may be, and is, the answer;
    - ``articles``: 0-based articles of the training file (--data) to use.
    """

    name = "qa"
    head = "qa"
    default_metric = "val_f1"
    archs = ("encoder", "decoder")
    Options = QAOptions

    def __init__(self, tokenizer, arch: str, max_length: int, **options):
        if arch == "encoder-decoder":
            raise ConfigError("extractive QA needs an encoder or decoder model: an encoder-decoder "
                              "answers by generating (use --task seq2seq)")
        super().__init__(tokenizer, arch, max_length, **options)
        o = self.options
        doc_stride, max_query_length, max_answer_length = o.doc_stride, o.max_query_length, o.max_answer_length
        n_best, null_threshold, version_2_with_negative = o.n_best, o.null_threshold, o.version_2_with_negative
        articles = o.articles
        for key, value in (("doc_stride", doc_stride), ("max_query_length", max_query_length),
                           ("max_answer_length", max_answer_length), ("n_best", n_best)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"task option '{key}' must be a positive integer, got {value!r}")
        if version_2_with_negative not in (None, True, False):
            raise ConfigError(f"task option 'version_2_with_negative' must be true, false or null "
                              f"(auto), got {version_2_with_negative!r}")
        self.special = 3 if arch == "encoder" else 2  # [CLS] q [SEP] c [SEP] / q <eos> c <eos>
        if max_length - max_query_length - self.special < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for the context after a "
                              f"question of max_query_length {max_query_length} tokens")
        self.doc_stride, self.max_query_length = doc_stride, max_query_length
        self.max_answer_length, self.n_best = max_answer_length, n_best
        self.null_threshold = float(null_threshold)
        self.version_2_with_negative = version_2_with_negative
        self.articles = articles
        self.eval_questions: list[Question] = []
        self.eval_features: list[dict] = []

    # ---- data ---------------------------------------------------------------------------
    def read(self, path: str, labeled: bool = True) -> list[Question]:
        # `articles` selects from the training file, the first one read; --val_data is read whole.
        articles, self.articles = self.articles, None
        return read_questions(path, labeled, articles)

    def fit_labels(self, questions: list[Question]) -> None:
        """SQuAD 2.0 (answers may be "") when asked, or when a training question is unanswerable."""
        if self.version_2_with_negative is None:
            self.version_2_with_negative = any(q.impossible for q in questions)

    def windows(self, questions: list[Question]) -> list[dict]:
        """One feature per window of each question: ids, token types, which question
        (``example``), where its context starts, its context tokens' character offsets and the
        start/end targets of the first gold answer (the null position when outside the window
        or none: an encoder's [CLS]; a decoder's closing <eos>, as its first token sees nothing
        of the question or the context)."""
        features, contexts = [], {}
        for qi, q in enumerate(questions):
            q_ids = self.encode(q.question.lstrip())[:self.max_query_length]
            if q.context not in contexts:  # SQuAD asks several questions per paragraph
                enc = self.tokenizer.encode(q.context, add_special_tokens=False)
                contexts[q.context] = (enc.ids, enc.offsets)
            c_ids, c_offsets = contexts[q.context]
            span = None
            if q.answers:
                text, start = q.answers[0]
                span = token_span(c_offsets, start, start + len(text))
            room = self.max_length - len(q_ids) - self.special
            context_start = len(q_ids) + self.special - 1
            for w in window_starts(len(c_ids), room, self.doc_stride):
                ids, types = self.frame(q_ids, c_ids[w:w + room])
                null = 0 if self.arch == "encoder" else len(ids) - 1
                target = None if q.answers is None else (null, null)
                if span is not None and w <= span[0] and span[1] < w + room:
                    target = (context_start + span[0] - w, context_start + span[1] - w)
                features.append({"input_ids": ids, "token_type_ids": types, "index": len(features),
                                  "example": qi, "context_start": context_start,
                                  "offsets": c_offsets[w:w + room], "target": target, "null": null})
        return features

    def featurize(self, questions: list[Question], training: bool) -> list[dict]:
        features = self.windows(questions)
        if not training:  # evaluate() scores answers per question, so it needs these
            self.eval_questions, self.eval_features = questions, features
        return features

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.base_batch(features)
        if features[0]["target"] is not None:
            batch["start_positions"] = torch.tensor([f["target"][0] for f in features])
            batch["end_positions"] = torch.tensor([f["target"][1] for f in features])
        return batch

    # ---- training -----------------------------------------------------------------------
    def span_logits(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits (B, T), padding at -inf."""
        logits = self.forward(model, batch).float()
        pad = batch["attention_mask"] == 0
        return logits[..., 0].masked_fill(pad, -torch.inf), logits[..., 1].masked_fill(pad, -torch.inf)

    def loss(self, model, batch) -> torch.Tensor:
        start, end = self.span_logits(model, batch)
        return (cross_entropy(start, batch["start_positions"])
                + cross_entropy(end, batch["end_positions"])) / 2

    @torch.no_grad()
    def window_logits(self, model, batches, device, autocast_ctx) -> tuple[dict[int, tuple], float | None]:
        """{feature index: (start logits, end logits)} without padding, and the mean loss (None
        for unlabeled features)."""
        logits, loss_sum, count = {}, 0.0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx():
                start, end = self.span_logits(model, batch)
            if "start_positions" in batch:
                loss_sum += (cross_entropy(start, batch["start_positions"]).item()
                             + cross_entropy(end, batch["end_positions"]).item()) / 2 * len(start)
                count += len(start)
            start, end = start.cpu().numpy(), end.cpu().numpy()
            lengths = batch["attention_mask"].sum(1).tolist()
            for row, (i, n) in enumerate(zip(batch["index"].tolist(), lengths)):
                logits[i] = (start[row, :n], end[row, :n])
        return logits, (loss_sum / count if count else None)

    def answers(self, questions: list[Question], features: list[dict], logits: dict) -> list[dict]:
        """Each question's best answer over its windows (see ``best_answer``)."""
        windows = [[] for _ in questions]
        for f in features:
            windows[f["example"]].append(Window(*logits[f["index"]], f["context_start"], f["offsets"],
                                                f["null"]))
        allow_null = self.version_2_with_negative
        if allow_null is None:
            allow_null = any(q.impossible for q in questions)
        return [best_answer(q.context, w, self.n_best, self.max_answer_length, self.null_threshold,
                            allow_null) for q, w in zip(questions, windows)]

    def evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        logits, loss = self.window_logits(model, batches, device, autocast_ctx)
        predicted = self.answers(self.eval_questions, self.eval_features, logits)
        scores = squad_scores([[text for text, _ in q.answers] for q in self.eval_questions],
                              [p["answer"] for p in predicted])
        return {"val_loss": loss, **{f"val_{k}": v for k, v in scores.items()}}

    def predict(self, model, questions: list[Question], batch_size: int, device, autocast_ctx) -> list[dict]:
        features = self.windows(questions)
        batches = self.eval_batches(features, 0, batch_size, 0)
        logits, _ = self.window_logits(model, batches, device, autocast_ctx)
        return self.answers(questions, features, logits)

    def describe(self, question: Question) -> dict:
        return {"id": question.id, "question": question.question}

    def spec_options(self) -> dict:
        return {"extra": {"doc_stride": self.doc_stride, "max_query_length": self.max_query_length,
                          "max_answer_length": self.max_answer_length, "n_best": self.n_best,
                          "null_threshold": self.null_threshold,
                          "version_2_with_negative": self.version_2_with_negative}}

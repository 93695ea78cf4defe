"""Task metrics from the libraries each community reports with: scikit-learn (accuracy,
precision, recall, F1, MCC, confusion matrix), scipy (Pearson, Spearman), seqeval (entity-level
NER scores), sacrebleu (BLEU, chrF) and rouge-score (ROUGE)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np

PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, the articles a/an/the and extra whitespace (SQuAD's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())



def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict[str, float]:
    """accuracy, macro precision/recall/F1, MCC; for two classes also the F1 / precision /
    recall of the second label (GLUE's positive class: "1", paraphrase, acceptable)."""
    from sklearn.metrics import (accuracy_score, f1_score, matthews_corrcoef,
                                 precision_recall_fscore_support)
    ids = list(range(len(labels)))
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=ids, average="macro", zero_division=0)
    out = {"accuracy": accuracy_score(gold, pred), "macro_precision": p, "macro_recall": r,
           "macro_f1": f, "mcc": matthews_corrcoef(gold, pred)}
    if len(labels) == 2:
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=[1], average=None, zero_division=0)
        out |= {"precision": float(p[0]), "recall": float(r[0]), "f1": float(f[0])}
    else:
        out["f1"] = f1_score(gold, pred, labels=ids, average="micro", zero_division=0)
    return {k: float(v) for k, v in out.items()}


def confusion(gold: list[int], pred: list[int], n: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(gold, pred, labels=list(range(n)))


def regression_metrics(gold: list[float], pred: list[float]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr
    g, p = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    constant = np.ptp(p) == 0 or np.ptp(g) == 0  # correlations are undefined
    return {"pearson": 0.0 if constant else float(pearsonr(g, p).statistic),
            "spearman": 0.0 if constant else float(spearmanr(g, p).statistic),
            "mse": float(np.mean((g - p) ** 2))}


def plot_confusion(matrix: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix PNG: rows gold, columns predicted, counts in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    peak = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > peak / 2 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def generation_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0-100), ROUGE-1/2/L F-measures averaged over the
    examples (rouge-score with Porter stemming, 0-1) and exact match after SQuAD's answer
    normalization (0-100; accuracy when the outputs are labels), one reference per hypothesis."""
    import sacrebleu
    from rouge_score import rouge_scorer
    out = {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
           "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
           "exact_match": 100.0 * float(np.mean([normalize_answer(h) == normalize_answer(r)
                                                 for h, r in zip(hypotheses, references)]))}
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(ref, hyp) for ref, hyp in zip(references, hypotheses)]
    out |= {k: float(np.mean([s[k].fmeasure for s in scores])) for k in kinds}
    return {k: float(v) for k, v in out.items()}

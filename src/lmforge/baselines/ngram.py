"""Interpolated Kneser-Ney n-gram language model: the classic baseline for a perplexity table.

    lm = NGramLM(order=3).fit(sentences)            # lists of words (or of int token ids)
    lm.perplexity(test_sentences)
    lm = NGramLM.from_token_ids(ids, eos_id, order=4)  # a prepared dataset's shards

The estimate at order k interpolates a discounted k-gram estimate with the order k-1 one:

    p_k(w | h) = max(c_k(h w) - D(c), 0) / c_k(h .)  +  gamma_k(h) * p_{k-1}(w | h[1:])
    gamma_k(h) = sum over w seen after h of D(c_k(h w))  /  c_k(h .)

where c_n are raw counts at the highest order and, below it, Kneser-Ney continuation counts
c_k(h w) = N1+(. h w), the number of distinct words seen before ``h w``. The chain ends in the
uniform distribution over the vocabulary, so no word (not even ``<unk>``) gets probability 0.
A context never seen at order k is skipped (its gamma is 1). Discounts are either Chen &
Goodman's modified three (D1, D2, D3+ per order, from the count-of-counts of that order's
counts) or one fixed ``discount`` for every count, as in NLTK's ``KneserNeyInterpolated``
(whose exact definition, quirks included, ``nltk_compat=True`` reproduces).

Each sentence is padded with n-1 ``<s>`` (context only, never predicted) and ends in ``</s>``
(predicted). Counting never builds a Python object per n-gram: a context of k-1 tokens gets a
dense id from (its oldest token, the id of its k-2 newest tokens), an n-gram is the int64 key
``context_id * vocab + word``, and ``np.unique`` over all positions at once does the counting.
Scoring looks the same keys up with ``np.searchsorted``, one vectorized pass per order.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
FORMAT = "lmforge-ngram/1"


@dataclass
class _OrderTable:
    """The n-grams of one order k: sorted keys, their counts and the derived weights."""

    context_keys: np.ndarray  # sorted; key = oldest token * n_contexts(k-1) + id of the rest
    keys: np.ndarray          # sorted; key = context id * vocab + word
    counts: np.ndarray        # raw at the highest order, continuation counts below it
    alpha: np.ndarray | None = None  # discounted probability of each n-gram
    gamma: np.ndarray | None = None  # per context: weight of the next lower order


class NGramLM:
    """An n-gram language model with interpolated Kneser-Ney smoothing.

    Args:
        order: n, the number of tokens per n-gram (1 = unigram).
        discount: ``"modified"`` (Chen & Goodman's D1, D2, D3+ per order, the default) or a
            float in [0, 1] used for every count at every order.
        min_count: training words seen fewer times than this map to ``<unk>``.
        nltk_compat: reproduce ``nltk.lm.KneserNeyInterpolated`` exactly (needs a float
            discount). NLTK pads with n-1 ``</s>`` as well, counts the n-grams inside the
            padding, takes gamma's numerator from the raw n-gram types below the highest order,
            and ends the chain in the continuation unigram (no uniform base, no discount), so
            an unseen word scores -inf (NLTK >= 3.6; older NLTK ended in a uniform 1/|V|).
            Meant for checking against NLTK, not for use.

    Perplexity (``score``/``perplexity``) is per predicted token in natural log: every word of
    a sentence and its ``</s>`` are predicted, the ``<s>`` padding is not.
    """

    def __init__(self, order: int = 3, discount: str | float = "modified", min_count: int = 1,
                 nltk_compat: bool = False):
        if not isinstance(order, int) or order < 1:
            raise ConfigError(f"order must be an integer >= 1, got {order!r}")
        if discount != "modified":
            if isinstance(discount, str) or not 0.0 <= float(discount) <= 1.0:
                raise ConfigError("discount must be 'modified' or a number in [0, 1], "
                                  f"got {discount!r}")
            discount = float(discount)
        if not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"min_count must be an integer >= 1, got {min_count!r}")
        if nltk_compat and (discount == "modified" or order < 2):
            raise ConfigError("nltk_compat needs a fixed float discount and order >= 2")
        self.order, self.discount, self.min_count = order, discount, min_count
        self.nltk_compat = nltk_compat
        self.vocab: list[Hashable] = []          # internal id -> token
        self.discounts: list[tuple[float, float, float]] = []  # (D1, D2, D3+) per order
        self.eos_id: int | None = None           # the dataset's EOS id, for token-id models
        self._tables: list[_OrderTable] = []
        self._index: dict[Hashable, int] = {}
        self._lut: np.ndarray | None = None

    # ----------------------------------------------------------------------------- training
    def fit(self, sentences: Iterable[Sequence[Hashable]]) -> NGramLM:
        """Train on sentences given as sequences of tokens (words or int ids); returns self."""
        sentences = [list(s) for s in sentences]
        counts = Counter(t for s in sentences for t in s)
        for reserved in (BOS, EOS):
            if reserved in counts:
                raise DataError(f"training sentences contain the reserved token {reserved!r}")
        counts.pop(UNK, None)  # a literal <unk> in the data (WikiText has them) is our <unk>
        self._set_vocab([w for w, c in sorted(counts.items(), key=lambda wc: -wc[1])
                         if c >= self.min_count])
        stream, lengths = self._encode_sentences(sentences)
        self._train(stream, lengths)
        return self

    def fit_token_ids(self, ids: np.ndarray, eos_id: int) -> NGramLM:
        """Train on a flat array of token ids whose documents end in ``eos_id``; returns self.

        ``eos_id`` plays ``</s>``. Equals ``fit`` on the documents as sentences of ints.
        """
        ids = _as_int_array(ids)
        words, first, counts = np.unique(ids[ids != eos_id], return_index=True, return_counts=True)
        keep = np.lexsort((first, -counts))  # same order as fit(): by count, then first seen
        keep = keep[counts[keep] >= self.min_count]
        self._set_vocab([int(w) for w in words[keep]], eos_id=int(eos_id))
        self._train(*self._split_on_eos(ids))
        return self

    @classmethod
    def from_token_ids(cls, ids: np.ndarray, eos_id: int, order: int = 3, **kwargs) -> NGramLM:
        """A model of ``order`` trained on token ids (e.g. concatenated dataset shards)."""
        return cls(order, **kwargs).fit_token_ids(ids, eos_id)

    def _set_vocab(self, words: list[Hashable], eos_id: int | None = None) -> None:
        self.vocab = [UNK, BOS, EOS, *words]
        self.eos_id = eos_id
        self._index = {w: i for i, w in enumerate(self.vocab)}
        if eos_id is not None:
            self._index[eos_id] = EOS_ID
        self._lut = None

    def _train(self, stream: np.ndarray, lengths: np.ndarray) -> None:
        if not len(stream):
            raise DataError("no training tokens")
        n = self.order
        # NLTK also pads the right end with n-1 </s> and counts every n-gram of the padding.
        right = 0
        if self.nltk_compat:
            right = np.where(stream[np.cumsum(lengths) - 1] == EOS_ID, n - 2, 0)
        padded, pos = _pad(stream, lengths, n - 1, right)
        first_pos = [k - 1 if self.nltk_compat else n - 1 for k in range(1, n + 1)]
        self._tables = _count_ngrams(padded, pos, first_pos, len(self.vocab))
        self.discounts = [self._discounts_for(k, t.counts) for k, t in enumerate(self._tables, 1)]
        self._set_weights()

    def _discounts_for(self, k: int, counts: np.ndarray) -> tuple[float, float, float]:
        if self.nltk_compat and k == 1:
            return (0.0, 0.0, 0.0)  # NLTK's unigram is the plain continuation distribution
        if self.discount != "modified":
            return (self.discount,) * 3
        return modified_discounts(np.bincount(counts, minlength=5)[1:5])

    def _set_weights(self) -> None:
        vocab = len(self.vocab)
        for table, (d1, d2, d3) in zip(self._tables, self.discounts):
            context = table.keys // vocab
            n_contexts = len(table.context_keys)
            total = np.bincount(context, weights=table.counts, minlength=n_contexts)
            c = table.counts
            if self.discount == "modified":
                discount = np.select([c == 1, c == 2, c >= 3], [d1, d2, d3], 0.0)
                held = sum(d * np.bincount(context[mask], minlength=n_contexts)
                           for d, mask in ((d1, c == 1), (d2, c == 2), (d3, c >= 3)))
            else:  # one discount for every n-gram type (NLTK also applies it to count-0 types)
                discount = np.full(len(c), d1)
                held = d1 * np.bincount(context, minlength=n_contexts)
            seen = total > 0
            safe_total = np.where(seen, total, 1.0)
            table.alpha = np.maximum(c - discount, 0.0) / safe_total[context]
            table.gamma = np.where(seen, held / safe_total, 1.0)

    # ------------------------------------------------------------------------------ scoring
    def logprob(self, word: Hashable, context: Sequence[Hashable] = ()) -> float:
        """Natural-log probability of ``word`` after ``context``.

        The context is used as given (its last n-1 tokens): a shorter one gives the lower-order
        estimate, so pass ``<s>`` tokens explicitly to mean the start of a sentence.
        """
        context = list(context)[-(self.order - 1):] if self.order > 1 else []
        history = self._encode_tokens(context)[None, :]
        word_id = self._encode_tokens([word])
        with np.errstate(divide="ignore"):
            return float(np.log(self._probs(history, word_id)[0]))

    def probabilities(self, context: Sequence[Hashable] = ()) -> np.ndarray:
        """p(w | context) for every token of ``self.vocab`` (0 for ``<s>``); sums to 1
        (except in ``nltk_compat`` mode, which copies NLTK's slightly unnormalized gammas)."""
        context = list(context)[-(self.order - 1):] if self.order > 1 else []
        words = np.arange(len(self.vocab))
        history = np.broadcast_to(self._encode_tokens(context), (len(words), len(context)))
        probs = self._probs(history, words)
        probs[BOS_ID] = 0.0
        return probs

    def score(self, sentences: Iterable[Sequence[Hashable]]) -> tuple[float, int]:
        """(total natural-log probability, predicted tokens) over sentences: words and ``</s>``."""
        stream, lengths = self._encode_sentences([list(s) for s in sentences])
        return self._score_stream(stream, lengths)

    def perplexity(self, sentences: Iterable[Sequence[Hashable]]) -> float:
        """exp(-total logprob / predicted tokens); ``</s>`` is predicted, ``<s>`` is not."""
        total, tokens = self.score(sentences)
        return _perplexity(total, tokens)

    def score_token_ids(self, ids: np.ndarray, eos_id: int) -> tuple[float, int]:
        """``score`` for a flat array of token ids whose documents end in ``eos_id``.

        Every id is predicted, each EOS as ``</s>``; a last document without EOS just has none.
        """
        if self.eos_id is not None and eos_id != self.eos_id:
            raise ConfigError(f"this model was trained with eos_id {self.eos_id}, got {eos_id}")
        return self._score_stream(*self._split_on_eos(_as_int_array(ids), eos_id))

    def _score_stream(self, stream: np.ndarray, lengths: np.ndarray) -> tuple[float, int]:
        self._check_fitted()
        if not len(stream):
            return 0.0, 0
        n = self.order
        padded, pos = _pad(stream, lengths, n - 1, 0)
        at = np.flatnonzero(pos >= n - 1)
        history = np.empty((len(at), n - 1), dtype=np.int64)  # column -j: the j-th previous token
        for j in range(1, n):
            history[:, -j] = padded[at - j]
        with np.errstate(divide="ignore"):
            logp = np.log(self._probs(history, padded[at]))
        return float(logp.sum()), len(at)

    def _probs(self, history: np.ndarray, words: np.ndarray) -> np.ndarray:
        """p(words[i] | history[i]) using orders 1 .. len(history[i]) + 1 (vectorized)."""
        self._check_fitted()
        vocab = len(self.vocab)
        # The chain's base: uniform over every token that can be predicted (all but <s>).
        probs = np.full(len(words), 0.0 if self.nltk_compat else 1.0 / (vocab - 1))
        context = np.zeros(len(words), dtype=np.int64)
        known = np.ones(len(words), dtype=bool)
        for k, table in enumerate(self._tables[:history.shape[1] + 1], 1):
            if k > 1:  # extend the context by one older token; look its id up
                key = history[:, -(k - 1)] * len(self._tables[k - 2].context_keys) + context
                context, found = _lookup(table.context_keys, key)
                known &= found
                context[~known] = 0
            found_at, found = _lookup(table.keys, context * vocab + words)
            alpha = np.where(found & known, table.alpha[found_at], 0.0)
            probs = np.where(known, alpha + table.gamma[context] * probs, probs)
        return probs

    # ------------------------------------------------------------------------------- encoding
    def _encode_tokens(self, tokens: Sequence[Hashable]) -> np.ndarray:
        return np.array([self._index.get(t, UNK_ID) for t in tokens], dtype=np.int64)

    def _encode_sentences(self, sentences: list[list[Hashable]]) -> tuple[np.ndarray, np.ndarray]:
        """Flat internal ids with ``</s>`` after each sentence, and the sentence lengths."""
        self._check_vocab()
        index, eos = self._index, [EOS]
        lengths = np.array([len(s) + 1 for s in sentences], dtype=np.int64)
        stream = np.fromiter((index.get(t, UNK_ID) for s in sentences for t in s + eos),
                             dtype=np.int64, count=int(lengths.sum()))
        ends = np.cumsum(lengths) - 1
        inner = np.ones(len(stream), dtype=bool)
        inner[ends] = False
        if np.any((stream[inner] == BOS_ID) | (stream[inner] == EOS_ID)):
            raise DataError(f"sentences must not contain the reserved tokens {BOS!r} or {EOS!r}")
        return stream, lengths

    def _split_on_eos(self, ids: np.ndarray,
                      eos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Map dataset ids to internal ids and cut after each EOS: (stream, sentence lengths)."""
        eos_id = self.eos_id if eos_id is None else eos_id
        stream = self._id_lut(max(int(ids.max(initial=0)), eos_id))[ids]
        stream[ids == eos_id] = EOS_ID
        ends = np.flatnonzero(ids == eos_id) + 1
        if not len(ends) or ends[-1] != len(ids):
            ends = np.append(ends, len(ids))
        return stream, np.diff(ends, prepend=0)

    def _id_lut(self, max_id: int) -> np.ndarray:
        """Dense table dataset id -> internal id, for vectorized encoding of id arrays."""
        self._check_vocab()
        if self._lut is None or len(self._lut) <= max_id:
            ints = [(w, i) for i, w in enumerate(self.vocab) if isinstance(w, (int, np.integer))]
            if len(ints) + 3 < len(self.vocab):
                raise ConfigError("this model's vocabulary is words, not token ids")
            size = max([max_id, *(w for w, _ in ints)]) + 1
            self._lut = np.full(size, UNK_ID, dtype=np.int64)
            for w, i in ints:
                self._lut[w] = i
        return self._lut

    # ---------------------------------------------------------------------------- inspection
    def num_parameters(self) -> int:
        """Stored n-gram probabilities plus backoff (interpolation) weights, all orders."""
        self._check_fitted()
        return sum(len(t.keys) + len(t.context_keys) for t in self._tables)

    def ngram_counts(self) -> list[int]:
        """Number of distinct n-grams stored at each order 1..n."""
        return [len(t.keys) for t in self._tables]

    def _check_vocab(self) -> None:
        if not self.vocab:
            raise ConfigError("the n-gram model is not trained: call fit() first")

    def _check_fitted(self) -> None:
        self._check_vocab()
        if not self._tables:
            raise ConfigError("the n-gram model is not trained: call fit() first")

    # ------------------------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write ``ngram.json`` (settings, vocabulary) and ``ngram.npz`` (counts) into a folder."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if not all(isinstance(w, (str, int, np.integer)) for w in self.vocab):
            raise ConfigError("only models over str or int tokens can be saved")
        meta = {"format": FORMAT, "order": self.order, "discount": self.discount,
                "min_count": self.min_count, "nltk_compat": self.nltk_compat,
                "eos_id": self.eos_id, "discounts": self.discounts,
                "vocab": [w if isinstance(w, str) else int(w) for w in self.vocab]}
        (path / "ngram.json").write_text(json.dumps(meta, ensure_ascii=False))
        arrays = {f"{name}_{k}": getattr(t, name) for k, t in enumerate(self._tables, 1)
                  for name in ("context_keys", "keys", "counts")}
        np.savez_compressed(path / "ngram.npz", **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NGramLM:
        """Read a model written by ``save``; the weights are recomputed from the counts."""
        path = Path(path)
        try:
            meta = json.loads((path / "ngram.json").read_text())
        except FileNotFoundError:
            raise DataError(f"no n-gram model at {path} (ngram.json missing)") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"corrupt {path / 'ngram.json'}: {exc}") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"{path} holds format {meta.get('format')!r}, expected {FORMAT!r}")
        model = cls(meta["order"], meta["discount"], meta["min_count"], meta["nltk_compat"])
        model._set_vocab(meta["vocab"][3:], meta["eos_id"])  # [3:]: after the specials
        model.discounts = [tuple(d) for d in meta["discounts"]]
        with np.load(path / "ngram.npz", allow_pickle=False) as arrays:
            model._tables = [_OrderTable(*(arrays[f"{name}_{k}"] for name in
                                           ("context_keys", "keys", "counts")))
                             for k in range(1, model.order + 1)]
        model._set_weights()
        return model


def modified_discounts(count_of_counts: Sequence[int]) -> tuple[float, float, float]:
    """Chen & Goodman's (D1, D2, D3+) from n1..n4, the number of n-grams seen 1..4 times.

    Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3. With too
    little data for the formula (n1, n2 or n3 is 0) every discount falls back to 0.75, KN's
    usual fixed value; each is clipped to [0, r] so a count never goes negative.
    """
    n1, n2, n3, n4 = (int(x) for x in count_of_counts)
    if min(n1, n2, n3) == 0:
        return (0.75, 0.75, 0.75)
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    return tuple(float(min(max(x, 0.0), r)) for r, x in enumerate(d, 1))


def evaluate_on_dataset(model: NGramLM, dataset_root: str | Path,
                        split: str = "val") -> tuple[float, int, float]:
    """Score one split of a prepared dataset: (total natural-log prob, tokens, perplexity)."""
    from ..data.dataset import TokenShards

    data = TokenShards(dataset_root, split)
    ids = np.concatenate([np.asarray(s) for s in data.shards])
    total, tokens = model.score_token_ids(ids, int(data.meta["eos_id"]))
    return total, tokens, _perplexity(total, tokens)


def fit_on_dataset(dataset_root: str | Path, order: int = 3, split: str = "train",
                   **kwargs) -> NGramLM:
    """Train an ``NGramLM`` of ``order`` on one split of a prepared dataset."""
    from ..data.dataset import TokenShards

    data = TokenShards(dataset_root, split)
    ids = np.concatenate([np.asarray(s) for s in data.shards])
    return NGramLM.from_token_ids(ids, int(data.meta["eos_id"]), order, **kwargs)


# ---------------------------------------------------------------------------------- helpers
def _count_ngrams(padded: np.ndarray, pos: np.ndarray, first_pos: list[int],
                  vocab: int) -> list[_OrderTable]:
    """Count the n-grams ending at positions ``pos >= first_pos[k-1]``, for each order k.

    The highest order keeps raw counts; each lower order gets continuation counts: every
    distinct (k+1)-gram adds one to the k-gram it ends with.
    """
    # Context ids are < len(padded) and words < vocab, so keys stay below their product; an
    # overflow would silently merge n-grams, so refuse a corpus where it could happen.
    if len(padded) * max(vocab, 2) >= 2 ** 62:
        raise DataError("corpus too large for 64-bit n-gram keys")
    tables: list[_OrderTable] = []
    at = np.flatnonzero(pos >= first_pos[0])
    context = np.zeros(len(at), dtype=np.int64)  # order 1: the one empty context
    context_keys = np.zeros(1, dtype=np.int64)
    prev_at = prev_ngram = None
    for k in range(1, len(first_pos) + 1):
        if k > 1:
            new_at = np.flatnonzero(pos >= first_pos[k - 1])
            context = _realign(context, at, new_at, len(padded))
            at = new_at
            key = padded[at - (k - 1)] * len(context_keys) + context
            context_keys, context = np.unique(key, return_inverse=True)
        keys, first, ngram = np.unique(context * vocab + padded[at], return_index=True,
                                       return_inverse=True)
        tables.append(_OrderTable(context_keys, keys, np.bincount(ngram)))
        if k > 1:  # each distinct k-gram type continues its (k-1)-gram suffix once
            suffix = _realign(prev_ngram, prev_at, at[first], len(padded))
            tables[-2].counts = np.bincount(suffix, minlength=len(tables[-2].keys))
        prev_at, prev_ngram = at, ngram
    return tables


def _realign(values: np.ndarray, at: np.ndarray, new_at: np.ndarray, size: int) -> np.ndarray:
    """Values given at positions ``at``, read at positions ``new_at`` (a subset of ``at``)."""
    full = np.zeros(size, dtype=np.int64)
    full[at] = values
    return full[new_at]


def _pad(stream: np.ndarray, lengths: np.ndarray, left: int,
         right: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put ``left`` ``<s>`` before and ``right`` ``</s>`` after each sentence of ``stream``.

    Returns the padded stream and each token's position within its padded sentence.
    """
    right = np.broadcast_to(np.asarray(right, dtype=np.int64), lengths.shape)
    size = lengths + left + right
    start = np.cumsum(size) - size
    out = np.full(int(size.sum()), BOS_ID, dtype=np.int64)
    token_start = np.cumsum(lengths) - lengths
    offset = np.arange(len(stream)) - np.repeat(token_start, lengths)
    out[np.repeat(start + left, lengths) + offset] = stream
    if right.any():
        pad_start = np.repeat(start + left + lengths, right)
        within = np.arange(len(pad_start)) - np.repeat(np.cumsum(right) - right, right)
        out[pad_start + within] = EOS_ID
    pos = np.arange(len(out)) - np.repeat(start, size)
    return out, pos


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each key in ``sorted_keys`` (0 where absent) and whether it was found."""
    at = np.searchsorted(sorted_keys, keys)
    at[at == len(sorted_keys)] = 0
    found = sorted_keys[at] == keys
    at[~found] = 0
    return at, found


def _as_int_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"token ids must be a 1-D integer array, got {ids.dtype} "
                        f"of shape {ids.shape}")
    if len(ids) and ids.min() < 0:
        raise DataError("token ids must be non-negative")
    return ids.astype(np.int64, copy=False)


def _perplexity(total_logprob: float, tokens: int) -> float:
    return math.exp(-total_logprob / tokens) if tokens else float("nan")

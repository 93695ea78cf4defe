"""The Kneser-Ney n-gram baseline: it matches NLTK and a textbook reference, its distributions
sum to 1, more context helps on real text, it is fast on a million tokens, it round-trips."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from lmforge.baselines import NGramLM, evaluate_on_dataset, fit_on_dataset, modified_discounts
from lmforge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def wikitext(shared_data) -> list[list[str]]:
    """WikiText-2 valid, one non-blank line per sentence (words, ``<unk>`` for rare ones)."""
    text = (shared_data / "corpora" / "wikitext2_tokenized_valid.txt").read_text(encoding="utf-8")
    return [line.split() for line in text.splitlines() if line.split()]


def zipf_corpus(seed: int = 0, sentences: int = 300) -> list[list[str]]:
    """Short sentences over 60 words drawn Zipf-like: n-grams seen 1, 2, 3, 4+ times at every
    order, so modified KN estimates all its discounts (no fallback) even for unigrams."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    weights = [1 / (i + 1) ** 1.5 for i in range(60)]
    return [rng.choices(words, weights, k=rng.randint(2, 7)) for _ in range(sentences)]


# ------------------------------------------------------------------------------ reference: NLTK
def nltk_logprob_total(train, test, order, discount):
    """NLTK's total natural-log score of each test word and the first ``</s>`` after it."""
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    ngrams, vocab = padded_everygram_pipeline(order, train)
    lm = KneserNeyInterpolated(order, discount=discount)
    lm.fit(ngrams, vocab)
    total, count = 0.0, 0
    for sentence in test:
        padded = ["<s>"] * (order - 1) + sentence + ["</s>"]
        for i in range(order - 1, len(padded)):
            total += math.log(lm.score(padded[i], padded[i - order + 1:i]))
            count += 1
    return total, count


@pytest.fixture(scope="module")
def nltk_split(wikitext):
    """Train on 100 lines; test on in-vocabulary runs (>= 3 words) of the next 10 lines.

    NLTK gives unseen words probability 0, so the test avoids them; cutting held-out lines at
    unseen words still leaves many unseen contexts and n-grams, which is what we want to test.
    """
    train, held_out = wikitext[:100], wikitext[100:110]  # NLTK is slow: keep it small
    vocab = {w for s in train for w in s}
    test = []
    for line in held_out:
        run = []
        for word in line + [None]:
            if word in vocab:
                run.append(word)
                continue
            if len(run) >= 3:
                test.append(run)
            run = []
    return train, test


@pytest.mark.parametrize("order", [2, 3, 4])
def test_matches_nltk_kneser_ney_interpolated(nltk_split, order):
    pytest.importorskip("nltk")
    train, test = nltk_split
    expected, count = nltk_logprob_total(train, test, order, discount=0.75)
    model = NGramLM(order, discount=0.75, nltk_compat=True).fit(train)
    total, tokens = model.score(test)
    assert tokens == count > 300
    assert total == pytest.approx(expected, rel=1e-9)
    assert model.perplexity(test) == pytest.approx(math.exp(-expected / count), rel=1e-6)


def test_nltk_compat_only_differs_by_its_documented_quirks(nltk_split):
    # With every vocabulary word seen in training the uniform base cancels out under a fixed
    # discount, so a bigram model equals NLTK without compat too. From order 3 on, NLTK's
    # padding quirks (extra </s>, n-grams inside the <s> padding) move sentence starts a little.
    train, test = nltk_split
    perplexities = {}
    for order in (2, 3):
        for compat in (False, True):
            model = NGramLM(order, discount=0.75, nltk_compat=compat).fit(train)
            perplexities[order, compat] = model.perplexity(test)
    assert perplexities[2, False] == pytest.approx(perplexities[2, True], rel=1e-12)
    assert perplexities[3, False] != pytest.approx(perplexities[3, True], rel=1e-6)
    assert perplexities[3, False] == pytest.approx(perplexities[3, True], rel=0.05)


# -------------------------------------------------------------- reference: textbook modified KN
class ReferenceModifiedKN:
    """Interpolated modified Kneser-Ney straight from the definitions, one dict entry per n-gram."""

    def __init__(self, sentences, order):
        self.order = order
        self.vocab = {w for s in sentences for w in s} | {"</s>", "<unk>"}
        self.counts = {k: Counter() for k in range(1, order + 1)}
        for sentence in sentences:
            padded = ["<s>"] * (order - 1) + sentence + ["</s>"]
            for i in range(order - 1, len(padded)):
                self.counts[order][tuple(padded[i - order + 1:i + 1])] += 1
        for k in range(order - 1, 0, -1):  # continuation counts: distinct words seen before
            before = defaultdict(set)
            for gram in self.counts[k + 1]:
                before[gram[1:]].add(gram[0])
            self.counts[k] = Counter({gram: len(words) for gram, words in before.items()})
        self.discounts = {}
        for k, counts in self.counts.items():
            n1, n2, n3, n4 = (sum(1 for c in counts.values() if c == r) for r in (1, 2, 3, 4))
            y = n1 / (n1 + 2 * n2)
            self.discounts[k] = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)

    def discount(self, k, count):
        return self.discounts[k][min(count, 3) - 1]

    def prob(self, word, context):
        word = word if word in self.vocab else "<unk>"
        context = tuple(context)[len(context) - self.order + 1:] if self.order > 1 else ()
        lower = self.prob(word, context[1:]) if context else 1 / len(self.vocab)
        k = len(context) + 1
        followers = {g[-1]: c for g, c in self.counts[k].items() if g[:-1] == context}
        if not followers:
            return lower
        total = sum(followers.values())
        count = followers.get(word, 0)
        alpha = max(count - self.discount(k, count), 0) / total if count else 0.0
        gamma = sum(self.discount(k, c) for c in followers.values()) / total
        return alpha + gamma * lower


def test_matches_brute_force_modified_kneser_ney():
    train = zipf_corpus()
    reference = ReferenceModifiedKN(train, order=3)
    model = NGramLM(3).fit(train)
    assert model.discounts == [pytest.approx(reference.discounts[k], rel=1e-12) for k in (1, 2, 3)]
    assert all(d != (0.75, 0.75, 0.75) for d in model.discounts)  # estimated, not the fallback
    words = sorted(reference.vocab) + ["never-seen"]
    contexts = [(), ("w0",), ("<s>",), ("<s>", "<s>"), ("<s>", "w1"), ("w0", "w1"), ("w0", "w0"),
                ("w59", "w58"), ("w3", "never-seen"), ("never-seen", "w2")]
    for context in contexts:
        for word in words:
            expected = math.log(reference.prob(word, context))
            assert model.logprob(word, context) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_modified_discounts_follow_chen_goodman():
    # One unigram sentence: 4 words once (+ its </s>: n1 = 5), 3 twice, 2 three times, 1 four times.
    sentence = ["a", "b", "c", "d"] + ["e", "f", "g"] * 2 + ["h", "i"] * 3 + ["j"] * 4
    model = NGramLM(order=1).fit([sentence])
    n1, n2, n3, n4 = 5, 3, 2, 1
    y = n1 / (n1 + 2 * n2)
    expected = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    assert model.discounts[0] == pytest.approx(expected, rel=1e-12)
    assert modified_discounts([n1, n2, n3, n4]) == pytest.approx(expected, rel=1e-12)
    assert modified_discounts([5, 0, 1, 1]) == (0.75, 0.75, 0.75)  # too little data: fallback


@pytest.mark.parametrize("discount", ["modified", 0.75])
def test_distributions_sum_to_one_at_every_order(wikitext, discount):
    model = NGramLM(4, discount=discount).fit(wikitext[:300])
    contexts = [(), ("the",), ("never-seen",), ("<s>",), ("of", "the"), ("<s>", "<s>", "<s>"),
                ("in", "the", "first"), ("never-seen", "the", "first"), ("the", "the", "the")]
    for context in contexts:
        probs = model.probabilities(context)
        assert probs[1] == 0 and np.delete(probs, 1).min() > 0  # only <s> is never predicted
        assert probs.sum() == pytest.approx(1.0, abs=1e-9), context


def test_unknown_and_rare_words_map_to_unk():
    train = [["a", "b", "a"], ["a", "c"]]
    model = NGramLM(2, min_count=2).fit(train)
    assert model.vocab == ["<unk>", "<s>", "</s>", "a"]  # b and c were rare
    assert model.logprob("b", ["a"]) == model.logprob("zzz", ["a"]) == model.logprob("<unk>", ["a"])
    assert math.isfinite(model.logprob("zzz", ["yyy"]))


# ------------------------------------------------------------------------------- real held-out
def test_more_context_lowers_heldout_perplexity(wikitext):
    cut = int(0.8 * len(wikitext))
    train, test = wikitext[:cut], wikitext[cut:]
    bigram = NGramLM(2).fit(train)
    trigram = NGramLM(3).fit(train)
    uniform = len(bigram.vocab) - 1
    ppl2, ppl3 = bigram.perplexity(test), trigram.perplexity(test)
    assert ppl3 < ppl2 < uniform / 20
    assert trigram.num_parameters() > bigram.num_parameters()


def test_trains_and_scores_a_million_tokens_fast(wikitext):
    corpus = wikitext * 5
    start = time.perf_counter()
    model = NGramLM(3).fit(corpus)
    trained = time.perf_counter()
    total, tokens = model.score(corpus)
    scored = time.perf_counter()
    print(f"1M-token trigram: train {trained - start:.2f}s, score {scored - trained:.2f}s")
    assert tokens > 1_000_000 and math.isfinite(total)
    assert trained - start < 30 and scored - trained < 30


# ----------------------------------------------------------------------------- io and token ids
def test_save_load_round_trip(tmp_path):
    train, test = zipf_corpus(1), zipf_corpus(2, sentences=50) + [["w1", "never-seen"]]
    model = NGramLM(3).fit(train)
    loaded = NGramLM.load(model.save(tmp_path / "kn3"))
    assert loaded.score(test) == model.score(test)
    assert loaded.discounts == model.discounts and loaded.num_parameters() == model.num_parameters()
    assert not list(tmp_path.glob("kn3/*.pkl"))
    with pytest.raises(DataError, match="ngram.json"):
        NGramLM.load(tmp_path / "missing")


def write_dataset(root, train_ids, val_ids, eos_id, vocab_size):
    """A dataset in the `lmforge prepare` format, written by hand: one uint16 shard per split."""
    root.mkdir(parents=True)
    splits = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        np.asarray(ids, dtype=np.uint16).tofile(root / f"{split}-00000.bin")
        splits[split] = {"shards": [f"{split}-00000.bin"], "shard_tokens": [len(ids)],
                         "tokens": len(ids), "docs": int(np.sum(np.asarray(ids) == eos_id))}
    meta = {"format": "lmforge-tokens/1", "dtype": "uint16", "vocab_size": vocab_size,
            "eos_id": eos_id, "tokenizer_sha256": "test", "splits": splits}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_token_ids_equal_sentences(tmp_path):
    eos = 0
    docs = [[int(w[1:]) + 1 for w in s] for s in zipf_corpus(3)]  # ids 1..12, eos 0
    val_docs = [[int(w[1:]) + 1 for w in s] for s in zipf_corpus(4, sentences=40)] + [[99, 5]]
    flat = lambda ds: np.array([t for d in ds for t in d + [eos]], dtype=np.int64)  # noqa: E731

    by_ids = NGramLM.from_token_ids(flat(docs), eos_id=eos, order=3)
    by_sentences = NGramLM(3).fit(docs)
    assert by_ids.vocab == by_sentences.vocab and by_ids.discounts == by_sentences.discounts
    assert by_ids.score_token_ids(flat(val_docs), eos) == by_sentences.score(val_docs)
    assert by_ids.score(val_docs) == by_sentences.score(val_docs)

    root = write_dataset(tmp_path / "ds", flat(docs), flat(val_docs), eos, vocab_size=100)
    total, tokens, ppl = evaluate_on_dataset(fit_on_dataset(root, order=3), root, split="val")
    assert (total, tokens) == by_sentences.score(val_docs)
    assert ppl == pytest.approx(by_sentences.perplexity(val_docs), rel=1e-12)


def test_refuses_bad_settings_and_input():
    with pytest.raises(ConfigError, match="order"):
        NGramLM(0)
    with pytest.raises(ConfigError, match="discount"):
        NGramLM(3, discount=1.5)
    with pytest.raises(ConfigError, match="nltk_compat"):
        NGramLM(3, nltk_compat=True)
    with pytest.raises(ConfigError, match="fit"):
        NGramLM(3).perplexity([["a"]])
    with pytest.raises(DataError, match="reserved"):
        NGramLM(2).fit([["a", "</s>", "b"]])
    with pytest.raises(DataError, match="no training tokens"):
        NGramLM(2).fit([])
    with pytest.raises(ConfigError, match="words, not token ids"):
        NGramLM(2).fit([["a", "b"]]).score_token_ids(np.array([1, 2, 0]), eos_id=0)

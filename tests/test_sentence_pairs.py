"""Next-sentence and sentence-order prediction: pair statistics as BERT/ALBERT build them,
combined MLM loss falls, and the inputs they cannot use are refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data.dataset import TokenShards
from lmforge.data.prepare import prepare_corpus
from lmforge.errors import ConfigError
from lmforge.objectives import get_objective
from lmforge.tokenization import train_tokenizer

from _util import SHAKESPEARE, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    text = root / "shake.txt"
    text.write_text(SHAKESPEARE.read_text()[:250_000])
    tok = train_tokenizer([text], kind="wordpiece", vocab_size=1000)
    prepare_corpus([text], tok, root / "sent", split_on_blank_lines=True, split_sentences=True,
                   val_fraction=0.05, workers=1)
    prepare_corpus([text], tok, root / "plain", split_on_blank_lines=True, val_fraction=0.05,
                   workers=1)
    one = root / "one.txt"
    one.write_text(SHAKESPEARE.read_text()[:20_000])
    prepare_corpus([one], tok, root / "onedoc", split_sentences=True, val_fraction=0.0, workers=1)
    return tok, root


def draw(name, tok, root, n=400, block=64, **opts):
    obj = get_objective(name, tokenizer=tok, meta={"eos_id": tok.token_to_id("[SEP]")}, seed=0, **opts)
    data = TokenShards(root / "sent", "train")
    sampler = obj.train_sampler(data, block, n, seed=0)
    return obj, data, sampler.next_batch()


def contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    if len(needle) == 0 or len(needle) > len(haystack):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool((windows == needle).all(axis=1).any())


def test_nsp_pairs(corpus):
    tok, root = corpus
    obj, data, instances = draw("nsp", tok, root)
    labels = np.array([label for *_, label in instances])
    assert 0.4 < labels.mean() < 0.6  # half random, half actual next
    stream = np.asarray(data.shards[0], dtype=np.int64)
    for a, b, label in instances[:60]:
        assert len(a) + len(b) <= 64 - 3 and len(a) and len(b)
        joined = np.concatenate([a, b])
        if label == 0 and len(joined) < 61:  # untruncated: B continues A in the corpus
            assert contains(stream, joined)
    batch = obj.make_batch(instances[:8])
    a, b, _ = instances[0]
    types = batch["token_type_ids"][0]
    assert types[: len(a) + 2].eq(0).all() and types[len(a) + 2: len(a) + len(b) + 3].eq(1).all()
    assert batch["attention_mask"][0].sum() == len(a) + len(b) + 3


def test_sop_pairs_are_consecutive_and_half_swapped(corpus):
    tok, root = corpus
    _, data, instances = draw("sop", tok, root)
    labels = np.array([label for *_, label in instances])
    assert 0.4 < labels.mean() < 0.6
    stream = np.asarray(data.shards[0], dtype=np.int64)
    checked = 0
    for a, b, label in instances[:80]:
        first, second = (b, a) if label == 1 else (a, b)
        if len(first) + len(second) < 61:  # untruncated: the two segments are adjacent text
            assert contains(stream, np.concatenate([first, second]))
            checked += 1
    assert checked > 10


def test_long_pairs_are_truncated_and_counted(corpus):
    tok, root = corpus
    obj, _, instances = draw("nsp", tok, root, n=200, block=16)
    assert all(len(a) + len(b) <= 13 for a, b, _ in instances)
    assert obj.truncated > 0 and obj.log_metrics()["truncated_pairs"] == obj.truncated


def test_nsp_and_sop_train(corpus, tmp_path):
    from lmforge.training import TrainConfig, Trainer
    tok, root = corpus
    for name in ("nsp", "sop"):
        cfg = TrainConfig(data=str(root / "sent"), out_dir=str(tmp_path / name), model="bert-mini",
                          model_args={"n_layer": 2, "n_embd": 64, "n_head": 2, "context_length": 64},
                          block_size=64, batch_size=16, max_steps=60, lr=2e-3, warmup_steps=5,
                          objective=name, progress=False, tensorboard=False, eval_interval=0,
                          eval_batches=6, precision="fp32", threads=2)
        trainer = Trainer(cfg)
        before = trainer.evaluate()
        after = trainer.fit()
        assert after["val_loss"] < before["val_loss"] - 0.5, (name, before, after)
        assert f"val_{name}_acc" in after and "val_mlm_acc" in after


def test_missing_boundaries_are_refused(corpus, tmp_path):
    tok, root = corpus
    common = ["--model", "bert-mini", "--n_layer", "1", "--n_embd", "32", "--n_head", "2",
              "--context_length", "64", "--block_size", "64", "--max_steps", "2", "--progress", "false"]
    proc = run_cli("pretrain", "--data", root / "plain", "--out_dir", tmp_path / "a", "--objective", "nsp", *common)
    assert_one_line_error(proc, "without --split-sentences")
    proc = run_cli("pretrain", "--data", root / "onedoc", "--out_dir", tmp_path / "b", "--objective", "nsp", *common)
    assert_one_line_error(proc, "at least 2 documents")


def test_first_segments_come_from_documents_in_proportion_to_length(corpus, tmp_path):
    """BERT makes instances from every sentence of every document: a long document must not be
    as rare as each of many short ones (the second segment of a random pair stays uniform)."""
    tok, _ = corpus
    long_doc = " ".join(f"The king spoke of war number {i}." for i in range(400))
    short = [f"A fool said {i} words." for i in range(60)]
    (tmp_path / "docs.txt").write_text("\n\n".join([long_doc] + short) + "\n")
    prepare_corpus([tmp_path / "docs.txt"], tok, tmp_path / "data", split_on_blank_lines=True,
                   split_sentences=True, val_fraction=0.0, workers=1)
    obj = get_objective("nsp", tokenizer=tok, meta={"eos_id": tok.token_to_id("[SEP]")}, seed=0)
    data = TokenShards(tmp_path / "data", "train")
    sampler = obj.train_sampler(data, 64, 8, seed=0)
    spans = data.documents(0)
    longest = int(np.argmax(spans[:, 1] - spans[:, 0]))
    share = (spans[longest, 1] - spans[longest, 0]) / (spans[:, 1] - spans[:, 0]).sum()
    g = torch.Generator().manual_seed(0)
    weighted = np.mean([sampler.random_document(g, by_length=True)[0][1] == longest for _ in range(2000)])
    uniform = np.mean([sampler.random_document(g)[0][1] == longest for _ in range(2000)])
    assert abs(weighted - share) < 0.04 and share > 0.7
    assert uniform < 0.05
    # the objective draws A by length unless told otherwise
    assert obj.by_length and not get_objective("nsp", tokenizer=tok, documents="uniform",
                                               meta={"eos_id": tok.token_to_id("[SEP]")}).by_length
    with pytest.raises(ConfigError, match="documents"):
        get_objective("sop", tokenizer=tok, documents="random", meta={"eos_id": tok.token_to_id("[SEP]")})

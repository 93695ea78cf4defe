"""Domain-adaptive continued pretraining (Gururangan et al. 2020): `lmforge pretrain --model
IMPORTED_ENCODER --objective mlm` continues masked-LM training from an encoder imported without
a masked-LM head (a sentence-transformers BertModel). The run adds a BERT head whose decoder is
the tied token embedding matrix; the dataset must come from the model's own tokenizer; the
exported model fine-tunes as usual."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.errors import DataError
from lmforge.hub import from_pretrained, load_model
from lmforge.objectives import get_objective
from lmforge.tokenization import load_tokenizer, train_tokenizer

from _util import run_cli

T = pytest.importorskip("transformers")
FAST = dict(threads=1, progress=False, tensorboard=False, precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def headless(tiny_models, tmp_path_factory) -> Path:
    """A tiny HF BertModel folder (no MLM head), as sentence-transformers publishes them, with
    a WordPiece tokenizer.json that switches truncation and padding on (as all-MiniLM-L6-v2's)."""
    out = tmp_path_factory.mktemp("dapt") / "encoder"
    tok = load_tokenizer(tiny_models / "bert" / "tokenizer.json")
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    T.BertModel(cfg, add_pooling_layer=True).save_pretrained(out)
    tok.enable_truncation(16)
    tok.enable_padding(length=16, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def in_domain(tiny_models, headless, tmp_path_factory) -> Path:
    """The in-domain text, prepared with the model folder's own tokenizer (`prepare -t MODEL`)."""
    work = tmp_path_factory.mktemp("dapt-data")
    text = work / "reviews.txt"
    lines = [l.split("\t")[0] for l in (tiny_models / "cls.tsv").read_text().splitlines()[1:]]
    long_line = " ".join(["a good film and a bad day"] * 10)  # 70 words: past the truncation at 16
    text.write_text("\n".join(lines * 10) + "\n" + long_line + "\n"
                    + (tiny_models / "corpus.txt").read_text()[:3_000])
    proc = run_cli("prepare", text, "-t", headless, "-o", work / "data", "--split-on-lines",
                   "--val-fraction", "0.1")
    assert proc.returncode == 0, proc.stderr
    return work / "data"


def test_prepare_ignores_truncation_and_padding_of_the_model_tokenizer(headless, in_domain):
    from lmforge.data.dataset import TokenShards
    shards = TokenShards(in_domain, "train")
    tok = load_tokenizer(headless / "tokenizer.json")
    ids = torch.from_numpy(shards.shards[0][:50_000].astype("int64"))
    assert int((ids == tok.token_to_id("[PAD]")).sum()) == 0  # no padding in the token stream
    # Truncation at 16 would cap every document (line) at 16 tokens: the long lines are whole.
    ends = (ids == shards.meta["eos_id"]).nonzero().flatten()
    assert int(ends.diff().max()) > 40


def test_added_head_is_tied_and_initialised(headless, in_domain):
    model, tok, _ = load_model(headless)
    assert model.is_encoder and not model.has_mlm_head()
    from lmforge.data.dataset import TokenShards
    obj = get_objective("mlm", tokenizer=load_tokenizer(in_domain / "tokenizer.json"), seed=0)
    obj.prepare_model(model, TokenShards(in_domain, "train"))
    assert model.has_mlm_head() and model.config.mlm_head is True
    assert model.mlm_head.embedding.weight is model.wte.weight  # decoder tied to the embeddings
    assert torch.equal(model.mlm_head.dense.weight, torch.eye(32))
    # The unigram bias: frequent tokens ("the") above rare ones.
    the = tok.token_to_id("the")
    assert model.mlm_head.bias[the] > model.mlm_head.bias.median() + 2


def test_continued_mlm_pretraining_then_finetune(tiny_models, headless, in_domain, tmp_path, caplog):
    common = dict(data=str(in_domain), model=str(headless), objective="mlm", batch_size=16,
                  block_size=32, warmup_steps=5, eval_interval=0, eval_batches=4, log_interval=1, **FAST)
    before = lmforge.pretrain(lmforge.TrainConfig(out_dir=str(tmp_path / "r0"), max_steps=1, lr=1e-9, **common))
    run = tmp_path / "dapt"
    with caplog.at_level(logging.WARNING):
        after = lmforge.pretrain(lmforge.TrainConfig(out_dir=str(run), max_steps=100, lr=5e-3, **common))
    assert any("added a masked-LM head" in r.getMessage() for r in caplog.records)
    vocab = from_pretrained(headless).config.vocab_size
    # The random tiny encoder knows nothing, but the added head's unigram bias does: before any
    # update the loss is already well below log(V) (uniform guessing); training lowers it.
    assert before["val_loss"] < math.log(vocab) - 0.75, (before["val_loss"], math.log(vocab))
    assert after["val_loss"] < before["val_loss"] - 0.3, (before, after)
    model = from_pretrained(run / "model")
    assert model.has_mlm_head() and model.mlm_head.embedding.weight is model.wte.weight
    # The exported model fine-tunes (classification) as usual.
    ft = lmforge.finetune(run / "model", tiny_models / "cls.tsv", out_dir=tmp_path / "ft",
                          val_data=tiny_models / "cls.tsv", epochs=20, batch_size=16, block_size=32,
                          warmup_steps=5, lr=3e-3, **FAST)
    assert ft["val_accuracy"] > 0.9, ft  # chance: 0.5


def test_pretraining_refuses_a_dataset_of_another_tokenizer(tiny_models, headless, tmp_path):
    other = train_tokenizer([str(tiny_models / "corpus.txt")], kind="wordpiece", vocab_size=300)
    data = tmp_path / "other"
    lmforge.prepare_corpus([tiny_models / "corpus.txt"], other, data, workers=1, val_fraction=0.1)
    with pytest.raises(DataError, match="different tokenizer"):
        lmforge.pretrain(lmforge.TrainConfig(data=str(data), out_dir=str(tmp_path / "r"),
                                             model=str(headless), objective="mlm", max_steps=1, **FAST))

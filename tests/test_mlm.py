"""Masked LM on the BERT-style encoder: mask statistics as BERT specifies, it learns, bad input."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.hub import from_pretrained
from lmforge.models import build_model, preset, save_pretrained
from lmforge.objectives import get_objective
from lmforge.tokenization import train_tokenizer
from lmforge.data.prepare import prepare_corpus

from _util import SHAKESPEARE, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer([SHAKESPEARE], kind="wordpiece", vocab_size=1200)


@pytest.fixture(scope="module")
def wp_dataset(tmp_path_factory, wordpiece):
    root = tmp_path_factory.mktemp("wp")
    text = root / "shake.txt"
    text.write_text(SHAKESPEARE.read_text()[:300_000])
    prepare_corpus([text], wordpiece, root / "data", split_on_blank_lines=True, val_fraction=0.05,
                   workers=1)
    return root / "data"


def windows(tok, n=64, length=126):
    ids = tok.encode(SHAKESPEARE.read_text()[:200_000]).ids
    ids = torch.tensor(ids[: n * length]).view(n, length)
    return ids


def test_mask_statistics_follow_bert(wordpiece):
    mlm = get_objective("mlm", tokenizer=wordpiece, meta={"eos_id": wordpiece.token_to_id("[SEP]")})
    w = windows(wordpiece)
    w[:, 10] = wordpiece.token_to_id("[SEP]")  # a document boundary inside a window
    batch = mlm.make_batch(w)
    ids = mlm.add_specials(w)
    selected = batch["labels"] != -100
    assert batch["input_ids"][:, 0].eq(mlm.cls_id).all() and batch["input_ids"][:, -1].eq(mlm.sep_id).all()
    assert not selected[:, 0].any() and not selected[:, -1].any() and not selected[:, 11].any()
    rate = selected.float().mean().item() * ids.shape[1] / (ids.shape[1] - 3)
    assert rate == pytest.approx(0.15, abs=0.01)
    assert torch.equal(batch["labels"][selected], ids[selected])  # labels are the originals
    inputs = batch["input_ids"][selected]
    masked = (inputs == mlm.mask_id).float().mean().item()
    kept = (inputs == ids[selected]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.03)
    assert kept == pytest.approx(0.1 + 0.1 / mlm.vocab_size, abs=0.03)  # 10% kept (+ random hits)
    random_tokens = inputs[(inputs != mlm.mask_id) & (inputs != ids[selected])]
    assert not mlm.special[random_tokens].any()  # random replacements are never specials
    assert torch.equal(batch["input_ids"][~selected], ids[~selected])


def test_masking_is_dynamic_and_checkpointable(wordpiece):
    mlm = get_objective("mlm", tokenizer=wordpiece, seed=3)
    w = windows(wordpiece, n=8)
    state = mlm.state_dict()
    first, second = mlm.make_batch(w), mlm.make_batch(w)
    assert not torch.equal(first["labels"], second["labels"])  # fresh masks every epoch
    mlm.load_state_dict(state)
    assert torch.equal(mlm.make_batch(w)["labels"], first["labels"])


def test_whole_word_masking_masks_all_pieces_of_a_word(wordpiece):
    mlm = get_objective("mlm", tokenizer=wordpiece, whole_word=True)
    w = windows(wordpiece)
    batch = mlm.make_batch(w)
    ids = mlm.add_specials(w)
    selected = batch["labels"] != -100
    cont = mlm.continuation[ids]
    assert cont.any()  # the corpus has multi-piece words
    # A continuation piece is selected exactly when the piece before it is.
    both = cont[:, 1:]
    assert torch.equal(selected[:, 1:][both], selected[:, :-1][both])
    rate = selected.float().mean().item()
    assert 0.11 < rate < 0.19


def test_span_masking_covers_budget_with_contiguous_spans(wordpiece):
    mlm = get_objective("mlm", tokenizer=wordpiece, span=True)
    batch = mlm.make_batch(windows(wordpiece, n=16))
    selected = batch["labels"] != -100
    rate = selected.float().mean().item()
    assert 0.12 < rate < 0.25
    # Spans: selected positions come in runs longer than single tokens on average.
    starts = (selected[:, 1:] & ~selected[:, :-1]).sum().item()
    assert selected.sum().item() / max(starts, 1) > 2.0


def test_mlm_learns_and_saves(wp_dataset, tmp_path):
    from lmforge.training import TrainConfig, Trainer
    cfg = TrainConfig(data=str(wp_dataset), out_dir=str(tmp_path / "run"), model="bert-mini",
                      model_args={"n_layer": 2, "n_embd": 64, "n_head": 2, "context_length": 64},
                      block_size=64, batch_size=16, max_steps=80, lr=2e-3, warmup_steps=5,
                      objective="mlm", progress=False, tensorboard=False, eval_interval=0,
                      eval_batches=8, precision="fp32", threads=2)
    trainer = Trainer(cfg)
    before = trainer.evaluate()["val_loss"]
    after = trainer.fit()["val_loss"]
    assert before > 6.9  # ~ln(1200) when untrained
    assert after < before - 0.8, (before, after)
    model = from_pretrained(tmp_path / "run")
    assert model.config.arch == "encoder"


def test_mlm_on_a_decoder_is_refused(wp_dataset, tmp_path):
    proc = run_cli("pretrain", "--data", wp_dataset, "--out_dir", tmp_path / "r", "--model", "baby",
                   "--objective", "mlm", "--max_steps", "2", "--progress", "false")
    assert_one_line_error(proc, "needs an encoder model")


def test_mask_token_missing_is_refused():
    bpe = train_tokenizer([SHAKESPEARE], kind="bpe", vocab_size=300)
    with pytest.raises(ConfigError, match="mask token missing"):
        get_objective("mlm", tokenizer=bpe)


def test_encoder_padding_and_round_trip(tmp_path):
    model = build_model(preset("bert-mini", n_layer=2, vocab_size=100)).eval()
    x = torch.randint(5, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        padded = model(x, mask)[1, :8]
        alone = model(x[1:, :8])[0]
    assert torch.allclose(padded, alone, atol=1e-5)  # padding is invisible to real tokens
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.mlm_head.embedding.weight is loaded.wte.weight
    with torch.no_grad():
        assert torch.equal(loaded(x, mask), model(x, mask))

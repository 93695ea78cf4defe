"""ELECTRA replaced-token detection: the losses and labels against independent formulas, sampling
that follows the generator and is reproducible, no gradient through the sample, a tiny run that
beats the all-original baseline and whose discriminator fine-tunes, and a bit-exact resume."""

from __future__ import annotations

import json
import math
import random
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmforge.hub import from_pretrained
from lmforge.models import build_model, preset
from lmforge.models.electra import ELECTRA
from lmforge.objectives import get_objective
from lmforge.objectives.electra import sample_tokens
from lmforge.tokenization import train_tokenizer
from lmforge.data.prepare import prepare_corpus
from lmforge.training import TrainConfig, Trainer

from _util import assert_one_line_error, run_cli

WORDS = ["red", "blue", "green", "gold"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Documents that repeat one colour word: a replaced token is visible from its context."""
    root = tmp_path_factory.mktemp("electra")
    rng = random.Random(0)
    lines = [" ".join([rng.choice(WORDS)] * rng.randint(20, 40)) for _ in range(1500)]
    (root / "c.txt").write_text("\n\n".join(lines) + "\n")
    return root / "c.txt"


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return train_tokenizer([str(corpus)], kind="wordpiece", vocab_size=100)


@pytest.fixture(scope="module")
def dataset(corpus, wordpiece) -> Path:
    out = corpus.parent / "data"
    prepare_corpus([corpus], wordpiece, out, split_on_blank_lines=True, val_fraction=0.2, workers=1)
    return out


def tiny_electra(tok, **options):
    torch.manual_seed(0)
    objective = get_objective("electra", tokenizer=tok, seed=5, **options)
    encoder = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64,
                                 n_head=4, context_length=32, dropout=0.0))
    return objective, objective.training_model(encoder)


def windows(tok, n=8, length=30):
    ids = tok.encode(" ".join(WORDS * 200)).ids
    return torch.tensor(ids[: n * length]).view(n, length)


class StubModel:
    """Fixed generator logits and random discriminator logits; records what the
    discriminator saw."""

    def __init__(self, gen_logits):
        self.gen_logits = gen_logits.requires_grad_()

    def generator_logits(self, input_ids, positions):
        assert int(positions.sum()) == self.gen_logits.shape[0]
        return self.gen_logits

    def rtd_logits(self, input_ids):
        self.seen = input_ids.clone()
        torch.manual_seed(1)
        self.logits = torch.randn(input_ids.shape, requires_grad=True)
        return self.logits


def test_losses_and_labels_match_the_definitions(wordpiece):
    objective, _ = tiny_electra(wordpiece)
    batch = objective.make_batch(windows(wordpiece))
    pad = wordpiece.token_to_id("[PAD]")
    batch["input_ids"][0, -6:] = pad  # a padded row: its pads count in no loss
    batch["labels"][0, -6:] = -100
    ids, labels = batch["input_ids"], batch["labels"]
    selected = labels != -100
    n = int(selected.sum())
    assert n > 10 and (ids[selected] == objective.mask_id).float().mean() > 0.6  # mostly [MASK]
    original = torch.where(selected, labels, ids)
    # Generator logits peaked on the original for even masked positions (the sample then
    # equals it: not replaced) and on another word for odd ones.
    V = objective.vocab_size
    other = wordpiece.token_to_id("gold")
    targets = labels[selected].clone()
    targets[1::2] = torch.where(targets[1::2] == other, wordpiece.token_to_id("red"), other)
    gen_logits = torch.full((n, V), -30.0)
    gen_logits[torch.arange(n), targets] = 30.0
    model = StubModel(gen_logits)
    out = objective.outputs(model, batch)
    expected_seen = original.clone()
    expected_seen[selected] = targets
    assert torch.equal(model.seen, expected_seen)
    expected_replaced = torch.zeros_like(selected)
    expected_replaced[selected] = targets != labels[selected]
    assert torch.equal(out["replaced"], expected_replaced)
    assert int(out["replaced"].sum()) == n // 2  # exactly the odd ones; sampled == original is 0
    # The reference formulas, written out.
    z, y = model.logits, expected_replaced.float()
    real = original != pad
    bce = (F.softplus(-z) * y + F.softplus(z) * (1 - y))[real].mean()
    logp = torch.log_softmax(gen_logits, -1)
    ce = -logp[torch.arange(n), labels[selected]].mean()
    assert torch.allclose(out["rtd_loss"], bce, atol=1e-6)
    assert torch.allclose(out["gen_loss"], ce, atol=1e-5)
    assert torch.allclose(out["loss"], ce + 50.0 * bce, atol=1e-4)
    assert int(out["tokens"].sum()) == ids.numel() - 6


def test_sampling_follows_the_generator_and_is_reproducible():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = torch.log(p).clamp(min=-1e9).expand(20000, -1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    draws = sample_tokens(logits, u)
    counts = torch.bincount(draws, minlength=5).float()
    assert counts[4] == 0  # a zero-probability token is never drawn
    expected = p[:4] * 20000
    chi2 = float(((counts[:4] - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001
    u2 = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_tokens(logits, u2), draws)


def test_batches_are_reproducible_from_the_objective_state(wordpiece):
    objective, _ = tiny_electra(wordpiece)
    state = objective.state_dict()
    first = objective.make_batch(windows(wordpiece))
    second = objective.make_batch(windows(wordpiece))
    assert not torch.equal(first["uniform"], second["uniform"])
    objective.load_state_dict(state)
    again = objective.make_batch(windows(wordpiece))
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_no_gradient_reaches_the_generator_through_the_sample(wordpiece):
    objective, model = tiny_electra(wordpiece)
    assert isinstance(model, ELECTRA) and not model.discriminator.has_mlm_head()
    batch = objective.make_batch(windows(wordpiece))
    out = objective.outputs(model, batch)
    out["rtd_loss"].backward()
    gen_grads = [p.grad for p in model.generator.parameters()]
    assert all(g is None or not g.any() for g in gen_grads)
    assert any(p.grad is not None and p.grad.any() for p in model.discriminator.blocks.parameters())
    assert model.rtd_out.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    objective.outputs(model, batch)["gen_loss"].backward()
    assert any(p.grad is not None and p.grad.any() for p in model.generator.parameters())
    assert model.rtd_out.weight.grad is None  # the generator loss does not touch the RTD head
    # The embeddings are shared: the generator's loss trains the discriminator's token embeddings.
    assert model.discriminator.wte.weight.grad.abs().sum() > 0


def electra_config(dataset: Path, out: Path, **extra) -> TrainConfig:
    fields = dict(data=str(dataset), out_dir=str(out), model="bert-mini", objective="electra",
                  model_args=dict(n_layer=2, n_embd=128, n_head=4, context_length=32,
                                  norm_placement="pre"),
                  block_size=32, batch_size=16, lr=2e-3, warmup_steps=5, max_steps=200,
                  eval_interval=0, eval_batches=16, log_interval=50, progress=False,
                  precision="fp32", tensorboard=False, threads=1)
    return TrainConfig(**{**fields, **extra})


def test_electra_beats_the_all_original_baseline_exports_and_finetunes(dataset, tmp_path):
    import lmforge
    run = tmp_path / "run"
    result = Trainer(electra_config(dataset, run)).fit()
    # The discriminator beats the all-"original" baseline: in accuracy on the last training
    # window (~25k tokens) and on validation, and in loss against the best constant guess.
    assert result["rtd_acc"] > 1 - result["replaced_share"] + 0.002, result
    assert result["val_rtd_acc"] > result["val_rtd_all_original_acc"], result
    share = result["val_replaced_share"]
    constant = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    assert result["val_rtd_loss"] < 0.8 * constant, result
    assert 0 < result["val_replaced_share"] < 0.15 and result["val_mlm_acc"] > 0.5, result
    assert "val_ppl" not in result
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("rtd_acc" in r and "replaced_share" in r for r in records)
    # RUN/model is the discriminator: a plain encoder without a masked-LM head.
    model = from_pretrained(run / "model")
    assert model.is_encoder and not model.has_mlm_head()
    gen = load_file(str(run / "generator" / "model.safetensors"))
    assert "bias" in gen and not any(k.startswith("wte") for k in gen)
    assert json.loads((run / "generator" / "config.json").read_text())["n_embd"] == 32
    rows = [(f"{w} {w} {w}", "warm" if w in ("red", "gold") else "cool") for w in WORDS * 10]
    (tmp_path / "cls.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    ft = lmforge.finetune(run / "model", tmp_path / "cls.tsv", out_dir=tmp_path / "ft",
                          task="classification", val_data=tmp_path / "cls.tsv", max_steps=6,
                          batch_size=8, block_size=16, lr=3e-3, threads=1, progress=False,
                          tensorboard=False, precision="fp32")
    assert ft["step"] == 6 and "val_accuracy" in ft


def test_electra_resume_is_bit_exact(dataset, tmp_path):
    ref = tmp_path / "ref"
    Trainer(electra_config(dataset, ref, max_steps=12, save_interval=4, dropout=0.1)).fit()
    run = tmp_path / "run"
    trainer = Trainer(electra_config(dataset, run, max_steps=12, save_interval=4, dropout=0.1))
    step = trainer._train_step

    def stop_after_six():
        out = step()
        if trainer.step == 6:
            trainer._stop_signal = signal.SIGINT  # as Ctrl-C: save and stop after this step
        return out

    trainer._train_step = stop_after_six
    assert trainer.fit()["interrupted"]
    resumed = Trainer(electra_config(dataset, run, max_steps=12, save_interval=4, dropout=0.1),
                      resume=True)
    assert resumed.step == 6
    resumed.fit()
    for part in ("model", "generator"):
        a = load_file(str(ref / part / "model.safetensors"))
        b = load_file(str(run / part / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (part, name)


def test_electra_on_a_decoder_is_refused(dataset, tmp_path):
    proc = run_cli("pretrain", "--data", dataset, "--out_dir", tmp_path / "r", "--model", "baby",
                   "--objective", "electra", "--max_steps", "2", "--progress", "false")
    assert_one_line_error(proc, "needs an encoder model")
    assert not (tmp_path / "r").exists()

"""Encoder-decoder objectives: T5 span corruption and BART noises have the statistics their
papers specify and lose nothing they should keep, batches pad correctly, noise is checkpointed,
loss falls on real text, and wrong models or tokenizers are refused clearly."""

from __future__ import annotations

import pytest
import torch

from lmforge.data.dataset import TokenShards
from lmforge.data.prepare import prepare_corpus
from lmforge.errors import ConfigError
from lmforge.hub import from_pretrained
from lmforge.models import GPT, build_model, preset
from lmforge.objectives import get_objective
from lmforge.objectives.denoising import (MarkedWindows, delete_tokens, infilling_spans,
                                          random_spans_noise_mask, rotate_document,
                                          t5_lengths, t5_span_counts, text_infilling)
from lmforge.tokenization import train_tokenizer

from _util import SHAKESPEARE, assert_one_line_error, run_cli

SENTINELS = [f"<extra_id_{i}>" for i in range(20)]
SPECIALS = ["<|endoftext|>", "<pad>", "<mask>", *SENTINELS]
TINY = {"n_layer": 2, "n_decoder_layer": 2, "n_embd": 64, "n_head": 2, "intermediate_size": 128,
        "context_length": 64}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than the math
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer([SHAKESPEARE], kind="bpe", vocab_size=600, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, bpe):
    """Tiny Shakespeare in scenes (blank-line documents) with a sentence index."""
    root = tmp_path_factory.mktemp("seq2seq")
    text = root / "shake.txt"
    text.write_text(SHAKESPEARE.read_text()[:250_000])
    prepare_corpus([text], bpe, root / "data", split_on_blank_lines=True, split_sentences=True,
                   val_fraction=0.05, workers=1)
    return root / "data"


def windows(tok, n=32, length=70):
    ids = tok.encode(SHAKESPEARE.read_text()[:100_000]).ids
    return torch.tensor(ids[: n * length]).view(n, length)


# --- T5 span corruption ---------------------------------------------------------------------


def test_t5_noise_mask_has_exact_counts_and_alternating_spans():
    g = torch.Generator().manual_seed(0)
    noise_total = spans_total = tokens_total = 0
    for length in range(20, 400, 7):
        noise = random_spans_noise_mask(length, 0.15, 3.0, g)
        num_noise, num_spans = t5_span_counts(length, 0.15, 3.0)
        starts = noise[1:] & ~noise[:-1]
        assert len(noise) == length and int(noise.sum()) == num_noise
        assert int(starts.sum()) == num_spans  # spans never touch: kept ones lie between
        assert not noise[0] and noise[-1]  # kept first, noise last, as T5
        noise_total, spans_total, tokens_total = (noise_total + num_noise, spans_total + num_spans,
                                                  tokens_total + length)
    assert noise_total / tokens_total == pytest.approx(0.15, abs=0.005)
    assert noise_total / spans_total == pytest.approx(3.0, abs=0.1)


def test_t5_span_corruption_reconstructs_exactly(bpe):
    t5 = get_objective("t5_span", tokenizer=bpe, seed=0)
    length = t5.window_length(64)
    assert t5_lengths(length, 0.15, 3.0)[0] == 64  # inputs fill the block, as T5 sizes them
    w = windows(bpe, length=length)
    batch = t5.make_batch(w)
    sentinel_ids = t5.sentinels.tolist()
    assert batch["input_ids"].shape[1] == 64 and batch["attention_mask"].all()
    for row in range(len(w)):
        inputs, target = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        target = [t for t in target if t != -100]
        assert inputs[-1] == target[-1] == t5.eos_id
        used = [t for t in inputs if t in sentinel_ids]
        assert used == sentinel_ids[:len(used)]  # <extra_id_0>, <extra_id_1>, ... in order
        assert [t for t in target if t in sentinel_ids] == used
        spans, current = {}, None
        for t in target[:-1]:
            if t in sentinel_ids:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in sentinel_ids else [t])]
        assert rebuilt == w[row].tolist()
    noise = (batch["labels"] != -100).sum() - len(w) * (len(used) + 1)
    assert noise.item() / w.numel() == pytest.approx(0.15, abs=0.01)


def test_t5_needs_sentinels_in_the_tokenizer(bpe):
    plain = train_tokenizer([SHAKESPEARE], kind="bpe", vocab_size=300,
                            special_tokens=["<|endoftext|>", "<pad>"])
    with pytest.raises(ConfigError, match=r"lacks <extra_id_0>.*--special-tokens"):
        get_objective("t5_span", tokenizer=plain)
    two = train_tokenizer([SHAKESPEARE], kind="bpe", vocab_size=300,
                          special_tokens=["<|endoftext|>", "<extra_id_0>", "<extra_id_1>"])
    t5 = get_objective("t5_span", tokenizer=two)
    assert t5.decoder_start == t5.eos_id  # no <pad>: the end-of-text token starts the decoder
    with pytest.raises(ConfigError, match=r"needs \d+ sentinel tokens .* lacks <extra_id_2>"):
        t5.window_length(128)


# --- BART noises ----------------------------------------------------------------------------


def test_text_infilling_masks_30_percent_in_poisson_spans():
    g = torch.Generator().manual_seed(0)
    lengths, inserts = [], 0
    for _ in range(300):
        spans, n_insert = infilling_spans(200, 0.3, 3.0, g)
        assert int(spans.sum()) == 60  # exactly 30% of the tokens
        lengths += spans.tolist()
        inserts += n_insert
    lengths += [0] * inserts
    mean = sum(lengths) / len(lengths)
    assert mean == pytest.approx(3.0, abs=0.2)  # Poisson(3), the budget's last span cut short
    tokens = torch.arange(10, 210)
    out = text_infilling(tokens, 0.3, 3.0, mask_id=0, generator=g)
    kept = out[out != 0]
    assert len(kept) == 140 and torch.equal(kept, kept.sort().values)  # the rest, in order
    masks = int((out == 0).sum())
    assert len(out) == 140 + masks and masks > 10


def test_bart_deletion_masking_and_rotation(bpe):
    g = torch.Generator().manual_seed(0)
    tokens = torch.arange(1, 101)
    deleted = delete_tokens(tokens, 0.15, g)
    assert len(deleted) == 85 and set(deleted.tolist()) < set(tokens.tolist())
    assert torch.equal(deleted, deleted.sort().values)  # order kept
    rotated = rotate_document(tokens, g)
    k = int(rotated[0]) - 1
    assert 0 < k < 100 and torch.equal(rotated, torch.roll(tokens, -k))
    bart = get_objective("bart", tokenizer=bpe, text_infilling=0.0, token_masking=0.2, seed=0)
    w = windows(bpe, length=63)
    batch = bart.make_batch(w)
    src = batch["input_ids"][:, :-1]
    assert ((src == bart.mask_id).sum(1) == round(0.2 * 63)).all()
    assert torch.equal(src[src != bart.mask_id], w[src != bart.mask_id])


def test_bart_batch_targets_original_and_pads(bpe):
    bart = get_objective("bart", tokenizer=bpe, token_deletion=0.1, document_rotation=True, seed=1)
    w = windows(bpe, length=63)
    batch = bart.make_batch(w)
    eos = bart.eos_id
    assert torch.equal(batch["labels"], torch.cat([w, torch.full((len(w), 1), eos)], dim=1))
    assert (batch["decoder_input_ids"][:, 0] == eos).all()  # BART's decoder starts at </s>
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() < 64  # infilling shortens sources unevenly: padded
    for row, n in enumerate(lengths.tolist()):
        assert batch["input_ids"][row, n - 1] == eos
        assert (batch["input_ids"][row, n:] == bart.pad_id).all()


def test_bart_sentence_permutation_keeps_the_sentences(bpe, dataset):
    bart = get_objective("bart", tokenizer=bpe, text_infilling=0.0, sentence_permutation=True,
                         seed=0)
    sampler = bart.train_sampler(TokenShards(dataset), 64, 8, seed=0)
    marked = sampler.next_batch()
    assert isinstance(marked, MarkedWindows) and marked.sentence_starts.sum() >= 8
    batch = bart.make_batch(marked)
    moved = 0
    for row, (w, starts) in enumerate(zip(*marked)):
        cuts = starts.nonzero().flatten()
        sentences = sorted(s.tolist() for s in torch.tensor_split(w, cuts[cuts > 0].tolist()))
        src = batch["input_ids"][row, :-1]
        assert sorted(src.tolist()) == sorted(w.tolist())
        moved += not torch.equal(src, w)
        # The source is the same sentences: each sentence occurs in it whole.
        text = src.tolist()
        assert all(any(text[i:i + len(s)] == s for i in range(len(text))) for s in sentences)
    assert moved >= 3  # a window inside one long sentence stays as it is
    assert len(bart.eval_batches(TokenShards(dataset, "val"), 64, 4, 2)) == 2
    plain = TokenShards(dataset)
    plain.meta = {**plain.meta, "sentence_index": False}
    with pytest.raises(ConfigError, match="--split-sentences"):
        bart.train_sampler(plain, 64, 8, seed=0)


# --- prefix LM ------------------------------------------------------------------------------


def test_prefix_lm_splits_the_window(bpe):
    plm = get_objective("prefix_lm", tokenizer=bpe, seed=0)
    w = windows(bpe, n=16, length=64)
    batch = plm.make_batch(w)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 4  # random split points
    for row, n in enumerate(lengths.tolist()):
        target = batch["labels"][row][batch["labels"][row] != -100]
        assert torch.equal(torch.cat([batch["input_ids"][row, :n], target]), w[row])
        assert batch["decoder_input_ids"][row, 0] == plm.decoder_start == plm.pad_id


# --- checkpointed noise, training, refusals -------------------------------------------------


@pytest.mark.parametrize("name, args", [("t5_span", {}), ("prefix_lm", {}),
                                        ("bart", {"token_deletion": 0.1, "document_rotation": True})])
def test_noise_state_round_trips(bpe, name, args):
    obj = get_objective(name, tokenizer=bpe, seed=5, **args)
    w = windows(bpe, n=4, length=63)
    state = obj.state_dict()
    first, second = obj.make_batch(w), obj.make_batch(w)
    assert not torch.equal(first["input_ids"], second["input_ids"])  # fresh noise each time
    obj.load_state_dict(state)
    again = obj.make_batch(w)
    assert all(torch.equal(again[k], first[k]) for k in first)


@pytest.mark.parametrize("objective, model, args", [
    ("t5_span", "t5-tiny", {}),
    ("bart", "bart-tiny", {"sentence_permutation": True}),
])
def test_loss_falls_and_noise_state_resumes(dataset, tmp_path, objective, model, args):
    from lmforge.training import TrainConfig, Trainer
    cfg = TrainConfig(data=str(dataset), out_dir=str(tmp_path / "run"), model=model,
                      model_args=TINY, block_size=64, batch_size=16, max_steps=40, lr=3e-3,
                      warmup_steps=5, objective=objective, objective_args=args, progress=False,
                      tensorboard=False, eval_interval=0, eval_batches=4, precision="fp32",
                      threads=1)
    trainer = Trainer(cfg)
    start = trainer.evaluate()
    before = start["val_loss"]
    end = trainer.fit()
    after = end["val_loss"]
    assert after < before - 0.8, (before, after)  # from ~ln(623) = 6.4
    # Teacher-forced target-token accuracy rises from ~chance (1/623) as the loss falls.
    assert end["val_token_acc"] > max(0.03, 3 * start["val_token_acc"]), (start, end)
    saved = from_pretrained(tmp_path / "run")
    assert saved.config.arch == "encoder-decoder"
    assert saved.config.decoder_start_token_id == trainer.objective.decoder_start
    resumed = Trainer(cfg, resume=True)
    assert resumed.step == 40
    assert torch.equal(resumed.objective.generator.get_state(), trainer.objective.generator.get_state())


def test_wrong_model_is_refused(bpe, dataset, tmp_path):
    with pytest.raises(ConfigError, match="needs an encoder-decoder model"):
        get_objective("bart", tokenizer=bpe).check_model(GPT(preset("baby", vocab_size=700)))
    t5 = build_model(preset("t5-tiny", vocab_size=700, **TINY))
    with pytest.raises(ConfigError, match="decoder_start_token_id=5 differs"):
        t5.config.decoder_start_token_id = 1
        get_objective("prefix_lm", tokenizer=bpe, decoder_start_token_id=5).check_model(t5)
    proc = run_cli("pretrain", "--data", dataset, "--out_dir", tmp_path / "r", "--model", "baby",
                   "--objective", "t5_span", "--max_steps", "2", "--progress", "false")
    assert_one_line_error(proc, "needs an encoder-decoder model")

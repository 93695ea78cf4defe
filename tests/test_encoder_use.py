"""Using an encoder: fill-mask matches the MLM head's softmax and never proposes specials;
sentence embeddings pool as documented and do not depend on the batch; pseudo-log-likelihood
equals masking each token by hand and prefers real Shakespeare to shuffled words; the CLI
writes .npy / JSONL and refuses bad input in one line."""

from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pytest
import torch

from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.evaluation import (embed, fill_in, fill_mask, pll_score_text, pll_token_logprobs,
                                score_text)
from lmforge.evaluation.masked_inputs import unpredictable_ids
from lmforge.models import GPT, build_model, preset, save_pretrained
from lmforge.objectives import get_objective
from lmforge.tokenization import train_tokenizer

from _util import SHAKESPEARE, assert_one_line_error, run_cli

CONTEXT = 32
PASSAGE = SHAKESPEARE.read_text(encoding="utf-8")[:460]  # the first lines of the play
LINES = ["Before we proceed any further, hear me speak.",
         "You are all resolved rather to die than to famish?",
         "Let us kill him, and we'll have corn at our own price."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([SHAKESPEARE], kind="wordpiece", vocab_size=600)


def tiny_encoder(tok, seed: int = 0):
    torch.manual_seed(seed)
    # Pre-norm trains faster from scratch than BERT's post-norm; the tools do not care.
    return build_model(preset("bert-mini", n_layer=2, n_head=2, n_embd=64, intermediate_size=128,
                              context_length=CONTEXT, norm_placement="pre",
                              vocab_size=tok.get_vocab_size())).eval()


@pytest.fixture(scope="module")
def encoder(tok):
    return tiny_encoder(tok)


@pytest.fixture(scope="module")
def trained(tok):
    """An encoder trained by MLM on the play's first lines (a few seconds): enough to learn
    which words follow which there, which is all PLL needs to tell real lines from shuffled.
    (Tried on several seeds: at 300 steps real lines win by 12+ nats, at 200 not yet.)"""
    model = tiny_encoder(tok).train()
    mlm = get_objective("mlm", tokenizer=tok, seed=0, mask_prob=0.3)
    ids = torch.tensor(plain(tok, PASSAGE))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    width = CONTEXT - 2  # room for [CLS] and [SEP]
    for _ in range(350):
        starts = torch.randint(0, len(ids) - width, (32,), generator=gen)
        loss = mlm.loss(model, mlm.make_batch(torch.stack([ids[s:s + width] for s in starts])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, encoder, tok):
    return save_pretrained(encoder, tmp_path_factory.mktemp("enc") / "model", tok)


@pytest.fixture(scope="module")
def decoder(tok):
    torch.manual_seed(0)
    return GPT(preset("baby", n_layer=1, n_head=2, n_embd=32, context_length=CONTEXT,
                      vocab_size=tok.get_vocab_size())).eval()


def plain(tok, text: str) -> list[int]:
    """Token ids of ``text`` without [CLS]/[SEP] (the post-processor would add them)."""
    return tok.encode(text, add_special_tokens=False).ids


def framed(tok, text: str) -> list[int]:
    return [tok.token_to_id("[CLS]"), *plain(tok, text), tok.token_to_id("[SEP]")]


def cli(capsys, *args) -> subprocess.CompletedProcess:
    """Run the CLI in-process (no interpreter start-up) and capture it like a subprocess."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


# ---- fill-mask ------------------------------------------------------------------------------

def manual_mask_probs(model, tok, text: str) -> torch.Tensor:
    """Softmax over non-special tokens at each mask, straight from the model's MLM head."""
    ids = torch.tensor([framed(tok, text.replace("<mask>", "[MASK]"))])
    with torch.no_grad():
        logits = model.mlm_logits(model(ids), ids == tok.token_to_id("[MASK]"))
    special = unpredictable_ids(tok, logits.shape[-1])
    return logits.masked_fill(special, float("-inf")).softmax(-1)


def test_fill_mask_is_the_mlm_softmax_without_specials(encoder, tok):
    text = "Before we proceed any [MASK], hear me speak."
    [guesses] = fill_mask(encoder, tok, text, top_k=10)
    probs = manual_mask_probs(encoder, tok, text)[0]
    top = probs.topk(10)
    # Compared by probability: an untrained model has near-ties that may swap places.
    assert [g.prob for g in guesses] == pytest.approx(top.values.tolist(), abs=1e-6)
    chosen = probs[[g.token_id for g in guesses]].tolist()
    assert [g.prob for g in guesses] == pytest.approx(chosen, abs=1e-6)
    assert [g.token for g in guesses] == [tok.id_to_token(g.token_id) for g in guesses]
    assert all(a.prob >= b.prob for a, b in zip(guesses, guesses[1:]))
    assert sum(g.prob for g in guesses) <= 1.0
    # Asking for everything returns every real token once and no special token at all.
    [everything] = fill_mask(encoder, tok, text, top_k=10_000)
    specials = {tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    assert len(everything) == tok.get_vocab_size() - len(specials)
    assert not specials & {g.token_id for g in everything}
    assert sum(g.prob for g in everything) == pytest.approx(1.0, abs=1e-4)


def test_fill_mask_several_masks_and_fill_in(encoder, tok):
    text = "[MASK] we proceed any [MASK], hear me <mask>."
    masks = fill_mask(encoder, tok, text, top_k=3)
    probs = manual_mask_probs(encoder, tok, text)
    assert len(masks) == 3
    for guesses, row in zip(masks, probs):
        assert [g.prob for g in guesses] == pytest.approx(row.topk(3).values.tolist(), abs=1e-6)
        chosen = row[[g.token_id for g in guesses]].tolist()
        assert [g.prob for g in guesses] == pytest.approx(chosen, abs=1e-6)
    filled = fill_in(tok, text, [g[0].token_id for g in masks])
    assert "[MASK]" not in filled and "<mask>" not in filled and filled.endswith(".")
    # A word piece is glued to the word before the mask; a whole word keeps its space.
    assert fill_in(tok, "they are walk [MASK] home", [tok.token_to_id("##ing")]) == "they are walking home"
    assert fill_in(tok, "hear me [MASK].", [tok.token_to_id("speak")]) == "hear me speak."


def test_fill_mask_refuses_bad_input(encoder, decoder, tok):
    with pytest.raises(DataError, match="no mask"):
        fill_mask(encoder, tok, "no blanks here")
    with pytest.raises(ConfigError, match="needs an encoder"):
        fill_mask(decoder, tok, "a [MASK] here")
    bpe = train_tokenizer([SHAKESPEARE], kind="bpe", vocab_size=300)
    with pytest.raises(ConfigError, match="no mask token"):
        fill_mask(encoder, bpe, "a [MASK] here")


# ---- embeddings -----------------------------------------------------------------------------

SENTENCES = ["Speak, speak.", "You are all resolved rather to die than to famish?",
             "First Citizen:", "Let us kill him, and we'll have corn at our own price."]


def test_mean_pooling_is_the_masked_mean_and_batch_independent(encoder, tok):
    vectors = embed(encoder, tok, SENTENCES, batch_size=3)
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 64)
    for text, vector in zip(SENTENCES, vectors):
        with torch.no_grad():
            hidden = encoder(torch.tensor([framed(tok, text)]))[0]
        assert np.allclose(vector, hidden.mean(0).numpy(), atol=1e-5)  # alone: no padding at all
        alone = embed(encoder, tok, [text])[0]
        assert np.allclose(vector, alone, atol=1e-5)
    shuffled = embed(encoder, tok, SENTENCES[::-1], batch_size=2)[::-1]
    assert np.allclose(vectors, shuffled, atol=1e-5)


def test_cls_and_pooler_and_normalize(encoder, tok):
    ids = torch.tensor([framed(tok, SENTENCES[0])])
    with torch.no_grad():
        hidden = encoder(ids)
        pooler = torch.tanh(encoder.pooler(hidden[0, 0]))
    cls = embed(encoder, tok, SENTENCES, pooling="cls")
    pooled = embed(encoder, tok, SENTENCES, pooling="pooler")
    assert np.allclose(cls[0], hidden[0, 0].numpy(), atol=1e-5)
    assert np.allclose(pooled[0], pooler.numpy(), atol=1e-5)
    unit = embed(encoder, tok, SENTENCES, normalize=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert np.allclose(unit, embed(encoder, tok, SENTENCES) / np.linalg.norm(
        embed(encoder, tok, SENTENCES), axis=1, keepdims=True), atol=1e-5)


def test_truncation_and_decoder_mean_pooling(encoder, decoder, tok):
    long_text = " ".join(LINES * 3)  # longer than the 32-token context
    [vector] = embed(encoder, tok, [long_text])
    ids = framed(tok, long_text)
    with torch.no_grad():
        hidden = encoder(torch.tensor([ids[:CONTEXT - 1] + ids[-1:]]))[0]  # [SEP] kept
    assert np.allclose(vector, hidden.mean(0).numpy(), atol=1e-5)
    short = embed(encoder, tok, [long_text], max_length=8)[0]
    with torch.no_grad():
        hidden = encoder(torch.tensor([ids[:7] + ids[-1:]]))[0]
    assert np.allclose(short, hidden.mean(0).numpy(), atol=1e-5)
    # A decoder embeds too, by mean pooling its causal hidden states, batch-independently.
    together = embed(decoder, tok, SENTENCES, batch_size=4)
    for text, vector in zip(SENTENCES, together):
        with torch.no_grad():
            hidden = decoder.hidden_states(torch.tensor([plain(tok, text)]))[0]
        assert np.allclose(vector, hidden.mean(0).numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="needs an encoder"):
        embed(decoder, tok, SENTENCES, pooling="cls")


def test_encoder_decoder_embeds_by_mean_of_its_encoder(tok):
    torch.manual_seed(0)
    t5 = build_model(preset("t5-tiny", n_layer=1, n_decoder_layer=1, n_head=2, n_embd=32,
                            intermediate_size=64, vocab_size=tok.get_vocab_size())).eval()
    vectors = embed(t5, tok, SENTENCES, batch_size=4)
    for text, vector in zip(SENTENCES, vectors):
        with torch.no_grad():
            hidden = t5.encode(torch.tensor([plain(tok, text)]))[0]
        assert np.allclose(vector, hidden.mean(0).numpy(), atol=1e-5)


def test_embed_cli_writes_npy_and_jsonl(encoder_dir, encoder, tok, tmp_path, capsys):
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES[:2]) + "\n\n" + SENTENCES[2] + "\n")
    expected = embed(encoder, tok, SENTENCES[:3], normalize=True)
    proc = cli(capsys, "embed", "--model", encoder_dir, "--input", source, "--output",
               tmp_path / "out.npy", "--normalize", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    array = np.load(tmp_path / "out.npy")
    assert array.dtype == np.float32 and array.shape == (3, 64)
    assert np.allclose(array, expected, atol=1e-6)
    proc = cli(capsys, "embed", "--model", encoder_dir, "--input", source, "--output",
               tmp_path / "out.jsonl", "--normalize")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == SENTENCES[:3]
    assert np.allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)
    assert_one_line_error(cli(capsys, "embed", "--model", encoder_dir, "--input", source,
                              "--output", tmp_path / "out.csv"), ".npy or .jsonl")


# ---- pseudo-log-likelihood ------------------------------------------------------------------

def manual_pll(model, tok, ids: list[int], width: int) -> list[float]:
    """Mask one token at a time, one forward pass each, in a window of ``width`` text tokens
    centred on it: the definition, without batching."""
    mask, cls, sep = (tok.token_to_id(t) for t in ("[MASK]", "[CLS]", "[SEP]"))
    out = []
    for t in range(len(ids)):
        start = min(max(t - width // 2, 0), max(len(ids) - width, 0))
        window = list(ids[start:start + width])
        window[t - start] = mask
        seq = torch.tensor([[cls, *window, sep]])
        with torch.no_grad():
            logits = model.mlm_logits(model(seq), seq == mask)[0]
        out.append(logits.log_softmax(-1)[ids[t]].item())
    return out


def test_pll_equals_masking_each_token_by_hand(encoder, tok):
    text = LINES[0]
    result = pll_score_text(encoder, tok, text, batch_size=5)
    ids = plain(tok, text)
    reference = manual_pll(encoder, tok, ids, width=CONTEXT - 2)
    assert result.method == "pseudo" and result.num_tokens == len(ids)
    assert [t.logprob for t in result.tokens] == pytest.approx(reference, abs=1e-5)
    assert [t.id for t in result.tokens] == ids
    assert result.total_logprob == pytest.approx(sum(t.logprob for t in result.tokens), abs=1e-9)
    assert result.perplexity == pytest.approx(np.exp(-sum(reference) / len(ids)), rel=1e-5)
    dispatched = score_text(encoder, tok, text)  # `lmforge score` picks PLL by the arch
    # Another batch size batches the masked copies differently: equal up to float rounding.
    assert [t.logprob for t in dispatched.tokens] == pytest.approx([t.logprob for t in result.tokens], abs=1e-5)


def test_pll_of_a_long_text_centres_a_window_on_each_token(encoder, tok):
    ids = plain(tok, " ".join(LINES))
    assert len(ids) > CONTEXT
    got = pll_token_logprobs(encoder, ids, tok.token_to_id("[MASK]"), tok.token_to_id("[CLS]"),
                             tok.token_to_id("[SEP]"), batch_size=16)
    assert got.tolist() == pytest.approx(manual_pll(encoder, tok, ids, CONTEXT - 2), abs=1e-5)
    narrow = pll_token_logprobs(encoder, ids, tok.token_to_id("[MASK]"), tok.token_to_id("[CLS]"),
                                tok.token_to_id("[SEP]"), max_length=12, batch_size=7)
    assert narrow.tolist() == pytest.approx(manual_pll(encoder, tok, ids, 10), abs=1e-5)
    with pytest.raises(ConfigError, match="max_length"):
        pll_token_logprobs(encoder, ids, 4, 2, 3, max_length=CONTEXT + 1)


def test_trained_encoder_prefers_real_lines_to_shuffled_words(trained, tok):
    for line in LINES:
        words = line.split()
        random.Random(0).shuffle(words)
        real = pll_score_text(trained, tok, line).total_logprob
        shuffled = pll_score_text(trained, tok, " ".join(words)).total_logprob
        assert real > shuffled, (line, real, shuffled)


def test_score_cli_on_an_encoder_reports_pseudo_perplexity(encoder_dir, encoder, tok, tmp_path, capsys):
    per_token = tmp_path / "tokens.jsonl"
    proc = cli(capsys, "score", "--model", encoder_dir, "--text", LINES[1], "--json",
               "--per-token", per_token, "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    expected = pll_score_text(encoder, tok, LINES[1])
    assert summary["method"] == "pseudo"
    assert summary["logprob"] == pytest.approx(expected.total_logprob, abs=1e-4)
    assert summary["perplexity"] == pytest.approx(expected.perplexity, rel=1e-4)
    records = [json.loads(line) for line in per_token.read_text().splitlines()]
    assert sum(r["logprob"] for r in records) == pytest.approx(summary["logprob"], abs=1e-6)
    proc = cli(capsys, "score", "--model", encoder_dir, "--text", LINES[1])
    assert "pseudo-perplexity" in proc.stdout and "pseudo-log-prob" in proc.stdout
    assert_one_line_error(cli(capsys, "score", "--model", encoder_dir, "--text", LINES[1],
                              "--stride", "8"), "stride does not apply")


# ---- fill-mask CLI and one-line errors ------------------------------------------------------

def test_fill_mask_cli_table_and_jsonl(encoder_dir, encoder, tok):
    text = "Before we proceed any [MASK], hear me speak."
    proc = run_cli("fill-mask", "--model", encoder_dir, "--json", "--top-k", "3",
                   input=text + "\n\nhear me [MASK].\n")  # stdin, one text per line
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == [text, "hear me [MASK]."]
    expected = fill_mask(encoder, tok, text, top_k=3)[0]
    assert [g["id"] for g in rows[0]["masks"][0]] == [g.token_id for g in expected]
    assert rows[0]["filled"] == fill_in(tok, text, [expected[0].token_id])


def test_fill_mask_cli_table(encoder_dir, capsys):
    proc = cli(capsys, "fill-mask", "--model", encoder_dir, "--text", "[MASK] me [MASK].")
    assert proc.returncode == 0, proc.stderr
    assert "mask 2" in proc.stdout and "filled:" in proc.stdout
    assert len([ln for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit()]) == 10


def test_cli_errors_are_one_line(encoder_dir, decoder, tok, tmp_path, capsys):
    decoder_dir = save_pretrained(decoder, tmp_path / "gpt", tok)
    assert_one_line_error(cli(capsys, "fill-mask", "--model", encoder_dir, "--text", "no blank"),
                          "no mask in the text")
    assert_one_line_error(cli(capsys, "fill-mask", "--model", decoder_dir, "--text", "a [MASK]"),
                          "needs an encoder")
    bpe = train_tokenizer([SHAKESPEARE], kind="bpe", vocab_size=300)
    bpe.save(str(tmp_path / "bpe.json"))
    assert_one_line_error(cli(capsys, "fill-mask", "--model", encoder_dir, "--tokenizer",
                              tmp_path / "bpe.json", "--text", "a [MASK]"), "no mask token")
    assert_one_line_error(cli(capsys, "embed", "--model", decoder_dir, "--pooling", "pooler",
                              "--input", encoder_dir / "config.json"), "needs an encoder")

"""Scoring: log-probabilities obey the chain rule, the sliding window equals a full forward pass
when the text fits and beats plain chunking when it does not, and `lmforge score` reports them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.evaluation import score_ids, score_text, token_logprobs
from lmforge.models import GPT, preset, save_pretrained

from _util import run_cli

EOS = "<|endoftext|>"
CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"
TEXT = "the quick brown fox jumps over the lazy dog. "


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def char_tokenizer(with_eos: bool = True) -> Tokenizer:
    specials = [EOS] if with_eos else []
    vocab = {t: i for i, t in enumerate(specials + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return tok


def tiny_model(context_length: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = preset("baby", vocab_size=len(CHARS) + 1, n_layer=2, n_head=4, n_embd=32,
                 context_length=context_length)
    return GPT(cfg).eval()


def full_forward_logprobs(model: GPT, ids: list[int]) -> torch.Tensor:
    """log P(ids[t] | ids[:t]) for t >= 1 from one forward pass over all of ``ids``."""
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].double()


@pytest.fixture(scope="module")
def trained() -> GPT:
    """A small model trained on a repeated sentence: given enough context it knows each next
    character; given one or two it does not (the letter after 'o' could be w, x, v or g)."""
    tok = char_tokenizer()
    data = torch.tensor(tok.encode(TEXT * 40).ids)
    model = tiny_model(context_length=16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 17, (16,), generator=gen)
        batch = torch.stack([data[s:s + 17] for s in starts])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_chain_rule_and_perplexity():
    model, tok = tiny_model(), char_tokenizer()
    result = score_text(model, tok, TEXT)
    ids = [tok.token_to_id(EOS)] + tok.encode(TEXT).ids
    reference = full_forward_logprobs(model, ids)
    assert result.num_tokens == len(TEXT)  # every character scored, the first after EOS
    assert [t.logprob for t in result.tokens] == pytest.approx(reference.tolist(), abs=1e-5)
    assert result.total_logprob == pytest.approx(sum(t.logprob for t in result.tokens), abs=1e-9)
    assert result.total_logprob == pytest.approx(reference.sum().item(), abs=1e-4)
    assert math.exp(-result.total_logprob / result.num_tokens) == pytest.approx(result.perplexity)
    assert result.total_logprob_bits == pytest.approx(result.total_logprob / math.log(2))
    first = result.tokens[0]
    assert (first.index, first.id, first.token) == (0, tok.token_to_id("t"), "t")


def test_without_end_of_text_token_the_first_token_is_context():
    model, tok = tiny_model(), char_tokenizer(with_eos=False)
    result = score_text(model, tok, "abcdef")
    assert result.num_tokens == 5 and result.tokens[0].index == 1 and result.tokens[0].token == "b"
    with pytest.raises(DataError, match="nothing to score"):
        score_text(model, tok, "a")


def test_text_that_fits_matches_one_forward_pass_for_any_stride():
    model = tiny_model(context_length=64)
    ids = torch.randint(0, 31, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = full_forward_logprobs(model, ids)
    for stride in (1, 7, 32, 64):
        got = token_logprobs(model, ids, stride=stride)
        assert torch.allclose(got, reference, atol=1e-5), stride


def test_stride_equal_to_window_is_chunked_scoring():
    model = tiny_model(context_length=16)
    ids = torch.randint(0, 31, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    # Chunks of 16 inputs; each predicts the token after each of its inputs.
    chunked = torch.cat([full_forward_logprobs(model, ids[s:s + 17]) for s in range(0, 49, 16)])
    assert torch.allclose(token_logprobs(model, ids, stride=16), chunked, atol=1e-5)
    assert len(chunked) == len(ids) - 1


def test_sliding_window_beats_chunking_on_a_long_text(trained):
    tok = char_tokenizer()
    text = TEXT * 6  # 270 characters, context 16
    chunked = score_text(trained, tok, text, stride=16)
    sliding = score_text(trained, tok, text, stride=4)
    assert chunked.num_tokens == sliding.num_tokens == len(text)
    assert sliding.total_logprob > chunked.total_logprob + 5
    assert sliding.perplexity < chunked.perplexity


def test_bad_input_is_refused():
    model, tok = tiny_model(context_length=16), char_tokenizer()
    with pytest.raises(DataError, match="empty text"):
        score_text(model, tok, "")
    with pytest.raises(ConfigError, match="stride"):
        score_text(model, tok, TEXT, stride=17)
    with pytest.raises(ConfigError, match="max_length"):
        score_text(model, tok, TEXT, max_length=32)
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        score_ids(model, [1, 2, 500])


def test_cli_score_json_and_per_token(tmp_path):
    model, tok = tiny_model(), char_tokenizer()
    folder = save_pretrained(model, tmp_path / "model", tok)
    per_token = tmp_path / "tokens.jsonl"
    proc = run_cli("score", "--model", folder, "--text", TEXT, "--json", "--per-token", per_token)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    expected = score_text(model, tok, TEXT)
    assert summary["tokens"] == expected.num_tokens
    assert summary["logprob"] == pytest.approx(expected.total_logprob, abs=1e-3)
    assert summary["perplexity"] == pytest.approx(expected.perplexity, rel=1e-4)
    records = [json.loads(line) for line in per_token.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(TEXT)))
    assert set(records[0]) == {"index", "id", "token", "logprob"}


def test_cli_score_text_report_and_empty_text(tmp_path, capsys):
    folder = save_pretrained(tiny_model(), tmp_path / "model", char_tokenizer())
    assert main(["score", "--model", str(folder), "--text", "abc"]) == 0
    out = capsys.readouterr().out
    for label in ("tokens      3", "log-prob", "nats", "bits", "mean NLL", "perplexity"):
        assert label in out
    assert main(["score", "--model", str(folder), "--text", ""]) == 2
    err = capsys.readouterr().err
    assert "empty text" in err and len(err.splitlines()) == 1

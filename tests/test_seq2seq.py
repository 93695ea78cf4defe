"""The encoder-decoder model and its generation: T5's position buckets as T5 defines them,
padding and caches change nothing, save/load round-trips, and beam search finds what it
should (exhaustive search, a constructed case, length penalty), for GPT too."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.generation import (BeamCompletion, Seq2SeqStep, beam_search, beam_search_decoder,
                                generate, generate_seq2seq, generate_text)
from lmforge.generation.seq2seq import banned_ngram_tokens, sample_loop
from lmforge.hub import from_pretrained
from lmforge.models import GPT, build_model, preset, save_pretrained
from lmforge.models.encoder_decoder import relative_position_bucket
from lmforge.models.transformer import RMSNorm

SMALL = dict(n_layer=2, n_decoder_layer=2, n_head=4, n_embd=32, intermediate_size=64,
             context_length=64, init_std=0.2)  # large init: peaked logits, no greedy near-ties
STYLES = ["t5-tiny", "bart-tiny"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than the math
    yield
    torch.set_num_threads(threads)


def tiny(style: str, vocab_size: int = 40, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = preset(style, vocab_size=vocab_size, decoder_start_token_id=0, **{**SMALL, **overrides})
    return build_model(cfg).eval()


SOURCES = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 2, 30, 31]]


# --- model ----------------------------------------------------------------------------------


def test_relative_position_buckets_match_t5():
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-300, 301)[None, :] - torch.arange(0, 5)[:, None]
    for bidirectional in (True, False):
        ours = relative_position_bucket(rel, bidirectional, 32, 128)
        theirs = T5Attention._relative_position_bucket(rel, bidirectional, 32, 128)
        assert torch.equal(ours, theirs)


def test_presets_are_rows_of_config_values():
    t5, bart = preset("t5-tiny"), preset("bart-tiny")
    assert (t5.arch, bart.arch) == ("encoder-decoder", "encoder-decoder")
    assert (t5.n_layer, t5.decoder_layers, bart.n_layer, bart.decoder_layers) == (4, 4, 3, 3)
    model = build_model(preset("t5-tiny", vocab_size=50))
    assert isinstance(model.enc_blocks[0].ln_1, RMSNorm)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.dec_blocks[0].attn.scale == 1.0 and not hasattr(model, "enc_wpe")
    bart_model = build_model(preset("bart-tiny", vocab_size=50))
    assert isinstance(bart_model.enc_emb_norm, torch.nn.LayerNorm)
    assert bart_model.lm_head.weight is bart_model.wte.weight  # one shared embedding
    assert preset("gpt2").n_decoder_layer is None and preset("gpt2").attention_scale is None
    gated = build_model(preset("t5-tiny", vocab_size=50, mlp="gated", activation="gelu_tanh",
                               n_decoder_layer=1))
    assert len(gated.dec_blocks) == 1 and gated.dec_blocks[0].mlp.gated
    with pytest.raises(ConfigError, match="relative"):
        preset("gpt-mini", pos_embedding="relative")


@pytest.mark.parametrize("style", STYLES)
def test_padding_and_caches_change_nothing(style):
    model = tiny(style)
    src = torch.randint(1, 40, (2, 10))
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    tgt = torch.randint(1, 40, (2, 7))
    with torch.no_grad():
        full = model(src, tgt, mask)
        alone = model(src[1:, :6], tgt[1:])
        hidden = model.encode(src, mask)
        cache = model.new_cache(2, 7)
        first = model.decode(tgt[:, :3], hidden, mask, cache)  # a multi-token cached step
        rest = [model.decode(tgt[:, i:i + 1], hidden, mask, cache) for i in range(3, 7)]
        stepped = model.lm_head(torch.cat([first, *rest], dim=1))
    assert torch.allclose(full[1:], alone, atol=1e-5)  # padding is invisible
    assert torch.allclose(full, stepped, atol=1e-5)  # KV + cross-attention caches
    assert len(cache.cross) == 2 and cache.length == 7


@pytest.mark.parametrize("style", STYLES)
def test_save_load_round_trip(style, tmp_path):
    model = tiny(style)
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.wte.weight
    src, tgt = torch.randint(1, 40, (2, 9)), torch.randint(1, 40, (2, 5))
    with torch.no_grad():
        assert torch.equal(loaded(src, tgt), model(src, tgt))


# --- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_cached_decoding_matches_uncached(style):
    model = tiny(style)
    for kw in (dict(greedy=True), dict(top_k=10, seed=3), dict(num_beams=3)):
        cached = generate_seq2seq(model, SOURCES, 12, precision="fp32", **kw)
        uncached = generate_seq2seq(model, SOURCES, 12, precision="fp32", use_cache=False, **kw)
        assert [c.tokens for c in cached] == [c.tokens for c in uncached], kw
    alone = generate_seq2seq(model, SOURCES[1:2], 12, greedy=True, precision="fp32")
    batch = generate_seq2seq(model, SOURCES, 12, greedy=True, precision="fp32")
    assert alone[0].tokens == batch[1].tokens  # source padding changes nothing


@pytest.mark.parametrize("style", STYLES)
def test_one_beam_is_greedy(style):
    model = tiny(style)
    start = torch.zeros(len(SOURCES), 1, dtype=torch.long)
    for stop in ([], [7]):
        greedy = generate_seq2seq(model, SOURCES, 10, greedy=True, stop_token_ids=stop, precision="fp32")
        beam = beam_search(Seq2SeqStep(model, SOURCES, 11), start, 1, 10, stop)
        assert [(c.tokens, c.finish_reason) for c in greedy] == \
            [(c.tokens, c.finish_reason) for c in beam]


def test_beam_search_is_exact_when_it_keeps_every_prefix():
    V, L = 5, 3
    model = tiny("t5-tiny", vocab_size=V, init_std=0.5)
    src = [[1, 2, 3, 4]]
    best = generate_seq2seq(model, src, L, num_beams=V ** (L - 1), length_penalty=0.0,
                            precision="fp32")[0]
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    dec_in = torch.cat([torch.zeros(len(seqs), 1, dtype=torch.long), seqs[:, :-1]], dim=1)
    with torch.no_grad():
        logp = model(torch.tensor(src).expand(len(seqs), -1), dec_in).log_softmax(-1)
    totals = logp.gather(-1, seqs[..., None]).squeeze(-1).sum(-1)
    assert best.tokens == seqs[totals.argmax()].tolist()
    assert best.score == pytest.approx(totals.max().item(), abs=1e-4)
    assert best.finish_reason == "length"


class TableStep:
    """A "model" whose next-token probabilities are a function of the tokens so far."""

    def __init__(self, probs):
        self.probs = probs

    def __call__(self, tokens):
        return torch.tensor([self.probs(row) for row in tokens.tolist()]).log()

    def reorder(self, index):
        pass


EOS, A, B, C = 0, 1, 2, 3


def garden_path(seq):
    """A looks best first, but B then C is the better sequence."""
    table = {(): [0.02, 0.55, 0.41, 0.02], (A,): [0.1, 0.3, 0.3, 0.3],
             (B,): [0.1 / 3, 0.1 / 3, 0.1 / 3, 0.9]}
    return table.get(tuple(seq), [0.97, 0.01, 0.01, 0.01])


def test_beam_search_finds_a_better_sequence_than_greedy():
    start = torch.zeros(1, 0, dtype=torch.long)
    greedy = sample_loop(TableStep(garden_path), start, 5, lambda logits, seen: logits.argmax(-1),
                         4, {EOS})[0]
    assert greedy.tokens == [A, A]
    greedy_logp = math.log(0.55 * 0.3 * 0.97)
    beam = beam_search(TableStep(garden_path), start, 2, 5, {EOS}, length_penalty=0.0)[0]
    assert isinstance(beam, BeamCompletion)
    assert (beam.tokens, beam.finish_reason) == ([B, C], "stop")
    assert beam.score == pytest.approx(math.log(0.41 * 0.9 * 0.97)) and beam.score > greedy_logp


def long_or_short(seq):
    """Stop at once (p=.5), or say A three times (p=.5 * .9 * .9) and then stop (.9)."""
    if not seq:
        return [0.5, 0.5]
    return [0.9, 0.1] if len(seq) >= 3 else [0.1, 0.9]


@pytest.mark.parametrize("penalty, expected", [(0.0, []), (1.0, [A, A, A]), (2.0, [A, A, A]),
                                               (-1.0, [])])
def test_length_penalty_divides_by_length_to_the_power(penalty, expected):
    start = torch.zeros(1, 0, dtype=torch.long)
    beam = beam_search(TableStep(long_or_short), start, 2, 4, {EOS}, length_penalty=penalty)[0]
    assert beam.tokens == expected
    logp = math.log(0.5) if not expected else math.log(0.5 * 0.9 ** 3)
    length = len(expected) + 1  # the stop token counts, as in Hugging Face
    assert beam.score == pytest.approx(logp / length ** penalty)


def test_early_stopping_ends_once_enough_hypotheses_finished():
    start = torch.zeros(1, 0, dtype=torch.long)
    eager = beam_search(TableStep(long_or_short), start, 2, 4, {EOS}, early_stopping=True)[0]
    assert eager.tokens == []  # two hypotheses ([] and [A]) were done before A A A could finish


def test_no_repeat_ngram():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2, 3], 1) == {1, 2, 3}
    model = tiny("bart-tiny", vocab_size=8)
    out = generate_seq2seq(model, [[1, 2, 3]], 20, num_beams=2, no_repeat_ngram_size=2,
                           precision="fp32")[0].tokens
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_beam_search_for_decoder_only_gpt():
    torch.manual_seed(0)
    gpt = GPT(preset("baby", vocab_size=40, n_layer=2, n_embd=32, context_length=64,
                     init_std=0.2)).eval()
    greedy = generate(gpt, SOURCES, 10, greedy=True, precision="fp32")
    beam = beam_search_decoder(gpt, SOURCES, 10, num_beams=1, precision="fp32")
    assert [c.tokens for c in greedy] == [c.tokens for c in beam]
    four = beam_search_decoder(gpt, SOURCES, 10, num_beams=4, precision="fp32")
    uncached = beam_search_decoder(gpt, SOURCES, 10, num_beams=4, use_cache=False, precision="fp32")
    alone = beam_search_decoder(gpt, SOURCES[2:], 10, num_beams=4, precision="fp32")
    assert [c.tokens for c in four] == [c.tokens for c in uncached]
    assert four[2].tokens == alone[0].tokens  # left padding changes nothing
    assert all(b.score >= g.score - 1e-6 for b, g in
               zip(four, beam_search_decoder(gpt, SOURCES, 10, num_beams=1, precision="fp32")))


def test_generation_refuses_a_model_without_decoder_start():
    model = tiny("t5-tiny")
    model.config.decoder_start_token_id = None
    with pytest.raises(ConfigError, match="decoder_start_token_id"):
        generate_seq2seq(model, SOURCES, 3)


# --- text and CLI ---------------------------------------------------------------------------

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?\n"


def char_tokenizer() -> Tokenizer:
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def test_generate_text_and_cli_with_an_encoder_decoder(tmp_path, capsys):
    tok = char_tokenizer()
    model = tiny("t5-tiny", vocab_size=len(CHARS) + 1)
    texts = generate_text(model, tok, ["hello there"], 8, greedy=True, precision="fp32")
    ids = generate_seq2seq(model, [tok.encode("hello there").ids], 8, greedy=True,
                           stop_token_ids=[0], precision="fp32")[0].tokens
    assert texts[0].token_ids == ids and texts[0].text == tok.decode(ids)
    save_pretrained(model, tmp_path / "m", tokenizer=tok)
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "hello", "world",
                 "--num-beams", "3", "--length-penalty", "0.5", "--max-new-tokens", "6",
                 "--json", "--device", "cpu", "--precision", "fp32"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["hello", "world"]
    beams = generate_text(model, tok, ["hello"], 6, num_beams=3, length_penalty=0.5, precision="fp32")
    assert rows[0]["completion"] == beams[0].text


@pytest.mark.parametrize("style", STYLES)
def test_training_flops_equal_counted_matmul_flops(style):
    """The MFU that training logs counts an encoder-decoder's FLOPs per side (encoder weights on
    source tokens, decoder weights and the head on target tokens, attention over each side's
    context): equal to what torch's FLOP counter sees in forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from lmforge.objectives.seq2seq import Seq2SeqObjective
    from lmforge.runtime import batch_flops, flops_per_token

    model = tiny(style, vocab_size=300, n_layer=2, n_decoder_layer=3)
    B, S, T = 4, 24, 10
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, 300, (B, S), generator=gen),
             "attention_mask": torch.ones(B, S, dtype=torch.long),
             "decoder_input_ids": torch.randint(3, 300, (B, T), generator=gen),
             "labels": torch.randint(3, 300, (B, T), generator=gen)}
    with FlopCounterMode(display=False) as counter:
        # bf16 on CPU: attention as explicit batched matmuls, which the counter sees whole
        with torch.autocast("cpu", torch.bfloat16):
            loss = Seq2SeqObjective.__new__(Seq2SeqObjective).loss(model, batch)
        loss.backward()
    counted = counter.get_total_flops()
    estimate = batch_flops(model, batch, B * S, flops_per_token(model, S))
    assert estimate == pytest.approx(counted, rel=1e-6)
    # the decoder-only rule (6N on every source token) would be far off
    assert abs(B * S * flops_per_token(model, S) - counted) > 0.2 * counted

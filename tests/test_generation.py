"""Generation: the KV cache and left padding change nothing, sampling settings do what they say,
stopping is per sequence, and the `generate` command streams and refuses bad input clearly."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.cli.main import main
from lmforge.errors import LMForgeError
from lmforge.generation import (IncrementalDecoder, apply_repetition_penalty, generate,
                                generate_text, sample_next, top_k_filter, top_p_filter)
from lmforge.generation.text import held_back
from lmforge.models import GPT, preset, save_pretrained

from _util import assert_one_line_error, run_cli

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?\n"
EOS = "<|endoftext|>"
# Small, with larger init weights so logits are peaked and greedy choices are not near-ties.
SMALL = dict(n_layer=2, context_length=64, init_std=0.2)
GPT2_STYLE = dict(n_head=4, n_embd=32, **SMALL)
LLAMA_STYLE = dict(n_head=4, n_kv_head=2, n_embd=32, intermediate_size=64, **SMALL)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a busy 2-core machine: thread hand-offs would cost more than the math.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def char_tokenizer() -> Tokenizer:
    """One token per character of CHARS, plus an end-of-text token."""
    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS])
    return tok


def byte_level_bpe() -> Tokenizer:
    """A byte-level BPE trained on ASCII text only, so accented letters and emoji encode as
    several byte tokens each."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox"] * 20, trainer)
    return tok


def tiny_model(style: dict, vocab_size: int = len(CHARS) + 1, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    base = "llama-mini" if "n_kv_head" in style else "baby"
    return GPT(preset(base, vocab_size=vocab_size, **style)).eval()


def greedy(model, prompts, n=20, **kw):
    return [c.tokens for c in generate(model, prompts, n, greedy=True, precision="fp32", **kw)]


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [12, 2, 30]]


# --- decoding paths -------------------------------------------------------------------------


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
def test_kv_cache_matches_full_recompute(style):
    model = tiny_model(style)
    assert greedy(model, PROMPTS, use_cache=True) == greedy(model, PROMPTS, use_cache=False)


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
def test_left_padded_batch_matches_each_prompt_alone(style):
    model = tiny_model(style)
    batched = greedy(model, PROMPTS)
    assert batched == [greedy(model, [p])[0] for p in PROMPTS]
    assert len({tuple(t) for t in batched}) > 1  # the prompts lead to different continuations


@pytest.mark.slow  # ~40 s of torch.compile on 2 cores; `make test-all` runs it
def test_compiled_decoding_matches_eager():
    """``compile=True`` (torch.compile of the one-token steps, dynamic shapes, frozen weights)
    gives the tokens and logits of eager decoding, for a padded batch and then a single prompt
    of another length through the same compiled decoder (no recompilation per length)."""
    from lmforge.generation.sampling import compiled_decoder
    model = tiny_model(LLAMA_STYLE)
    assert greedy(model, PROMPTS, compile=True) == greedy(model, PROMPTS)
    assert greedy(model, [PROMPTS[0][:5]], n=30, compile=True) == greedy(model, [PROMPTS[0][:5]], n=30)
    assert compiled_decoder(model) is compiled_decoder(model)  # built once per model
    seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool)
    with torch.inference_mode():
        a, b = model.new_cache(1, 16), model.new_cache(1, 16)
        model(torch.tensor([[4, 5, 6]]), cache=a), model(torch.tensor([[4, 5, 6]]), cache=b)
        step = torch.tensor([[7]])
        eager = model(step, cache=a, last_only=True)
        compiled = compiled_decoder(model)(step, cache=b, last_only=True)
    assert torch.allclose(eager, compiled, atol=1e-5) and a.length == b.length == 4
    assert sample_next(eager[:, -1], seen, greedy=True).item() == sample_next(compiled[:, -1], seen, greedy=True).item()
    decoder = compiled_decoder(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # weights changed (as by training): a fresh decoder
    assert compiled_decoder(model) is not decoder


def test_top_k_1_equals_greedy():
    model = tiny_model(GPT2_STYLE)
    sampled = generate(model, PROMPTS, 15, top_k=1, seed=3, precision="fp32")
    assert [c.tokens for c in sampled] == greedy(model, PROMPTS, 15)


def test_seeded_sampling_is_reproducible():
    model = tiny_model(GPT2_STYLE)
    run = lambda seed: [c.tokens for c in generate(model, PROMPTS, 20, temperature=1.5, top_p=0.95,
                                                   seed=seed, precision="fp32")]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_max_new_tokens_is_respected():
    model = tiny_model(GPT2_STYLE)
    assert [len(t) for t in greedy(model, PROMPTS, 9)] == [9, 9, 9]
    assert greedy(model, PROMPTS, 0) == [[], [], []]


def test_stop_token_ends_one_sequence_while_others_continue():
    model = tiny_model(GPT2_STYLE)
    free = greedy(model, PROMPTS)
    stop = next(t for t in free[0][1:] if t not in free[1] + free[2])
    out = generate(model, PROMPTS, 20, greedy=True, stop_token_ids=[stop], precision="fp32")
    assert out[0].tokens == free[0][:free[0].index(stop)] and out[0].finish_reason == "stop"
    assert [c.tokens for c in out[1:]] == free[1:]
    assert [c.finish_reason for c in out[1:]] == ["length", "length"]


def test_stream_callback_sees_tokens_and_can_stop_a_row():
    model = tiny_model(GPT2_STYLE)
    seen: list[tuple[int, int]] = []

    def stream(row: int, token: int) -> bool:
        seen.append((row, token))
        return row == 1 and sum(r == 1 for r, _ in seen) == 3

    out = generate(model, PROMPTS, 10, greedy=True, stream=stream, precision="fp32")
    assert [t for r, t in seen if r == 0] == out[0].tokens
    assert len(out[1].tokens) == 3 and out[1].finish_reason == "stop"
    assert len(out[2].tokens) == 10


def test_context_overflow_crops_prompt_and_stops_at_context(caplog):
    model = tiny_model(GPT2_STYLE)  # context_length 64
    long_prompt = list(range(1, 31)) * 3  # 90 tokens
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        out = generate(model, [long_prompt], 10, greedy=True, precision="fp32")
    assert len(out[0].tokens) == 1 and out[0].finish_reason == "context"
    assert "cropped" in caplog.text and "context_length=64" in caplog.text
    assert out[0].tokens == greedy(model, [long_prompt[-63:]], 1)[0]


def test_bad_input_is_refused():
    model = tiny_model(GPT2_STYLE)
    with pytest.raises(LMForgeError, match="empty prompt"):
        generate(model, [[1, 2], []], 5)
    with pytest.raises(LMForgeError, match="outside the model's vocabulary"):
        generate(model, [[1, 999]], 5)
    with pytest.raises(LMForgeError, match="top_p"):
        generate(model, [[1]], 5, top_p=0.0)


# --- precision: weights cast once, never autocast per step ----------------------------------


def lstm_model(seed: int = 0):
    from lmforge.models import build_model
    torch.manual_seed(seed)
    return build_model(preset("lstm-small", vocab_size=len(CHARS) + 1, n_embd=32, dropout=0.0)).eval()


def seq2seq_model(seed: int = 0):
    from lmforge.models import build_model
    torch.manual_seed(seed)
    return build_model(preset("t5-tiny", vocab_size=len(CHARS) + 1, decoder_start_token_id=0,
                              n_layer=2, n_embd=32, n_head=4, intermediate_size=64)).eval()


@pytest.fixture
def linear_calls(monkeypatch):
    """(weight dtype, autocast on?) of every F.linear call; torch.autocast may not be entered."""
    calls = []
    linear = torch.nn.functional.linear

    def recording_linear(x, weight, bias=None):
        calls.append((weight.dtype, torch.is_autocast_enabled("cpu")))
        return linear(x, weight, bias)

    def no_autocast(*args, **kwargs):
        raise AssertionError("generation entered autocast")

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    monkeypatch.setattr(torch, "autocast", no_autocast)
    monkeypatch.setattr(torch.amp, "autocast", no_autocast)
    return calls


@pytest.mark.parametrize("kind,num_beams", [("decoder", 1), ("decoder", 2), ("lstm", 1),
                                            ("encoder-decoder", 1), ("encoder-decoder", 2)])
def test_bf16_generation_runs_on_weights_cast_once_without_autocast(kind, num_beams, linear_calls):
    from lmforge.generation import generate_tokens
    from lmforge.generation.precision import cast_copy, model_dtype
    model = {"decoder": lambda: tiny_model(LLAMA_STYLE), "lstm": lstm_model,
             "encoder-decoder": seq2seq_model}[kind]()
    twin = cast_copy(model, torch.bfloat16)
    model.register_forward_pre_hook(lambda *_: pytest.fail("the fp32 model ran"))
    out = generate_tokens(model, PROMPTS, 6, num_beams=num_beams, greedy=True, precision="bf16")
    assert len(out) == len(PROMPTS) and all(c.tokens or c.finish_reason == "stop" for c in out)
    assert linear_calls and all(dtype == torch.bfloat16 and not autocast
                                for dtype, autocast in linear_calls)
    assert all(p.dtype == torch.bfloat16 for p in twin.parameters())
    assert cast_copy(model, torch.bfloat16) is twin  # cast once: the same copy every call
    assert model_dtype(model) == torch.float32  # the model itself is left as it was


def test_lstm_generation_carries_the_state_like_its_own_generate():
    model = lstm_model()
    prompt = [5, 6, 7, 8, 9]
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=30, temperature=0)[0, 5:]
    assert greedy(model, [prompt], n=30) == [expected.tolist()]  # no context limit either
    assert greedy(model, PROMPTS) == [greedy(model, [p])[0] for p in PROMPTS]


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_generates_as_the_dtype_it_measured_faster(faster, monkeypatch):
    from lmforge.generation import precision
    timed = []

    def fake_seconds(models, batch_size):
        timed.append(batch_size)
        return [1.0 if precision.model_dtype(m) == precision.DTYPES[faster] else 2.0 for m in models]

    monkeypatch.setattr(precision, "AUTO_MIN_PARAMETERS", 0)  # time even a tiny model
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(precision, "decode_seconds", fake_seconds)
    monkeypatch.setattr(precision, "_CHOICES", {})
    model = tiny_model(LLAMA_STYLE)
    assert precision.inference_dtype(model, "auto", len(PROMPTS)) == precision.DTYPES[faster]
    auto = generate(model, PROMPTS, 12, greedy=True)  # the default precision is "auto"
    assert auto == generate(model, PROMPTS, 12, greedy=True, precision=faster)
    assert timed == [4]  # timed on the first call only, at the batch rounded up to a power of 2
    generate(model, PROMPTS[:2], 3)
    generate_text(model, char_tokenizer(), ["ab", "cd", "ef", "gh"], 3)
    assert timed == [4, 2]  # batch 2 timed once more; batch 4 remembered


def test_auto_keeps_fp32_when_bf16_is_barely_faster(monkeypatch):
    from lmforge.generation import precision
    monkeypatch.setattr(precision, "AUTO_MIN_PARAMETERS", 0)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(precision, "_CHOICES", {})
    monkeypatch.setattr(precision, "decode_seconds", lambda models, batch: [1.0, 0.99])
    assert precision.inference_dtype(tiny_model(LLAMA_STYLE), "auto") == torch.float32


def test_auto_measures_real_decoding_steps_once(monkeypatch):
    from lmforge.generation import precision
    monkeypatch.setattr(precision, "AUTO_MIN_PARAMETERS", 0)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(precision, "_CHOICES", {})
    for model in (tiny_model(LLAMA_STYLE), lstm_model(), seq2seq_model()):
        chosen = precision.inference_dtype(model, "auto", 2)
        assert chosen in (torch.float32, torch.bfloat16) and len(precision._CHOICES) >= 1
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[chosen]
        from lmforge.generation import generate_tokens
        assert ([c.tokens for c in generate_tokens(model, PROMPTS[:2], 5, greedy=True)]
                == [c.tokens for c in generate_tokens(model, PROMPTS[:2], 5, greedy=True, precision=name)])
    assert len(precision._CHOICES) == 3


def test_auto_keeps_small_models_and_plain_cpus_in_fp32_without_timing(monkeypatch):
    from lmforge.generation import precision
    monkeypatch.setattr(precision, "decode_seconds", lambda *a: pytest.fail("timed"))
    model = tiny_model(GPT2_STYLE)
    assert precision.inference_dtype(model, "auto", 8) == torch.float32  # under the size bar
    monkeypatch.setattr(precision, "AUTO_MIN_PARAMETERS", 0)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.inference_dtype(model, "auto", 8) == torch.float32  # no native bf16
    bf16 = precision.cast_copy(model, torch.bfloat16)
    assert precision.inference_dtype(bf16, "auto") == precision.inference_dtype(bf16, "fp32") == torch.bfloat16
    assert [precision.measured_batch(b) for b in (1, 2, 3, 8, 9, 500)] == [1, 2, 4, 8, 16, 64]


def test_cast_copy_is_rebuilt_after_the_weights_change():
    from lmforge.generation.precision import cast_copy
    model = tiny_model(LLAMA_STYLE)
    twin = cast_copy(model, torch.bfloat16)
    before = [c.tokens for c in generate(model, PROMPTS, 10, greedy=True, precision="bf16")]
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # changed in place, as an optimizer step does
    rebuilt = cast_copy(model, torch.bfloat16)
    assert rebuilt is not twin
    assert torch.equal(rebuilt.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))
    after = [c.tokens for c in generate(model, PROMPTS, 10, greedy=True, precision="bf16")]
    assert after != before
    model.load_state_dict(tiny_model(LLAMA_STYLE, seed=1).state_dict())  # loaded weights too
    assert cast_copy(model, torch.bfloat16) is not rebuilt
    assert cast_copy(model, torch.bfloat16) is cast_copy(model, torch.bfloat16)


def test_bad_precision_is_refused():
    model = tiny_model(GPT2_STYLE)
    with pytest.raises(LMForgeError, match="precision must be one of auto, fp32, bf16, fp16"):
        generate(model, PROMPTS, 2, precision="int8")
    with pytest.raises(LMForgeError, match="fp16 needs a CUDA device"):
        generate(model, PROMPTS, 2, precision="fp16")


# --- logits processors on hand-made logits --------------------------------------------------

NEG = float("-inf")


def test_top_k_filter():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert top_k_filter(logits, 2).tolist() == [[NEG, 3.0, 2.0, NEG]]
    assert top_k_filter(logits, 10).tolist() == logits.tolist()


def test_top_p_filter_keeps_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()
    assert kept(0.7) == [True, True, False, False]  # 0.5 + 0.3 >= 0.7
    assert kept(0.9) == [True, True, True, False]
    assert kept(0.2) == [True, False, False, False]  # always at least the top token
    assert kept(1.0) == [True] * 4


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_greedy_and_temperature_zero_take_argmax_after_penalty():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    seen = torch.tensor([[True, False, False]])
    assert sample_next(logits, seen, greedy=True).item() == 0
    assert sample_next(logits, seen, temperature=0.0, repetition_penalty=1.5).item() == 1


def test_processors_match_hugging_face():
    lp = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    history = torch.randint(0, 50, (4, 12))
    seen = torch.zeros(4, 50, dtype=torch.bool).scatter_(1, history, True)
    for p in (0.3, 0.75, 0.95):
        assert torch.equal(top_p_filter(logits, p), lp.TopPLogitsWarper(p)(history, logits))
    assert torch.equal(top_k_filter(logits, 7), lp.TopKLogitsWarper(7)(history, logits))
    hf = lp.RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), hf)


# --- text level -----------------------------------------------------------------------------


def test_incremental_decoder_never_splits_a_character():
    tok = byte_level_bpe()
    text = "héllo wörld 😀 the fox"
    ids = tok.encode(text).ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some characters span tokens
    decoder = IncrementalDecoder(tok, [])
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_held_back_is_the_possible_start_of_a_stop_string():
    assert held_back("abc\n", ["\n\n"]) == 1
    assert held_back("abc", ["\n\n"]) == 0
    assert held_back("xEN", ["END", "N!"]) == 2
    assert held_back("abc", []) == 0


def test_stop_strings_cut_the_output_and_streaming_matches():
    model, tok = tiny_model(GPT2_STYLE), char_tokenizer()
    free = generate_text(model, tok, ["hello"], 30, greedy=True, precision="fp32")[0]
    stop = free.text[6:8]
    stream = io.StringIO()
    cut = generate_text(model, tok, ["hello"], 30, greedy=True, stop_strings=[stop],
                        stream_to=stream, precision="fp32")[0]
    assert cut.text == free.text[:free.text.index(stop)]
    assert cut.finish_reason == "stop" and len(cut.token_ids) < 30
    assert stream.getvalue() == cut.text
    unstopped = io.StringIO()
    generate_text(model, tok, ["hello"], 30, greedy=True, stream_to=unstopped, precision="fp32")
    assert unstopped.getvalue() == free.text and free.finish_reason == "length"


def test_end_of_text_token_stops_generate_text():
    model, tok = tiny_model(GPT2_STYLE), char_tokenizer()
    with torch.no_grad():  # all logits equal: greedy takes the first id, end-of-text (0)
        model.lm_head.weight.zero_()
    done = generate_text(model, tok, ["hello", "a"], 10, greedy=True, precision="fp32")
    assert [(c.text, c.finish_reason) for c in done] == [("", "stop"), ("", "stop")]


# --- the `generate` command -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_pretrained(tiny_model(GPT2_STYLE), tmp_path_factory.mktemp("m") / "model",
                           char_tokenizer())


def test_cli_streams_the_greedy_completion(model_dir):
    proc = run_cli("generate", "--model", model_dir, "--prompt", "hello", "--max-new-tokens", "12",
                   "--greedy", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    expected = generate_text(tiny_model(GPT2_STYLE), char_tokenizer(), ["hello"], 12, greedy=True,
                             precision="fp32")[0].text
    assert proc.stdout == "hello" + expected + "\n"


def test_cli_empty_prompt_is_a_one_line_error(model_dir):
    proc = run_cli("generate", "--model", model_dir, "--prompt", "")
    assert_one_line_error(proc, "empty prompt")


def test_cli_jsonl_batch_and_stdin(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    code = main(["generate", "--model", str(model_dir), "--prompt", "abc", "-", "--num-samples",
                 "2", "--max-new-tokens", "5", "--seed", "1", "--json", "--precision", "fp32"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in rows] == [("abc", 0), ("abc", 1),
                                                          ("from stdin", 0), ("from stdin", 1)]
    assert all(r["new_tokens"] <= 5 and r["finish_reason"] in ("stop", "length") for r in rows)


def test_cli_missing_model_or_tokenizer(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "a"]) == 2
    assert "model not found" in capsys.readouterr().err
    bare = save_pretrained(tiny_model(GPT2_STYLE), tmp_path / "bare")
    assert main(["generate", "--model", str(bare), "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer" in err and "--tokenizer" in err and len(err.splitlines()) == 1

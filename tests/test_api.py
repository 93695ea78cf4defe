"""The Python API: `lmforge.finetune / predict / evaluate / embed / convert / plan` give what the
commands of the same name give on the same tiny models; `lmforge.pipeline` answers in
transformers' shapes for every task and refuses a task the model cannot do in one line;
`generate_text` takes one prompt as a str; `load_tokenizer` reads a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmforge
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.generation import TextCompletion, generate_text
from lmforge.models import build_model, preset
from lmforge.tokenization import load_tokenizer, tokenizer_sha256

from _util import FT, SMALL, run_cli



@pytest.fixture(scope="module")
def work(tiny_models) -> Path:
    return tiny_models


@pytest.fixture(scope="module")
def runs(tiny_runs) -> dict[str, Path]:
    return tiny_runs


def flags(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]


# ---- the functions equal the commands --------------------------------------------------------
def test_finetune_equals_the_command(work, runs):
    proc = run_cli("finetune", "--model", work / "bert", "--data", work / "cls.tsv", "--val_data",
                   work / "cls.tsv", "--out_dir", work / "cli-cls", *flags(FT))
    assert proc.returncode == 0, proc.stderr
    api = json.loads((runs["classification"] / "eval.json").read_text())
    cli = json.loads((work / "cli-cls" / "eval.json").read_text())
    assert api["val_accuracy"] == cli["val_accuracy"] and api["val_loss"] == pytest.approx(cli["val_loss"], rel=1e-6)
    assert api["val_accuracy"] >= 0.9  # "good" / "bad" decide the label


def test_predict_and_evaluate_equal_the_commands(work, runs):
    run = runs["classification"]
    # The commands' default precision becomes fp32 with the flag unification (issue 14); named here.
    proc = run_cli("predict", "--model", run, "--data", work / "cls.tsv", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    cli = [json.loads(line) for line in proc.stdout.splitlines()]
    api = lmforge.predict(run, work / "cls.tsv")
    assert api == cli and len(api) == 80 and set(api[0]) == {"text", "label", "probabilities"}
    # Python lists of texts give the same predictions as the file.
    texts = [r["text"] for r in api]
    assert lmforge.predict(str(run), texts) == api

    proc = run_cli("evaluate", "--model", run, "--data", work / "cls.tsv", "--precision", "fp32",
                   "--output", work / "eval-cli.json")
    assert proc.returncode == 0, proc.stderr
    report = lmforge.evaluate(run, work / "cls.tsv")
    assert report == json.loads((work / "eval-cli.json").read_text())
    assert report["examples"] == 80 and report["accuracy"] == pytest.approx(
        np.mean([p["label"] == r.split("\t")[1] for p, r in
                 zip(api, (work / "cls.tsv").read_text().splitlines()[1:])]))


def test_predict_takes_a_loaded_model_and_names_a_missing_tokenizer(work, runs):
    model = lmforge.from_pretrained(runs["qa"])
    tok = load_tokenizer(runs["qa"])
    q = {"question": "where does ada live ?", "context": "ada lives in oslo ."}
    assert lmforge.predict(model, [q], tokenizer=tok) == lmforge.predict(runs["qa"], [q])
    with pytest.raises(ConfigError, match="tokenizer="):
        lmforge.predict(model, [q])
    with pytest.raises(CheckpointError, match="model not found"):
        lmforge.predict(work / "missing", ["x"])
    # A preset name is an architecture with random weights, as on the command line: it needs
    # a tokenizer, and then runs.
    with pytest.raises(ConfigError, match="no tokenizer with the model in bert-mini"):
        lmforge.pipeline("fill-mask", model="bert-mini")
    random_init = lmforge.embed("gpt-mini", ["x y"], tokenizer=tok)  # a list: (1, d)
    assert random_init.shape == (1, lmforge.models.preset("gpt-mini").n_embd)


def test_embed_equals_the_command(work):
    sentences = ["To be, or not to be", "good play", "ada went to rome"]
    (work / "sentences.txt").write_text("\n".join(sentences) + "\n")
    proc = run_cli("embed", "--model", work / "bert", "--input", work / "sentences.txt",
                   "--output", work / "emb.npy", "--normalize")
    assert proc.returncode == 0, proc.stderr
    vectors = lmforge.embed(work / "bert", sentences, normalize=True)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.array_equal(vectors, np.load(work / "emb.npy"))
    assert np.array_equal(lmforge.embed(work / "bert", sentences[1], normalize=True), vectors[1])


def test_convert_equals_the_command(work):
    for name in ("hf", "model.gguf"):  # same names in both folders: a GGUF records its name
        (work / "cli").mkdir(exist_ok=True)
        proc = run_cli("convert", work / "gpt", work / "cli" / name)
        assert proc.returncode == 0, proc.stderr
        assert lmforge.convert(work / "gpt", work / "api" / name) == work / "api" / name
        files = [p.relative_to(work / "cli") for p in (work / "cli" / name).rglob("*")] or [Path(name)]
        assert (work / "api" / "hf" / "config.json").is_file()
        for rel in files:
            assert (work / "api" / rel).read_bytes() == (work / "cli" / rel).read_bytes(), rel
    with pytest.raises(ConfigError, match="exists"):
        lmforge.convert(work / "gpt", work / "api" / "hf")


def test_plan_equals_the_command():
    proc = run_cli("plan", "--model", "gpt-mini", "--gpus", "2", "--n_layer", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert lmforge.plan("gpt-mini", gpus=2, model_args={"n_layer": 4}) == json.loads(proc.stdout)
    with pytest.raises(ConfigError, match="gpus"):
        lmforge.plan("gpt-mini", gpus=0)


# ---- pipeline() ---------------------------------------------------------------------------------
def test_text_classification_pipeline(runs):
    predictions = lmforge.predict(runs["classification"], ["a good day", "a bad film"])
    clf = lmforge.pipeline("sentiment-analysis", model=runs["classification"])
    one = clf("a good day")
    assert isinstance(one, list) and set(one[0]) == {"label", "score"}
    assert one[0]["label"] == predictions[0]["label"] == "pos"
    assert one[0]["score"] == max(predictions[0]["probabilities"].values())
    both = clf(["a good day", "a bad film"])
    assert [r["label"] for r in both] == ["pos", "neg"]
    every = lmforge.pipeline("text-classification", model=runs["classification"])("a bad film", top_k=None)
    assert [r["label"] for r in every] == ["neg", "pos"] and sum(r["score"] for r in every) == pytest.approx(1, abs=1e-5)


def test_token_classification_pipeline(runs):
    ner = lmforge.pipeline("ner", model=runs["token-classification"])
    text = "today grace went to lima"
    entities = ner(text)
    assert entities and all(set(e) == {"entity_group", "score", "word", "start", "end"} for e in entities)
    assert all(text[e["start"]:e["end"]] == e["word"] and 0 < e["score"] <= 1 for e in entities)
    assert [(e["entity_group"], e["word"]) for e in entities] == [("PER", "grace"), ("LOC", "lima")]
    assert ner([text, text]) == [entities, entities]


def test_question_answering_pipeline(runs):
    qa = lmforge.pipeline("question-answering", model=runs["qa"])
    context = "barbara lives in cairo ."
    answer = qa(question="where does barbara live ?", context=context)
    assert set(answer) == {"answer", "score", "start", "end"}
    assert context[answer["start"]:answer["end"]] == answer["answer"]
    many = qa(question=["where does barbara live ?"] * 2, context=[context, "alan lives in oslo ."])
    assert many[0] == answer and len(many) == 2
    with pytest.raises(DataError, match="context"):
        qa(question="where ?")


def test_fill_mask_pipeline(work):
    from lmforge.evaluation import fill_mask
    model, tok = lmforge.from_pretrained(work / "bert"), load_tokenizer(work / "bert")
    fill = lmforge.pipeline("fill-mask", model=work / "bert", top_k=3)
    out = fill("to be or not to [MASK]")
    expected = fill_mask(model, tok, "to be or not to [MASK]", top_k=3)[0]
    assert [r["token"] for r in out] == [p.token_id for p in expected]
    assert all(set(r) == {"score", "token", "token_str", "sequence"} for r in out)
    assert out[0]["sequence"].startswith("to be or not to") and out[0]["token_str"].removeprefix("##") in out[0]["sequence"]
    assert len(fill("[MASK] be or not to [MASK]")) == 2  # one list per mask


def test_generation_pipelines(work):
    model, tok = lmforge.from_pretrained(work / "gpt"), load_tokenizer(work / "gpt")
    gen = lmforge.pipeline("text-generation", model=work / "gpt")
    out = gen("ROMEO:", max_new_tokens=6, do_sample=False)
    greedy = generate_text(model, tok, "ROMEO:", max_new_tokens=6, greedy=True)
    assert out == [{"generated_text": "ROMEO:" + greedy.text}]
    assert gen(["ROMEO:", "JULIET:"], max_new_tokens=6, do_sample=False, return_full_text=False)[0] == [
        {"generated_text": greedy.text}]
    sampled = gen("ROMEO:", max_new_tokens=6, seed=1, num_return_sequences=2)
    assert len(sampled) == 2 and all(r["generated_text"].startswith("ROMEO:") for r in sampled)

    t5 = build_model(preset("t5-tiny", vocab_size=tok.get_vocab_size(), decoder_start_token_id=0, **SMALL)).eval()
    summarize = lmforge.pipeline("summarization", model=t5, tokenizer=tok)
    summary = summarize("to be or not to be", max_new_tokens=5)
    assert summary == [{"summary_text": generate_text(t5, tok, "to be or not to be", 5, greedy=True).text}]
    assert set(lmforge.pipeline("translation", model=t5, tokenizer=tok)("hi", max_new_tokens=3)[0]) == {"translation_text"}


def test_feature_extraction_pipeline(work, runs):
    features = lmforge.pipeline("feature-extraction", model=work / "bert")
    out = features("good play")
    tokens = len(load_tokenizer(work / "bert").encode("good play").ids)
    assert len(out) == 1 and len(out[0]) == tokens and len(out[0][0]) == 32
    mean = torch.tensor(out[0]).mean(0).numpy()
    assert np.allclose(mean, lmforge.embed(work / "bert", "good play"), atol=1e-6)
    # A fine-tuned model gives its backbone's states.
    assert len(lmforge.pipeline("feature-extraction", model=runs["qa"])(["a", "b c"])) == 2


@pytest.mark.parametrize("task,model,needs", [
    ("fill-mask", "run-classification", "masked-LM head.*classification model"),
    ("text-classification", "bert", "fine-tuned classifier.*encoder with a masked-LM head"),
    ("text-generation", "run-qa", "decoder.*qa model"),
    ("question-answering", "gpt", "QA model.*decoder language model"),
    ("text2text-generation", "gpt", "encoder-decoder"),
    ("token-classification", "run-classification", "token classifier"),
])
def test_wrong_task_for_the_model_is_one_config_error(work, runs, task, model, needs):
    with pytest.raises(ConfigError, match=needs) as info:
        lmforge.pipeline(task, model=work / model)
    assert "\n" not in str(info.value)


def test_unknown_pipeline_task_lists_the_tasks(work):
    with pytest.raises(ConfigError, match="sentiment-analysis.*text-generation"):
        lmforge.pipeline("summarise", model=work / "gpt")


# ---- generate_text, load_tokenizer ---------------------------------------------------------------
def test_generate_text_takes_one_prompt_as_a_str(work):
    model, tok = lmforge.from_pretrained(work / "gpt"), load_tokenizer(work / "gpt")
    one = generate_text(model, tok, "Once", max_new_tokens=5, greedy=True)
    assert isinstance(one, TextCompletion) and str(one) == one.text and one.token_ids
    assert generate_text(model, tok, ["Once"], max_new_tokens=5, greedy=True) == [one]
    assert f"{one}" == one.text and "token_ids" in repr(one)


def test_load_tokenizer_reads_a_run_folder(work, runs):
    expected = tokenizer_sha256(load_tokenizer(work / "bert"))
    assert tokenizer_sha256(load_tokenizer(runs["classification"])) == expected
    assert tokenizer_sha256(load_tokenizer(runs["classification"] / "model")) == expected
    with pytest.raises(DataError, match="no tokenizer in"):
        load_tokenizer(work)


def test_finetune_resume_continues_the_recorded_run(work, runs):
    import shutil
    run = work / "resumed"
    shutil.copytree(runs["classification"], run)
    first = json.loads((run / "eval.json").read_text())
    result = lmforge.finetune(None, None, out_dir=run, resume=True, epochs=10)
    assert result["step"] == 50 > first["step"] and result["out_dir"] == str(run)

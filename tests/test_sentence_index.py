"""prepare --split-sentences: the sentence index beside each shard, and reading documents and
sentences back through TokenShards (what NSP, SOP and sentence permutation build on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import prepare as prepare_module
from lmforge.data import prepare_corpus
from lmforge.data.dataset import TokenShards
from lmforge.data.sentences import sentence_spans
from lmforge.errors import DataError
from lmforge.tokenization import decode, encode, eos_token_id, train_tokenizer

DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Mr. Smith went to Washington. He arrived at 5 p.m. on Jan. 3!  Was it late?\n\nNo. It was 3.5 hours early...",
    "One sentence without an ending",
    '  Leading spaces. "Quoted." (Aside.) Trailing spaces.   ',
    "All:\nSpeak, speak.\n\n\nThe end.",
]


def prepare(inputs, tok, out, **options):
    """prepare_corpus with test defaults: sentence index on, no worker processes, no val split."""
    options.setdefault("workers", 1)
    options.setdefault("val_fraction", 0.0)
    options.setdefault("split_sentences", True)
    return prepare_corpus([str(p) for p in inputs], tok, out, **options)


def write_jsonl(path: Path, docs) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def sentence_pieces(doc: str) -> list[str]:
    """What each indexed sentence decodes to: its text with the whitespace before it."""
    ends = [end for _, end in sentence_spans(doc)]
    return [doc[a:b] for a, b in zip([0, *ends[:-1]], [*ends[:-1], len(doc)])]


def read_split(out: Path, split: str = "train") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per shard: the tokens and the raw sentence index, read as a consumer of the format would."""
    meta = json.loads((out / "meta.json").read_text())
    shards, indexes = [], []
    for name in meta["splits"][split]["shards"]:
        shards.append(np.fromfile(out / name, dtype=np.dtype(meta["dtype"]).newbyteorder("<")))
        index = out / name.replace(".bin", ".sent.bin")
        if index.exists():
            indexes.append(np.fromfile(index, dtype="<u8"))
    return shards, indexes


@pytest.fixture
def tok(small_bpe):
    return small_bpe


def test_offsets_point_at_each_sentence_and_ids_match_whole_documents(tok, tmp_path):
    meta = prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out")
    (tokens,), (index,) = read_split(tmp_path / "out")
    eos = eos_token_id(tok)
    # Byte-level BPE splits before whitespace anyway: the ids equal whole-document tokenization.
    assert tokens.tolist() == [i for doc in DOCS for i in (*encode(tok, doc), eos)]
    bounds = [*index.tolist(), len(tokens)]
    decoded = [decode(tok, tokens[a:b].tolist()).removesuffix("<|endoftext|>")
               for a, b in zip(bounds, bounds[1:])]
    assert decoded == [piece for doc in DOCS for piece in sentence_pieces(doc)]
    assert index.dtype == np.dtype("<u8") and np.all(np.diff(index.astype(np.int64)) > 0)
    assert meta["sentence_index"] is True
    assert meta["splits"]["train"]["sentences"] == len(index) == sum(map(len, map(sentence_spans, DOCS)))
    assert meta["splits"]["train"]["shard_sentences"] == [len(index)]
    assert meta["options"]["split_sentences"] is True


def test_meta_counts_and_files_per_split(tok, tmp_path):
    docs = [f"Document {i}. It has {i % 3 + 1} parts! Really? Yes." for i in range(60)]
    meta = prepare([write_jsonl(tmp_path / "c.jsonl", docs)], tok, tmp_path / "out",
                   val_fraction=0.3, shard_tokens=200)
    for split in ("train", "val"):
        info = meta["splits"][split]
        shards, indexes = read_split(tmp_path / "out", split)
        assert info["docs"] > 5 and len(shards) > 1
        assert info["shard_sentences"] == [len(i) for i in indexes]
        assert info["sentences"] == sum(info["shard_sentences"]) == 4 * info["docs"]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    shard_names = meta["splits"]["train"]["shards"] + meta["splits"]["val"]["shards"]
    assert names == sorted(["meta.json", "tokenizer.json", *shard_names,
                            *(n.replace(".bin", ".sent.bin") for n in shard_names)])


def test_shards_hold_whole_documents_and_sentences(tok, tmp_path, shakespeare):
    meta = prepare([shakespeare], tok, tmp_path / "out", split_on_blank_lines=True,
                   shard_tokens=20_000)
    eos = eos_token_id(tok)
    info = meta["splits"]["train"]
    shards, indexes = read_split(tmp_path / "out")
    assert len(shards) > 5
    for tokens, index in zip(shards, indexes):
        assert tokens[-1] == eos and index[0] == 0
    # A shard stops at the first document end past shard_tokens.
    assert all(20_000 <= n < 20_000 + 2_000 for n in info["shard_tokens"][:-1])
    plain = prepare([shakespeare], tok, tmp_path / "plain", split_on_blank_lines=True,
                    split_sentences=False)
    (whole,), _ = read_split(tmp_path / "plain")
    assert np.array_equal(np.concatenate(shards), whole)


def test_output_is_identical_for_one_and_two_workers(tok, tmp_path, shakespeare, monkeypatch):
    monkeypatch.setattr(prepare_module, "CHUNK_DOCS", 300)  # many chunks, so ordering matters
    metas = [prepare([shakespeare], tok, tmp_path / f"w{w}", workers=w, split_on_blank_lines=True,
                     val_fraction=0.1, shard_tokens=50_000) for w in (1, 2)]
    assert metas[0] == metas[1]
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert "train-00001.sent.bin" in files and "val-00000.sent.bin" in files
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_plain_prepare_writes_no_index(tok, tmp_path):
    meta = prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out",
                   split_sentences=False)
    assert "sentence_index" not in meta and "sentences" not in meta["splits"]["train"]
    assert not list((tmp_path / "out").glob("*.sent.bin"))


# --------------------------------------------------------------------------- TokenShards

def test_documents_are_the_spans_between_eos(tok, tmp_path):
    prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out")
    data = TokenShards(tmp_path / "out")
    (tokens,), _ = read_split(tmp_path / "out")
    docs = data.documents(0)
    eos_positions = np.flatnonzero(tokens == eos_token_id(tok))
    assert docs.dtype == np.int64 and docs.shape == (len(DOCS), 2)
    assert docs[:, 1].tolist() == eos_positions.tolist()
    assert docs[:, 0].tolist() == [0, *(eos_positions[:-1] + 1).tolist()]
    assert [decode(tok, tokens[a:b].tolist()) for a, b in docs] == DOCS
    assert data.documents(0) is docs  # cached


def test_document_sentences_sample_and_iterate(tok, tmp_path):
    prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out", shard_tokens=40)
    data = TokenShards(tmp_path / "out")
    assert data.has_sentences and len(data.shards) > 1
    docs = list(data.iter_document_sentences())
    assert [[decode(tok, s.tolist()) for s in doc] for doc in docs] == \
        [sentence_pieces(doc) for doc in DOCS]
    assert all(s.dtype == np.int64 and s.size for doc in docs for s in doc)
    assert data.sentences(0).dtype == np.int64 and data.sentences(0)[0] == 0

    draws = [data.sample_document(np.random.default_rng(seed)) for seed in range(40)]
    again = [data.sample_document(np.random.default_rng(seed)) for seed in range(40)]
    as_text = lambda doc: "".join(decode(tok, s.tolist()) for s in doc)  # noqa: E731
    assert [as_text(d) for d in draws] == [as_text(d) for d in again]
    assert set(map(as_text, draws)) == set(DOCS)


def test_dataset_without_index_says_so_in_one_line(tok, tmp_path):
    prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out", split_sentences=False)
    data = TokenShards(tmp_path / "out")
    assert not data.has_sentences
    assert len(data.documents(0)) == len(DOCS)  # documents need no index
    for call in (lambda: data.sentences(0), lambda: data.sample_document(np.random.default_rng(0)),
                 lambda: next(data.iter_document_sentences())):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert "prepared without --split-sentences; NSP/SOP need sentence boundaries" in message


def test_empty_val_split_and_damaged_index(tok, tmp_path):
    meta = prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out")
    assert meta["splits"]["val"] == {"shards": [], "shard_tokens": [], "tokens": 0, "docs": 0,
                                     "sentences": 0, "shard_sentences": []}
    with pytest.raises(DataError, match="has no 'val' tokens"):
        TokenShards(tmp_path / "out", "val")
    index = tmp_path / "out" / "train-00000.sent.bin"
    index.write_bytes(index.read_bytes()[:-8])
    with pytest.raises(DataError, match="sentence index .* meta.json says"):
        TokenShards(tmp_path / "out")
    index.unlink()
    with pytest.raises(DataError, match="sentence index missing"):
        TokenShards(tmp_path / "out")


def test_wordpiece_sentence_ids_match_whole_documents(tmp_path, shakespeare):
    source = tmp_path / "train.txt"
    source.write_text(shakespeare.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    bert = train_tokenizer([source], kind="wordpiece", vocab_size=600)
    prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], bert, tmp_path / "out")
    (tokens,), _ = read_split(tmp_path / "out")
    eos = eos_token_id(bert)
    assert tokens.tolist() == [i for doc in DOCS for i in (*encode(bert, doc), eos)]


def test_cli_flag(tok, tmp_path, run_lmforge):
    tok.save(str(tmp_path / "tok.json"))
    result = run_lmforge("prepare", write_jsonl(tmp_path / "c.jsonl", DOCS), "-t", tmp_path / "tok.json",
                         "--out", tmp_path / "out", "--val-fraction", "0", "--workers", "1",
                         "--split-sentences")
    assert result.returncode == 0, result.stderr
    assert "sentences" in result.stdout
    assert (tmp_path / "out" / "train-00000.sent.bin").is_file()
    assert TokenShards(tmp_path / "out").has_sentences

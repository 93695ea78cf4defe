"""prepare: every input format, every cleaning filter, exact shard contents, safe output handling."""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lmforge.data import prepare as prepare_module
from lmforge.data import prepare_corpus
from lmforge.errors import ConfigError, DataError
from lmforge.tokenization import encode, eos_token_id, load_tokenizer, tokenizer_sha256

DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "All:\nSpeak, speak.",
    "First Citizen:\nYou are all resolved rather to die than to famish?",
    "All:\nResolved. resolved.",
]


def prepare(inputs, tok, out, **options):
    """prepare_corpus with test defaults: no worker processes, no val split."""
    options.setdefault("workers", 1)
    options.setdefault("val_fraction", 0.0)
    return prepare_corpus([str(p) for p in inputs], tok, out, **options)


def read_tokens(out: Path, split: str = "train") -> np.ndarray:
    """A split read back exactly as the training data loader does: memmaps of the shards."""
    meta = json.loads((out / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    shards = [np.memmap(out / name, dtype=dtype, mode="r") for name in meta["splits"][split]["shards"]]
    return np.concatenate(shards) if shards else np.zeros(0, dtype)


def expected(tok, docs) -> list[int]:
    eos = eos_token_id(tok)
    return [i for doc in docs for i in (*encode(tok, doc), eos)]


def write_jsonl(path: Path, docs, field="text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def one_line_error(result) -> str:
    """The CLI must fail with exactly one stderr line saying 'error', never a traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0] and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def tok(small_bpe):
    return small_bpe


# --------------------------------------------------------------------------- formats

def test_txt_file_is_one_document_and_tokens_read_back_exactly(tok, tmp_path):
    paths = []
    for i, doc in enumerate(DOCS[:2]):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(doc + "\n", encoding="utf-8")
    meta = prepare(paths, tok, tmp_path / "out")
    assert meta["cleaning"]["docs_in"] == 2 and meta["splits"]["train"]["docs"] == 2
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS[:2])
    assert meta["splits"]["train"]["tokens"] == len(expected(tok, DOCS[:2]))
    assert meta["format"] == "lmforge-tokens/1" and meta["eos_id"] == eos_token_id(tok)
    assert meta["tokenizer_sha256"] == tokenizer_sha256(load_tokenizer(tmp_path / "out"))


def test_split_on_blank_lines(tok, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(DOCS) + "\n\n\n   \n")
    meta = prepare([path], tok, tmp_path / "out", split_on_blank_lines=True)
    assert meta["cleaning"]["docs_in"] == 4
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS)


def test_separator_lines(tok, tmp_path):
    path = tmp_path / "fortunes"
    path.write_text("\n%\n".join(DOCS) + "\n%\n")
    prepare([path], tok, tmp_path / "out", separator="%")
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS)


def test_split_on_lines(tok, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("one line\n\nanother line\n")
    prepare([path], tok, tmp_path / "out", split_on_lines=True)
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, ["one line", "another line"])


def test_jsonl_with_text_field(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS, field="body")
    prepare([path], tok, tmp_path / "out", text_field="body")
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS)
    with pytest.raises(DataError, match=r"c.jsonl:1: no field 'text'"):
        prepare([path], tok, tmp_path / "out2")


def test_tsv_and_csv_column_as_documents(tok, tmp_path, shared_data):
    """A labeled table's text column, labels dropped: GLUE TSVs (quotes kept as text) and CSV."""
    docs = ['a "quoted" line', "it's fine", "third"]
    (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + "".join(f"{d}\t1\n" for d in docs))
    prepare([tmp_path / "t.tsv"], tok, tmp_path / "out", text_field="sentence", dedup=False)
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, docs)
    (tmp_path / "t.csv").write_text('id,text\n1,"a, b"\n2,plain\n')
    prepare([tmp_path / "t.csv"], tok, tmp_path / "out-csv")
    assert read_tokens(tmp_path / "out-csv").tolist() == expected(tok, ["a, b", "plain"])
    with pytest.raises(DataError, match=r"no column 'text' \(columns: sentence, label"):
        prepare([tmp_path / "t.tsv"], tok, tmp_path / "out2")
    from lmforge.readers import iter_documents
    sst2 = list(iter_documents(shared_data / "tasks/glue/SST-2/train.tsv", text_field="sentence"))
    assert len(sst2) == 67_349 and not any("\t" in s for s in sst2)


def test_parquet_in_several_row_groups(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"{d} ({i})" for i in range(5) for d in DOCS]
    pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), tmp_path / "c.parquet",
                   row_group_size=3)
    assert pq.ParquetFile(tmp_path / "c.parquet").num_row_groups > 1
    prepare([tmp_path / "c.parquet"], tok, tmp_path / "out")
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, docs)


def test_gzip_text_and_jsonl(tok, tmp_path):
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(DOCS[:2]))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS[2:]))
    prepare([tmp_path / "a.txt.gz", tmp_path / "b.jsonl.gz"], tok, tmp_path / "out",
            split_on_blank_lines=True)
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS)


def test_folder_is_read_recursively_in_sorted_order(tok, tmp_path):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "b" / "2.txt").write_text(DOCS[1])
    (root / "a.txt").write_text(DOCS[0])
    write_jsonl(root / "c.jsonl", [DOCS[2]])
    (root / ".hidden" / "x.txt").write_text("never read")
    (root / "notes.csv").write_text("never read")
    meta = prepare([root], tok, tmp_path / "out")
    assert meta["cleaning"]["docs_in"] == 3
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS[:3])


def test_stdin_through_the_cli(tok, tmp_path, run_lmforge):
    tok.save(str(tmp_path / "tok.json"))
    result = run_lmforge("prepare", "-", "-t", tmp_path / "tok.json", "--out", tmp_path / "out",
                         "--separator", "%", "--val-fraction", "0", "--workers", "1",
                         input="\n%\n".join(DOCS))
    assert result.returncode == 0, result.stderr
    assert "documents out" in result.stdout and "MB/s" in result.stdout
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, DOCS)


def test_long_documents_encode_in_pieces_to_the_same_ids(tok, tmp_path, shakespeare, monkeypatch):
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 2_000)
    corpus = shakespeare
    prepare([corpus], tok, tmp_path / "out")  # the whole file is one document
    text = corpus.read_text(encoding="utf-8").rstrip("\n")
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, [text])


def test_latin1_input_needs_the_encoding_option(tok, tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me, \u00a1ol\u00e9!".encode("latin-1"))
    with pytest.raises(DataError, match="latin.txt: not valid utf-8.*--encoding"):
        prepare([path], tok, tmp_path / "out")
    prepare([path], tok, tmp_path / "out", encoding="latin-1")
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, ["Café crème, ¡olé!"])


# --------------------------------------------------------------------------- cleaning

CLEANING_DOCS = [
    "A perfectly ordinary document about the weather.",   # kept
    "",                                                   # empty
    "  \t \n ",                                           # empty (whitespace only)
    "tiny",                                               # too short (min_chars=10)
    "word " * 60,                                         # too long (max_chars=200)
    "1234 5678 90 !!! ??? ### 2024-01-01 12:00",          # junk (letters < 50%)
    "A perfectly ordinary document about the weather.",   # exact duplicate
    "Bell\x07 and\x00 nul, but keep\ttabs\nand newlines.", # 2 control chars removed
]


@pytest.mark.parametrize("disabled, changes", [
    ({}, {}),
    ({"min_chars": 0}, {"removed_too_short": 0, "docs_out": 3}),
    ({"max_chars": None}, {"removed_too_long": 0, "docs_out": 3}),
    ({"min_alpha_frac": 0.0}, {"removed_junk": 0, "docs_out": 3}),
    ({"dedup": False}, {"removed_duplicate": 0, "docs_out": 3}),
    ({"remove_control_chars": False}, {"control_chars_removed": 0}),
])
def test_each_cleaning_filter_is_counted_and_switchable(tok, tmp_path, disabled, changes):
    options = {"min_chars": 10, "max_chars": 200, "min_alpha_frac": 0.5, **disabled}
    meta = prepare([write_jsonl(tmp_path / "c.jsonl", CLEANING_DOCS)], tok, tmp_path / "out", **options)
    want = {"docs_in": 8, "removed_empty": 2, "removed_too_short": 1, "removed_too_long": 1,
            "removed_junk": 1, "removed_duplicate": 1, "removed_near_duplicate": 0,
            "control_chars_removed": 2, "docs_out": 2, **changes}
    assert {k: meta["cleaning"][k] for k in want} == want
    assert meta["splits"]["train"]["docs"] == want["docs_out"]


def test_control_chars_are_removed_from_the_tokens(tok, tmp_path):
    prepare([write_jsonl(tmp_path / "c.jsonl", [CLEANING_DOCS[-1]])], tok, tmp_path / "out")
    assert read_tokens(tmp_path / "out").tolist() == expected(
        tok, ["Bell and nul, but keep\ttabs\nand newlines."])


def test_unicode_normalization(tok, tmp_path):
    docs = ["cafe\u0301 ok", "\ufb01ne \uff21"]  # decomposed é; ligature fi and fullwidth A
    path = write_jsonl(tmp_path / "c.jsonl", docs)
    meta = prepare([path], tok, tmp_path / "nfc")
    assert meta["cleaning"]["normalized_docs"] == 1
    assert read_tokens(tmp_path / "nfc").tolist() == expected(tok, ["caf\u00e9 ok", "\ufb01ne \uff21"])
    meta = prepare([path], tok, tmp_path / "nfkc", normalize="nfkc")
    assert meta["cleaning"]["normalized_docs"] == 2
    assert read_tokens(tmp_path / "nfkc").tolist() == expected(tok, ["caf\u00e9 ok", "fine A"])
    meta = prepare([path], tok, tmp_path / "none", normalize="none")
    assert meta["cleaning"]["normalized_docs"] == 0
    assert read_tokens(tmp_path / "none").tolist() == expected(tok, docs)


def test_whitespace_collapse_keeps_newlines(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ["a   b\t\tc  \n  d", "already clean"])
    meta = prepare([path], tok, tmp_path / "out", collapse_whitespace=True)
    assert meta["cleaning"]["whitespace_collapsed_docs"] == 1
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, ["a b c\n d", "already clean"])


def test_exact_dedup_keeps_the_first_copy(tok, tmp_path):
    a, b, c = DOCS[:3]
    path = write_jsonl(tmp_path / "c.jsonl", [a, b, a, c, b, "  " + a])
    meta = prepare([path], tok, tmp_path / "out")
    assert meta["cleaning"]["removed_duplicate"] == 2
    assert read_tokens(tmp_path / "out").tolist() == expected(tok, [a, b, c, "  " + a])
    meta = prepare([path], tok, tmp_path / "kept", dedup=False)
    assert meta["cleaning"]["docs_out"] == 6


def test_near_dedup_removes_only_near_copies(tok, tmp_path):
    rng = random.Random(0)
    words = "the of and to in a is that for it as was with be by on not he this are".split()
    original = " ".join(rng.choice(words) + str(rng.randint(0, 99)) for _ in range(300))
    near_copy = original.replace(original.split()[150], "CHANGED", 1)
    unrelated = " ".join(rng.choice(words) + str(rng.randint(0, 99)) for _ in range(300))
    path = write_jsonl(tmp_path / "c.jsonl", [original, near_copy, unrelated])
    meta = prepare([path], tok, tmp_path / "out")
    assert meta["cleaning"]["docs_out"] == 3  # near dedup is off by default
    meta = prepare([path], tok, tmp_path / "near", near_dedup=True)
    assert meta["cleaning"]["removed_near_duplicate"] == 1
    assert read_tokens(tmp_path / "near").tolist() == expected(tok, [original, unrelated])


# --------------------------------------------------------------------------- output

def test_dtype_uint16_for_small_vocab_and_uint32_for_large(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ["w69999 w5 w70001", "w3"])
    meta = prepare([path], tok, tmp_path / "small")
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 512
    assert (tmp_path / "small" / "train-00000.bin").stat().st_size == 2 * meta["splits"]["train"]["tokens"]

    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    big = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    big.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big.add_special_tokens(["<|endoftext|>"])
    meta = prepare([path], big, tmp_path / "big")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_002
    assert read_tokens(tmp_path / "big").tolist() == [70_001, 7, 1, 0, 5, 0]
    assert (tmp_path / "big" / "train-00000.bin").stat().st_size == 4 * 6


def test_shards_split_at_shard_tokens(tok, tmp_path, shakespeare):
    corpus = shakespeare
    one = prepare([corpus], tok, tmp_path / "one", split_on_blank_lines=True)
    many = prepare([corpus], tok, tmp_path / "many", split_on_blank_lines=True, shard_tokens=100_000)
    sizes = many["splits"]["train"]["shard_tokens"]
    assert len(sizes) > 3 and all(s == 100_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 100_000
    assert many["splits"]["train"]["shards"][:2] == ["train-00000.bin", "train-00001.bin"]
    assert np.array_equal(read_tokens(tmp_path / "one"), read_tokens(tmp_path / "many"))
    assert sum(sizes) == one["splits"]["train"]["tokens"]


def test_output_is_identical_for_one_and_two_workers(tok, tmp_path, shakespeare, monkeypatch):
    monkeypatch.setattr(prepare_module, "CHUNK_DOCS", 300)  # many chunks, so ordering matters
    corpus = shakespeare
    metas = [prepare([corpus], tok, tmp_path / f"w{w}", workers=w, split_on_blank_lines=True,
                     val_fraction=0.1) for w in (1, 2)]
    assert metas[0] == metas[1]
    for name in ("train-00000.bin", "val-00000.bin", "meta.json", "tokenizer.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_val_split_is_deterministic_and_content_based(tok, tmp_path):
    docs = [f"document number {i}: {DOCS[i % 4]}" for i in range(400)]
    path = write_jsonl(tmp_path / "a.jsonl", docs)
    meta = prepare([path], tok, tmp_path / "a", val_fraction=0.2)
    val_docs = meta["splits"]["val"]["docs"]
    assert 40 < val_docs < 120 and meta["splits"]["train"]["docs"] + val_docs == 400
    again = prepare([path], tok, tmp_path / "again", val_fraction=0.2)
    assert np.array_equal(read_tokens(tmp_path / "a", "val"), read_tokens(tmp_path / "again", "val"))
    assert again["splits"] == meta["splits"]
    # A document's split depends on its content only, not on its position in the corpus.
    shuffled = write_jsonl(tmp_path / "b.jsonl", list(reversed(docs)))
    reordered = prepare([shuffled], tok, tmp_path / "b", val_fraction=0.2)
    assert reordered["splits"]["val"]["docs"] == val_docs
    assert sorted(read_tokens(tmp_path / "b", "val").tolist()) == \
        sorted(read_tokens(tmp_path / "a", "val").tolist())
    none = prepare([path], tok, tmp_path / "none", val_fraction=0.0)
    assert none["splits"]["val"] == {"shards": [], "shard_tokens": [], "tokens": 0, "docs": 0}


def test_val_input_becomes_the_val_split(tok, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [DOCS[0], DOCS[1], DOCS[2]])
    val = write_jsonl(tmp_path / "val.jsonl", [DOCS[2], DOCS[3]])
    meta = prepare([train], tok, tmp_path / "out", val_inputs=[str(val)], val_fraction=0.5)
    assert read_tokens(tmp_path / "out", "val").tolist() == expected(tok, [DOCS[2], DOCS[3]])
    # The train copy of a val document is dropped, so val never leaks into train.
    assert read_tokens(tmp_path / "out", "train").tolist() == expected(tok, DOCS[:2])
    assert meta["options"]["val_inputs"] == [str(val)]


def test_existing_output_is_refused_then_replaced_safely(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        prepare([path], tok, out)
    # A failed run leaves the existing folder untouched and no temporary folders behind.
    (tmp_path / "blob.txt").write_bytes(b"\x00\x00\x00")
    with pytest.raises(DataError, match="binary"):
        prepare([path, tmp_path / "blob.txt"], tok, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.txt", "c.jsonl", "out"]
    prepare([path], tok, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train-00000.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.txt", "c.jsonl", "out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare([path], tok, empty)  # an empty folder is fine


def test_meta_json_layout(tok, tmp_path):
    meta = prepare([write_jsonl(tmp_path / "c.jsonl", DOCS)], tok, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == meta
    assert list(meta) == ["format", "dtype", "vocab_size", "eos_id", "tokenizer_sha256", "splits",
                          "cleaning", "inputs", "options", "lmforge_version"]
    assert set(meta["splits"]["train"]) == {"shards", "shard_tokens", "tokens", "docs"}
    assert meta["inputs"] == [str(tmp_path / "c.jsonl")]
    assert "workers" not in meta["options"]


def test_tokenizer_without_eos_needs_eos_id(tmp_path):
    words = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = write_jsonl(tmp_path / "c.jsonl", ["a b", "b a"])
    with pytest.raises(DataError, match="no end-of-text token.*--eos-id"):
        prepare([path], words, tmp_path / "out")
    with pytest.raises(DataError, match="eos id 3 is out of range"):
        prepare([path], words, tmp_path / "out", eos_id=3)
    meta = prepare([path], words, tmp_path / "out", eos_id=0)
    assert meta["eos_id"] == 0
    assert read_tokens(tmp_path / "out").tolist() == [1, 2, 0, 2, 1, 0]


def test_bad_options_are_config_errors(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare([path], tok, tmp_path / "out", val_fraction=1.5)
    with pytest.raises(ConfigError, match="unknown field"):
        prepare([path], tok, tmp_path / "out", shards=3)


# --------------------------------------------------------------------------- CLI errors

def test_cli_errors_are_one_line(tok, tmp_path, run_lmforge):
    tok.save(str(tmp_path / "tok.json"))
    base = ["prepare", "-t", tmp_path / "tok.json", "--workers", "1", "--out"]

    line = one_line_error(run_lmforge(*base, tmp_path / "o1", tmp_path / "missing.txt"))
    assert "input not found" in line and "missing.txt" in line

    (tmp_path / "empty.txt").write_text("")
    line = one_line_error(run_lmforge(*base, tmp_path / "o2", tmp_path / "empty.txt"))
    assert "no documents" in line

    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    line = one_line_error(run_lmforge(*base, tmp_path / "o3", tmp_path / "blob.bin"))
    assert "blob.bin" in line and "binary" in line

    assert not any(p.name.startswith(("o1", "o2", "o3", ".o")) for p in tmp_path.iterdir())


def test_cli_help(capsys):
    from lmforge.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--split-on-blank-lines", "--separator", "--text-field", "--near-dedup",
                 "--val-input", "--shard-tokens", "--workers", "--overwrite"):
        assert flag in usage


# --------------------------------------------------------------------------- memory

def write_generated_corpus(path: Path, megabytes: float, source: Path) -> None:
    """Distinct documents stitched from ``source`` paragraphs, blank-line separated."""
    text = source.read_text(encoding="utf-8")
    paragraphs = [p.replace("\n", " ") for p in text.split("\n\n")]
    rng = random.Random(0)
    target, written, n = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            doc = f"Document {n}. " + "\n".join(rng.choices(paragraphs, k=rng.randint(2, 12))) + "\n\n"
            written += f.write(doc)
            n += 1


def word_level_tokenizer(path: Path, out: Path) -> Path:
    """A fast tokenizer, so memory tests spend their time in the pipeline rather than in BPE."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with open(path, encoding="utf-8") as f:
        sample = f.read(2_000_000)
    tok.train_from_iterator([sample], trainers.WordLevelTrainer(
        vocab_size=20_000, special_tokens=["<|endoftext|>", "<unk>"], show_progress=False))
    tok.save(str(out))
    return out


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def interpreter_rss() -> int:
    """RSS of an idle interpreter that imported what a prepare worker imports."""
    import subprocess

    code = "import lmforge.data.prepare, psutil; print(psutil.Process().memory_info().rss)"
    return int(subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                              text=True, check=True).stdout)


def peak_rss_of_cli(args: list, timeout: float) -> tuple[int, float, float, str]:
    """Run the CLI, sampling the summed RSS of it and its worker processes; (rc, peak bytes, s, stderr)."""
    import subprocess

    psutil = pytest.importorskip("psutil")
    start = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-m", "lmforge", *map(str, args)], env=_env(),
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
        peak = max(peak, total)
        if time.perf_counter() - start > timeout:
            proc.kill()
            pytest.fail(f"prepare took longer than {timeout} s")
        time.sleep(0.05)
    return proc.returncode, peak, time.perf_counter() - start, proc.stderr.read()


def test_memory_stays_bounded_on_a_30mb_corpus(tmp_path, shakespeare):
    corpus = tmp_path / "corpus.txt"
    write_generated_corpus(corpus, 30, shakespeare)
    tok = word_level_tokenizer(corpus, tmp_path / "tok.json")
    rc, peak, seconds, stderr = peak_rss_of_cli(
        ["prepare", corpus, "-t", tok, "--out", tmp_path / "out", "--split-on-blank-lines",
         "--workers", "2", "--quiet"], timeout=300)
    assert rc == 0, stderr
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["cleaning"]["bytes_in"] > 29e6
    # Three interpreters (main + 2 workers) with their libraries, plus a few chunks in flight;
    # holding the corpus and its tokens would add far more than this margin.
    # Beyond three idle interpreters (main + 2 workers), only a few chunks are ever in flight;
    # holding the corpus or its tokens would grow with the input instead.
    overhead = peak - 3 * interpreter_rss()
    print(f"\n30 MB prepare: peak RSS {peak / 1e6:.0f} MB, {overhead / 1e6:.0f} MB above 3 idle "
          f"interpreters, {seconds:.1f} s")
    assert overhead < 250e6, f"peak RSS {peak / 1e6:.0f} MB, {overhead / 1e6:.0f} MB of it for data"


@pytest.mark.slow
def test_memory_stays_under_2gb_on_a_1gb_corpus(tmp_path, shared_data, shakespeare):
    corpus = tmp_path / "corpus.txt"
    write_generated_corpus(corpus, 1000, shakespeare)
    rc, peak, seconds, stderr = peak_rss_of_cli(
        ["prepare", corpus, "-t", shared_data / "tokenizers" / "gpt2", "--out", tmp_path / "out",
         "--split-on-blank-lines", "--quiet"], timeout=3 * 3600)
    assert rc == 0, stderr
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    mb = meta["cleaning"]["bytes_in"] / 1e6
    print(f"\n1 GB prepare: peak RSS {peak / 1e6:.0f} MB, {mb / seconds:.2f} MB/s "
          f"({mb:.0f} MB in {seconds:.0f} s)")
    assert mb > 990
    assert peak < 2e9, f"peak RSS {peak / 1e6:.0f} MB"


# --------------------------------------------------------------------------- parts and merge

def _documents(out: Path, split: str, eos: int) -> list[tuple[int, ...]]:
    docs, current = [], []
    for t in read_tokens(out, split).tolist():
        if t == eos:
            docs.append(tuple(current))
            current = []
        else:
            current.append(t)
    return docs


def test_prepare_in_parts_then_merge_equals_one_run(tok, tmp_path, shakespeare, run_lmforge):
    """Two parts (every other file each), merged: the documents of one run, train and val alike,
    with sentence indexes that still point at sentence starts."""
    from lmforge.data.dataset import TokenShards
    from lmforge.data.prepare import merge_prepared
    paragraphs = [p for p in shakespeare.read_text().split("\n\n") if p.strip()][:300]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"{i}.txt").write_text("\n\n".join(paragraphs[i::5]))
    options = dict(split_on_blank_lines=True, val_fraction=0.2, shard_tokens=2000,
                   split_sentences=True)
    one = prepare([corpus], tok, tmp_path / "one", **options)
    parts = [prepare([corpus], tok, tmp_path / f"part{i}", num_parts=2, part=i, **options)
             for i in (1, 0)]
    assert [len(p["part"]["inputs"]) for p in parts] == [2, 3]
    merged = merge_prepared([tmp_path / "part1", tmp_path / "part0"], tmp_path / "merged")
    eos = eos_token_id(tok)
    for split in ("train", "val"):
        assert sorted(_documents(tmp_path / "merged", split, eos)) == \
            sorted(_documents(tmp_path / "one", split, eos))
        assert merged["splits"][split]["tokens"] == one["splits"][split]["tokens"]
        assert merged["splits"][split]["sentences"] == one["splits"][split]["sentences"]
    assert len(merged["splits"]["train"]["shards"]) > 2 and "part" not in merged
    data = TokenShards(tmp_path / "merged", "train")  # checks sizes and sentence indexes
    assert sum(len(data.document_sentences(s, d)) for s in range(len(data.shards))
               for d in range(len(data.documents(s)))) == merged["splits"]["train"]["sentences"]
    assert merged["cleaning"]["docs_in"] == one["cleaning"]["docs_in"]
    with pytest.raises(DataError, match="all of them once"):
        merge_prepared([tmp_path / "part0"], tmp_path / "half")
    with pytest.raises(ConfigError, match="part must be"):
        prepare([corpus], tok, tmp_path / "bad", num_parts=2, part=2)
    with pytest.raises(DataError, match="has no input file"):
        prepare([corpus / "0.txt"], tok, tmp_path / "bad", num_parts=2, part=1)

    tok.save(str(tmp_path / "tok.json"))
    base = ["-t", tmp_path / "tok.json", "--workers", "1", "--split-on-blank-lines", "--num-parts", "2"]
    for i in range(2):
        assert run_lmforge("prepare", corpus, *base, "--part", str(i), "--out",
                           tmp_path / f"cli{i}").returncode == 0
    result = run_lmforge("prepare-merge", tmp_path / "cli0", tmp_path / "cli1", "--out",
                         tmp_path / "cli")
    assert result.returncode == 0, result.stderr
    assert "documents out" in result.stdout
    line = one_line_error(run_lmforge("prepare-merge", tmp_path / "cli0", tmp_path / "one",
                                      "--out", tmp_path / "mixed"))
    assert "sentence_index differ" in line or "all of them once" in line

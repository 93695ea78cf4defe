"""Stream documents out of raw corpus files: .txt, .jsonl, .parquet, .tsv/.csv (one column), their
.gz forms, folders, stdin.

Nothing here holds a corpus in memory: files are read line by line (or in Parquet record
batches) and documents are yielded one at a time. A document is bounded by ``MAX_DOC_CHARS``
so one runaway file cannot take the machine down.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import sys
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from .errors import DataError

STDIN = "-"
TEXT, JSONL, PARQUET, TABLE = "text", "jsonl", "parquet", "table"
# How a text file is cut into documents.
SPLIT_MODES = ("file", "blank-lines", "lines", "separator")
# Extensions picked up when a folder is given; an explicitly named file is read whatever its name.
FOLDER_SUFFIXES = {".txt": TEXT, ".text": TEXT, ".md": TEXT, ".jsonl": JSONL, ".ndjson": JSONL,
                   ".parquet": PARQUET}
# Tables are read when named, never picked up from a folder (a folder's CSVs may be anything).
TABLE_SUFFIXES = {".tsv": TABLE, ".csv": TABLE}
MAX_DOC_CHARS = 64 * 2**20
SAMPLE_BYTES = 64 * 1024
PARQUET_BATCH_ROWS = 1024


def input_format(path: str | Path) -> str:
    """The format of ``path`` by its name: "text", "jsonl" or "parquet" (a .gz suffix is looked through)."""
    if str(path) == STDIN:
        return TEXT
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    known = {**FOLDER_SUFFIXES, **TABLE_SUFFIXES}
    return known.get(suffixes[-1], TEXT) if suffixes else TEXT


def _is_corpus_file(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
        return bool(suffixes) and FOLDER_SUFFIXES.get(suffixes[-1]) in (TEXT, JSONL)
    return bool(suffixes) and suffixes[-1] in FOLDER_SUFFIXES


def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Check that every input exists and expand folders into their corpus files.

    Folders are walked recursively in sorted order (so runs are reproducible), skipping hidden
    entries and files whose extension is not a known corpus format. ``-`` stands for stdin.
    """
    paths: list[str] = []
    for item in inputs:
        if str(item) == STDIN:
            paths.append(STDIN)
            continue
        path = Path(item)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*"))
                     if p.is_file() and _is_corpus_file(p)
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if not found:
                raise DataError(f"no corpus files (.txt, .jsonl, .parquet, .gz) in folder: {path}")
            paths.extend(str(p) for p in found)
        elif path.is_file():
            paths.append(str(path))
        else:
            raise DataError(f"input not found: {item}")
    if not paths:
        raise DataError("no inputs given")
    return paths


def _check_sample(name: str, sample: bytes, encoding: str) -> None:
    """Refuse binary files and files in another encoding by looking at their first bytes."""
    if b"\x00" in sample and not encoding.lower().replace("_", "-").startswith(("utf-16", "utf-32")):
        raise DataError(f"{name}: looks like a binary file (NUL bytes), expected text")
    try:
        # An incremental decoder tolerates a character cut in half at the end of the sample.
        codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not valid {encoding} text (bad byte at offset {exc.start}); "
                        "pass the right --encoding, e.g. latin-1") from None


def _open_binary(path: str) -> io.BufferedReader:
    # Buffers as large as the sample, so that peek() can show the whole sample.
    if path == STDIN:
        return sys.stdin.buffer
    if path.lower().endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=SAMPLE_BYTES)
    return open(path, "rb", buffering=SAMPLE_BYTES)


@contextmanager
def open_text(path: str | Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """Open a text file (``.gz`` or plain, or ``-`` for stdin) after checking it is really text.

    Newlines are normalized to ``\\n``. Decoding errors and corrupt gzip data, here or while
    reading, become a DataError naming the file.
    """
    name = "stdin" if str(path) == STDIN else str(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown text encoding: {encoding}") from None
    is_stdin = str(path) == STDIN
    try:
        raw = _open_binary(str(path))
        stream = None
        try:
            _check_sample(name, raw.peek(SAMPLE_BYTES)[:SAMPLE_BYTES], encoding)
            stream = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline=None)
            yield stream
        finally:
            if is_stdin:
                if stream is not None:
                    stream.detach()  # closing our wrapper must not close the process's stdin
            else:
                raw.close()
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not valid {encoding} text ({exc.reason}); "
                        "pass the right --encoding, e.g. latin-1") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupt gzip data ({exc})") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, expected a file") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None


def iter_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[str]:
    """Lines of a text file, each ending in ``\\n`` except perhaps the last."""
    with open_text(path, encoding) as stream:
        yield from stream


def _too_long(name: str, line_no: int) -> DataError:
    return DataError(f"{name}: document ending near line {line_no} is longer than {MAX_DOC_CHARS:,} "
                     "characters; cut the file into documents (--split-on-blank-lines, "
                     "--split-on-lines or --separator)")


def _text_documents(path: str, split: str, separator: str | None, encoding: str) -> Iterator[str]:
    name = "stdin" if path == STDIN else path
    with open_text(path, encoding) as stream:
        if split == "file":
            text = stream.read(MAX_DOC_CHARS + 1)
            if len(text) > MAX_DOC_CHARS:
                raise _too_long(name, text.count("\n"))
            yield text.rstrip("\n")
            return
        lines: list[str] = []
        size = 0
        for line_no, line in enumerate(stream, 1):
            if split == "lines":
                if line.strip():
                    yield line.rstrip("\n")
                continue
            is_break = line.rstrip("\n") == separator if split == "separator" else not line.strip()
            if is_break:
                if lines:
                    yield "".join(lines).rstrip("\n")
                lines, size = [], 0
                continue
            lines.append(line)
            size += len(line)
            if size > MAX_DOC_CHARS:
                raise _too_long(name, line_no)
        if lines:
            yield "".join(lines).rstrip("\n")


def _jsonl_documents(path: str, text_field: str, encoding: str) -> Iterator[str]:
    with open_text(path, encoding) as stream:
        for line_no, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{line_no}: no field '{text_field}' (set --text-field)")
            value = record[text_field]
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}:{line_no}: field '{text_field}' is not a string")
            yield value or ""


def _table_documents(path: str, text_field: str, encoding: str) -> Iterator[str]:
    """One document per row of a .tsv/.csv file with a header: the ``text_field`` column (e.g.
    the sentences of a labeled GLUE file, labels dropped). TSV is read without quote handling,
    as GLUE's files need; CSV with the usual quoting."""
    import csv
    tsv = ".tsv" in [s.lower() for s in Path(path).suffixes]
    with open_text(path, encoding) as stream:
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(stream)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip().lstrip("\ufeff") for h in header]
        if text_field not in header:
            raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(header)}; "
                            "set --text-field)")
        col = header.index(text_field)
        for line_no, row in enumerate(reader, 2):
            if not row:
                continue
            if col >= len(row):
                raise DataError(f"{path}:{line_no}: {len(row)} columns, no '{text_field}'")
            yield row[col]


def _parquet_documents(path: str, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    if text_field not in parquet.schema_arrow.names:
        raise DataError(f"{path}: no column '{text_field}' (columns: "
                        f"{', '.join(parquet.schema_arrow.names)}; set --text-field)")
    with parquet:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            column = batch.column(0)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise DataError(f"{path}: column '{text_field}' holds {column.type}, not text")
            for value in column.to_pylist():
                yield value or ""


def iter_documents(path: str | Path, *, split: str = "file", separator: str | None = None,
                   text_field: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Yield the documents of one input file (or ``-`` for stdin) as strings.

    Text files are one document each by default; ``split`` cuts them at blank lines
    ("blank-lines"), at every line ("lines") or at lines equal to ``separator`` ("separator").
    JSONL and Parquet files give one document per record, .tsv/.csv files (with a header) one per
    row, from ``text_field``.
    Trailing newlines of text documents are dropped; empty documents are yielded as "".
    """
    if split not in SPLIT_MODES:
        raise DataError(f"unknown split mode '{split}' (choose from {', '.join(SPLIT_MODES)})")
    if split == "separator" and not separator:
        raise DataError("split mode 'separator' needs a separator line")
    path = str(path)
    fmt = input_format(path)
    if fmt == PARQUET:
        return _parquet_documents(path, text_field)
    if fmt == JSONL:
        return _jsonl_documents(path, text_field, encoding)
    if fmt == TABLE:
        return _table_documents(path, text_field, encoding)
    return _text_documents(path, split, separator, encoding)


def iter_corpus(paths: Iterable[str | Path], **options) -> Iterator[str]:
    """Documents of several inputs in order; ``options`` as for :func:`iter_documents`."""
    for path in paths:
        yield from iter_documents(path, **options)

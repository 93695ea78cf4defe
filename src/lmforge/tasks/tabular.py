"""Labeled text rows for sequence classification and regression: GLUE TSVs, any CSV/TSV/JSONL
with named (or numbered) columns, and "one example per line" files, one per class.

    rows = read_rows("glue/SST-2/train.tsv")                       # GLUE: columns known
    rows = read_rows("reviews.csv", text="review", label="stars")
    rows = read_rows("pos=rt-polarity.pos,neg=rt-polarity.neg", encoding="latin-1")
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

# GLUE tasks by folder name: (text column, pair column, label column, has header). Columns are
# names, or 0-based indexes for header-less files (CoLA).
GLUE = {
    "SST-2": ("sentence", None, "label", True),
    "CoLA": (3, None, 1, False),
    "MRPC": ("#1 String", "#2 String", "Quality", True),
    "STS-B": ("sentence1", "sentence2", "score", True),
    "WNLI": ("sentence1", "sentence2", "label", True),
    "RTE": ("sentence1", "sentence2", "label", True),
    "QNLI": ("question", "sentence", "label", True),
    "QQP": ("question1", "question2", "is_duplicate", True),
    "MNLI": ("sentence1", "sentence2", "gold_label", True),
}
TEXT_NAMES = ("text", "sentence", "sentence1", "question", "premise", "review", "content")
PAIR_NAMES = ("text_pair", "sentence2", "hypothesis", "passage")
LABEL_NAMES = ("label", "labels", "score", "target", "class", "gold_label")


@dataclass
class Row:
    """One labeled (or unlabeled, for predict) example; ``line`` is where it came from."""

    text: str
    pair: str | None
    label: str | None
    line: int


def _column(header: list[str] | None, want, names: tuple[str, ...], what: str, path: Path,
            required: bool):
    """Index of the column named/numbered ``want``, or of the first of ``names`` present."""
    if isinstance(want, int) or (isinstance(want, str) and want.isdigit()):
        return int(want)
    if header is None:
        if want is None and not required:
            return None
        raise DataError(f"{path}: has no header row; give the {what} column as a 0-based number")
    if want is not None:
        if want not in header:
            raise DataError(f"{path}: {what} column '{want}' not found (columns: {', '.join(header)})")
        return header.index(want)
    for name in names:
        if name in header:
            return header.index(name)
    if required:
        raise DataError(f"{path}: no {what} column (looked for {', '.join(names)}; columns: "
                        f"{', '.join(header)}); name it with --{what.replace(' ', '-')}-column")
    return None


def read_rows(spec: str, text_column=None, pair_column=None, label_column=None,
              labeled: bool = True, encoding: str = "utf-8", header: bool | None = None) -> list[Row]:
    """Rows from ``spec``: a .tsv/.csv/.jsonl file, or ``name=path,name=path`` (one example per
    line, the class name as label). GLUE files are recognised by their folder name; ``labeled``
    False reads texts only (predict). Every row problem is one DataError naming file and line."""
    if "=" in spec and not Path(spec).exists():
        return _per_class_files(spec, encoding)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    glue = GLUE.get(path.parent.name)
    if glue is not None:
        text_column = glue[0] if text_column is None else text_column
        pair_column = glue[1] if pair_column is None else pair_column
        label_column = glue[2] if label_column is None else label_column
        header = glue[3] if header is None else header
    if path.suffix == ".jsonl":
        rows = _jsonl(path, text_column, pair_column, label_column, labeled, encoding)
    else:
        rows = _delimited(path, text_column, pair_column, label_column, labeled, encoding,
                          header if header is not None else True)
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def _delimited(path, text_column, pair_column, label_column, labeled, encoding, header) -> list[Row]:
    delimiter = "," if path.suffix == ".csv" else "\t"
    # GLUE and most TSVs carry raw quote characters inside text: never treat them as quoting.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    try:
        with path.open(encoding=f"{encoding}-sig" if encoding == "utf-8" else encoding, newline="") as f:
            lines = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not any(any(c.strip() for c in cells) for cells in lines):
        raise DataError(f"{path}: no examples (empty file)")
    names = lines[0] if header and lines else None
    body = lines[1:] if header else lines
    start = 2 if header else 1
    t = _column(names, text_column, TEXT_NAMES, "text", path, True)
    p = _column(names, pair_column, PAIR_NAMES, "text pair", path, False) if pair_column is not False else None
    lab = _column(names, label_column, LABEL_NAMES, "label", path, labeled) if labeled else None
    if labeled and lab is None:
        raise DataError(f"{path}: no label column")
    rows = []
    for n, cells in enumerate(body, start):
        if not cells or all(not c.strip() for c in cells):
            continue
        need = max(i for i in (t, p, lab) if i is not None)
        if len(cells) <= need:
            raise DataError(f"{path}:{n}: expected at least {need + 1} columns, found {len(cells)}")
        label = cells[lab].strip() if lab is not None else None
        if labeled and not label:
            raise DataError(f"{path}:{n}: empty label")
        rows.append(Row(cells[t], cells[p] if p is not None else None, label, n))
    return rows


def json_records(path: Path, lines: list[str]) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank JSON line; a bad line is a DataError naming it.
    The one JSON-lines parser of every task reader."""
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: expected a JSON object")
        records.append((n, record))
    return records


def _jsonl(path, text_column, pair_column, label_column, labeled, encoding) -> list[Row]:
    rows = []
    try:
        lines = path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    for n, record in json_records(path, lines):
        keys = list(record)
        t = text_column or next((k for k in TEXT_NAMES if k in record), None)
        if t not in record:
            raise DataError(f"{path}:{n}: no text field (looked for {t or ', '.join(TEXT_NAMES)}; "
                            f"fields: {', '.join(keys)})")
        p = pair_column or next((k for k in PAIR_NAMES if k in record), None)
        lab = label_column or next((k for k in LABEL_NAMES if k in record), None)
        if labeled and lab not in record:
            raise DataError(f"{path}:{n}: no label field (looked for {lab or ', '.join(LABEL_NAMES)}; "
                            f"fields: {', '.join(keys)})")
        label = record.get(lab) if labeled else None
        rows.append(Row(str(record[t]), str(record[p]) if p in record else None,
                        None if label is None else str(label), n))
    return rows


def _per_class_files(spec: str, encoding: str) -> list[Row]:
    rows = []
    for part in spec.split(","):
        label, _, file = part.partition("=")
        path = Path(file)
        if not label or not path.is_file():
            raise DataError(f"per-class data '{part}': expected NAME=FILE with an existing file")
        try:
            lines = path.read_text(encoding=encoding).splitlines()
        except UnicodeDecodeError:
            raise DataError(f"cannot read {path} as {encoding}; pass --encoding latin-1 or the "
                            "file's encoding") from None
        rows += [Row(text, None, label, n) for n, text in enumerate(lines, 1) if text.strip()]
    if not rows:
        raise DataError(f"per-class data '{spec}': no examples")
    return rows

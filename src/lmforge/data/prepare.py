"""Turn raw text into a tokenized pretraining dataset: flat binary shards plus meta.json.

    read (streamed) -> clean + filter + tokenize (worker processes) -> dedup -> shards

Workers get chunks of about a megabyte of text, at most ``2 * workers`` chunks in flight, and
results are consumed in chunk order: memory stays bounded and the output is byte-identical for
any worker count. Stateful decisions (exact and near dedup) happen in the main process, in
order, so "the first copy wins" is well defined.

Output folder::

    train-00000.bin ...   token ids, little-endian uint16 (vocab <= 65536) or uint32,
    val-00000.bin ...     every document followed by the EOS id
    train-00000.sent.bin  with split_sentences: little-endian uint64 offsets, within the shard,
    ...                   of the first token of every sentence (sentence index)
    tokenizer.json        the tokenizer that produced them
    meta.json             dtype, vocab_size, eos_id, tokenizer_sha256, splits, cleaning stats

A large corpus can be prepared in parts, on as many machines: ``num_parts=K, part=i`` takes
every K-th input file from the i-th (each machine reads only its files), and
:func:`merge_prepared` joins the K part folders into one dataset without re-reading a token.
Exact and near deduplication then hold within a part, not across parts; the val split, a hash
of each document, is the same as in one run.

With split_sentences, each sentence (see :mod:`.sentences`) is tokenized on its own, the
whitespace before it attached to its start, so a sentence boundary is always a token boundary
and the ids of a document still decode to its exact text. For byte-level BPE and WordPiece the
ids are the same as whole-document tokenization, because their pre-tokenizers split before
whitespace anyway; a tokenizer whose pre-tokenizer looks across the boundary (e.g. a Unigram
model without one) may give slightly different ids. Shards then also end only at document
ends (a shard may run past shard_tokens by the rest of one document), so every shard holds
whole documents and whole sentences.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .. import __version__
from ..config import from_dict
from ..errors import ConfigError, DataError
from ..files import replace_dir, temp_dir_beside
from ..readers import expand_inputs, iter_corpus
from ..tokenization.info import eos_token_id, vocab_size as tokenizer_vocab_size
from ..tokenization.load import load_tokenizer, save_tokenizer, tokenizer_sha256
from .cleaning import (NORMALIZATIONS, DocumentCleaner, ExactDeduplicator, NearDeduplicator,
                       content_hash, minhash_signatures, new_stats)
from .layout import FORMAT, META_FILE, SENTENCE_DTYPE, read_meta, sentence_index_name
from .sentences import sentence_spans

SPLITS = ("train", "val")
CHUNK_CHARS = 1 << 20
CHUNK_DOCS = 4096
# Longer documents are encoded in pieces cut after "<non-space>\n" before a non-space
# character: a point where byte-level BPE, WordPiece and char pre-tokenizers split anyway,
# so the ids are unchanged while the tokenizer's per-call memory stays small.
PIECE_CHARS = 1 << 18
_SAFE_BREAK = re.compile(r"\S\n(?=\S)")


@dataclass
class PrepareOptions:
    """Options of :func:`prepare_corpus` (the CLI flags of ``lmforge prepare``)."""

    text_field: str = "text"
    split_on_blank_lines: bool = False
    split_on_lines: bool = False
    separator: str | None = None
    encoding: str = "utf-8"
    normalize: str = "nfc"
    remove_control_chars: bool = True
    collapse_whitespace: bool = False
    min_chars: int = 0
    max_chars: int | None = None
    min_alpha_frac: float = 0.0
    dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = 0.8
    val_fraction: float = 0.005
    val_inputs: list[str] = field(default_factory=list)
    shard_tokens: int = 100_000_000
    split_sentences: bool = False
    eos_id: int | None = None
    workers: int | None = None
    num_parts: int = 1
    part: int = 0
    overwrite: bool = False
    progress: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option."""
        self.val_inputs = [str(p) for p in self.val_inputs]
        self.normalize = (self.normalize or "none").lower()
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}")
        if sum([self.split_on_blank_lines, self.split_on_lines, self.separator is not None]) > 1:
            raise ConfigError("choose one of split_on_blank_lines, split_on_lines, separator")
        if self.separator is not None and not self.separator.strip():
            raise ConfigError("separator must be a non-blank line (use split_on_blank_lines)")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < max(self.min_chars, 1)):
            raise ConfigError("need 0 <= min_chars <= max_chars and max_chars >= 1")
        if not 0.0 <= self.min_alpha_frac <= 1.0:
            raise ConfigError("min_alpha_frac must be within [0, 1]")
        if not 0.0 < self.near_dedup_threshold < 1.0:
            raise ConfigError("near_dedup_threshold must be within (0, 1)")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ConfigError("val_fraction must be within [0, 1]")
        if self.shard_tokens < 1:
            raise ConfigError("shard_tokens must be positive")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("workers must be >= 0 (0 or 1: no worker processes)")
        if self.num_parts < 1 or not 0 <= self.part < self.num_parts:
            raise ConfigError(f"part must be in [0, num_parts) and num_parts >= 1, got part "
                              f"{self.part} of {self.num_parts}")

    @property
    def split_mode(self) -> str:
        if self.separator is not None:
            return "separator"
        if self.split_on_lines:
            return "lines"
        return "blank-lines" if self.split_on_blank_lines else "file"

    def read_kwargs(self) -> dict[str, Any]:
        return {"split": self.split_mode, "separator": self.separator,
                "text_field": self.text_field, "encoding": self.encoding}

    def cleaner_kwargs(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "remove_control_chars": self.remove_control_chars,
                "collapse_whitespace": self.collapse_whitespace, "min_chars": self.min_chars,
                "max_chars": self.max_chars, "min_alpha_frac": self.min_alpha_frac}

    def recorded(self) -> dict[str, Any]:
        """The options that shape the output (for meta.json; not workers, progress, overwrite)."""
        data = dataclasses.asdict(self)
        for name in ("workers", "overwrite", "progress"):
            data.pop(name)
        return data


# ----------------------------------------------------------------------------- worker side

@dataclass
class ChunkResult:
    """What a worker returns for one chunk: stats and the surviving documents' tokens."""

    stats: dict[str, int]
    keys: np.ndarray        # uint64 dedup key per surviving doc
    is_val: np.ndarray      # bool per surviving doc
    lengths: np.ndarray     # tokens per surviving doc, EOS included
    tokens: np.ndarray      # all tokens of the chunk, concatenated
    signatures: list[Any] | None  # MinHash per surviving doc when near-dedup is on
    sentence_counts: np.ndarray | None = None  # with split_sentences: sentences per doc
    sentence_starts: np.ndarray | None = None  # ... and their token offsets within their doc


def _sentence_pieces(text: str) -> list[str]:
    """``text`` cut at each sentence end, so a sentence carries the whitespace before it."""
    cuts = [end for _, end in sentence_spans(text)[:-1]]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def _pieces(text: str) -> list[str]:
    if len(text) <= PIECE_CHARS:
        return [text]
    pieces, start = [], 0
    while len(text) - start > PIECE_CHARS:
        match = _SAFE_BREAK.search(text, start + PIECE_CHARS)
        if match is None:
            break
        pieces.append(text[start:match.end()])
        start = match.end()
    pieces.append(text[start:])
    return pieces


class ChunkProcessor:
    """Clean, hash, split-assign and tokenize chunks of raw documents (runs inside a worker)."""

    def __init__(self, tokenizer_json: str, settings: dict[str, Any]):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.cleaner = DocumentCleaner(**settings["cleaner"])
        self.eos_id = settings["eos_id"]
        self.dtype = np.dtype(settings["dtype"])
        self.near_dedup = settings["near_dedup"]
        self.split_sentences = settings["split_sentences"]
        # A doc goes to val when its split hash, read as a fraction of 2**64, is < val_fraction.
        self.val_threshold = int(settings["val_fraction"] * 2**64)

    def process(self, docs: list[str], split: str | None) -> ChunkResult:
        """``split`` forces every doc into that split; None assigns by content hash."""
        stats = new_stats()
        texts, keys, is_val = [], [], []
        for raw in docs:
            stats["docs_in"] += 1
            stats["bytes_in"] += len(raw.encode("utf-8", "surrogatepass"))
            text = self.cleaner.clean(raw, stats)
            if text is None:
                continue
            dedup_key, split_key = content_hash(text)
            texts.append(text)
            keys.append(dedup_key)
            is_val.append(split == "val" if split else split_key < self.val_threshold)
        tokens, lengths, sentence_counts, sentence_starts = self._encode(texts)
        return ChunkResult(stats=stats, keys=np.array(keys, dtype=np.uint64),
                           is_val=np.array(is_val, dtype=bool), lengths=lengths, tokens=tokens,
                           signatures=minhash_signatures(texts) if self.near_dedup else None,
                           sentence_counts=sentence_counts, sentence_starts=sentence_starts)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                 np.ndarray | None]:
        """(tokens, tokens per doc, sentences per doc, sentence offsets within their doc)."""
        pieces_per_doc, pieces, starts_sentence = [], [], []
        for text in texts:
            count = 0
            for sentence in _sentence_pieces(text) if self.split_sentences else [text]:
                parts = _pieces(sentence)
                starts_sentence += [True] + [False] * (len(parts) - 1)
                pieces.extend(parts)
                count += len(parts)
            pieces_per_doc.append(count)
        encodings = iter(self.tokenizer.encode_batch(pieces, add_special_tokens=False))
        flags = iter(starts_sentence)
        ids: list[int] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        sentence_counts = np.empty(len(texts), dtype=np.int64)
        sentence_starts: list[int] = []
        for i, count in enumerate(pieces_per_doc):
            start = len(ids)
            offsets = []
            for _ in range(count):
                if next(flags):
                    offsets.append(len(ids) - start)
                ids.extend(next(encodings).ids)
            # A sentence that tokenizes to nothing would repeat an offset or point at the EOS.
            offsets = sorted(set(o for o in offsets if o < len(ids) - start))
            sentence_starts += offsets
            sentence_counts[i] = len(offsets)
            ids.append(self.eos_id)
            lengths[i] = len(ids) - start
        if not self.split_sentences:
            return np.array(ids, dtype=self.dtype), lengths, None, None
        return (np.array(ids, dtype=self.dtype), lengths, sentence_counts,
                np.array(sentence_starts, dtype=np.int64))


_processor: ChunkProcessor | None = None


def _init_worker(tokenizer_json: str, settings: dict[str, Any]) -> None:
    global _processor
    # One tokenizer thread per worker process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _processor = ChunkProcessor(tokenizer_json, settings)


def _process_in_worker(docs: list[str], split: str | None) -> ChunkResult:
    return _processor.process(docs, split)


def _run_chunks(chunks: Iterable[tuple[list[str], str | None]], workers: int,
                tokenizer_json: str, settings: dict[str, Any]) -> Iterator[ChunkResult]:
    """Results of ``chunks`` in order, with at most ``2 * workers`` chunks submitted at a time."""
    if workers <= 1:
        processor = ChunkProcessor(tokenizer_json, settings)
        for docs, split in chunks:
            yield processor.process(docs, split)
        return
    # spawn, not fork: forking a process that has used the tokenizers thread pool can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(tokenizer_json, settings))
    pending: deque = deque()
    try:
        for docs, split in chunks:
            pending.append(pool.submit(_process_in_worker, docs, split))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        # The pool notices a dead worker (killed, out of memory, os._exit) at once; one line
        # instead of the pool's traceback, and no waiting on chunks that will never come.
        raise DataError("a prepare worker process died (killed, out of memory?); run again, "
                        "or with workers=1 (--workers 1) to tokenize in this process") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _unguarded_main_script() -> str | None:
    """The path of the ``__main__`` script when it calls us from its top level outside
    ``if __name__ == "__main__":``, else None.

    A "spawn" worker re-runs such a script to rebuild ``__main__``: it would train, prepare
    and write again, then die starting workers of its own. Scripts run by path or by module
    name are re-run; ``python -c``, the REPL, notebooks and packages' ``__main__`` are not.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if main is None or path is None or spec_name == "__main__" or spec_name.endswith(".__main__"):
        return None
    frame, line = sys._getframe(1), None
    while frame is not None:  # the outermost frame of the script's own top-level code
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return path  # cannot tell: tokenizing in-process is the safe side
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_guard(node.test) and \
                node.body[0].lineno <= line <= (node.body[-1].end_lineno or line):
            return None
    return path


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


# ----------------------------------------------------------------------------- main side

def _chunks(paths: Sequence[str], split: str | None,
            read_kwargs: dict[str, Any]) -> Iterator[tuple[list[str], str | None]]:
    docs, chars = [], 0
    for doc in iter_corpus(paths, **read_kwargs):
        docs.append(doc)
        chars += len(doc)
        if chars >= CHUNK_CHARS or len(docs) >= CHUNK_DOCS:
            yield docs, split
            docs, chars = [], 0
    if docs:
        yield docs, split


class ShardWriter:
    """Append tokens to ``{split}-00000.bin``, ``{split}-00001.bin``... of ``shard_tokens`` each.

    With ``sentences``, a shard ends only at a document end (so it may run past
    ``shard_tokens`` by the rest of one document) and gets a ``.sent.bin`` beside it holding the
    shard-relative offsets of its sentence starts.
    """

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int,
                 sentences: bool = False):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.sentences = sentences
        self.shards: list[str] = []
        self.shard_sizes: list[int] = []
        self.shard_sentences: list[int] = []
        self.docs = 0
        self._file = None
        self._index = None

    def write(self, tokens: np.ndarray, lengths: np.ndarray,
              sentence_starts: np.ndarray | None = None) -> None:
        """Append whole documents: ``tokens`` holds documents of ``lengths`` tokens (EOS included);
        ``sentence_starts`` (needed with ``sentences``) are sorted offsets into ``tokens``."""
        self.docs += lengths.size
        doc_ends = np.cumsum(lengths)
        pos = 0
        while pos < tokens.size:
            if self._file is None:
                self._open_shard()
            end = min(pos + self.shard_tokens - self.shard_sizes[-1], tokens.size)
            if self.sentences and end < tokens.size:
                end = int(doc_ends[np.searchsorted(doc_ends, end)])  # finish the document
            self._file.write(tokens[pos:end].astype(self.dtype, copy=False).tobytes())
            if self.sentences:
                lo, hi = np.searchsorted(sentence_starts, [pos, end])
                offsets = sentence_starts[lo:hi] - pos + self.shard_sizes[-1]
                self._index.write(offsets.astype(SENTENCE_DTYPE).tobytes())
                self.shard_sentences[-1] += int(hi - lo)
            self.shard_sizes[-1] += end - pos
            pos = end
            if self.shard_sizes[-1] >= self.shard_tokens:
                self.close()

    def _open_shard(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.folder / name, "wb")
        if self.sentences:
            self._index = open(self.folder / sentence_index_name(name), "wb")
        self.shards.append(name)
        self.shard_sizes.append(0)
        self.shard_sentences.append(0)

    def close(self) -> None:
        for handle in (self._file, self._index):
            if handle is not None:
                handle.close()
        self._file = self._index = None

    def summary(self) -> dict[str, Any]:
        summary = {"shards": list(self.shards), "shard_tokens": list(self.shard_sizes),
                   "tokens": sum(self.shard_sizes), "docs": self.docs}
        if self.sentences:
            summary.update(sentences=sum(self.shard_sentences),
                           shard_sentences=list(self.shard_sentences))
        return summary


class _Progress:
    """tqdm on stderr counting input bytes, with documents and docs/s alongside."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        # leave=False: the bar clears itself, so an error below it stays a single line.
        self.bar = tqdm(desc="prepare", unit="B", unit_scale=True, unit_divisor=1000, leave=False,
                        disable=not (enabled and sys.stderr.isatty()), file=sys.stderr,
                        dynamic_ncols=True)  # a bar only on a terminal, never in a log file
        self.start = time.perf_counter()

    def update(self, stats: dict[str, int]) -> None:
        if self.bar.disable:
            return
        rate = stats["docs_in"] / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{stats['docs_in']:,} docs, {rate:,.0f} docs/s", refresh=False)
        self.bar.update(stats["bytes_in"] - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _absorb(result: ChunkResult, stats: dict[str, int], writers: dict[str, ShardWriter],
            exact: ExactDeduplicator | None, near: NearDeduplicator | None) -> None:
    """Merge one chunk's stats, drop duplicates in order, write the survivors' tokens."""
    for key, value in result.stats.items():
        stats[key] += value
    keep = np.ones(result.keys.size, dtype=bool)
    if exact is not None or near is not None:
        for i, key in enumerate(result.keys.tolist()):
            if exact is not None and not exact.is_new(key):
                keep[i] = False
                stats["removed_duplicate"] += 1
            elif near is not None and not near.is_new(result.signatures[i]):
                keep[i] = False
                stats["removed_near_duplicate"] += 1
    for split, mask in (("train", keep & ~result.is_val), ("val", keep & result.is_val)):
        docs = int(mask.sum())
        if docs:
            starts = None if result.sentence_starts is None else _kept_sentence_starts(result, mask)
            writers[split].write(result.tokens[np.repeat(mask, result.lengths)],
                                 result.lengths[mask], starts)
            stats["docs_out"] += docs


def _kept_sentence_starts(result: ChunkResult, mask: np.ndarray) -> np.ndarray:
    """Sentence offsets of the docs in ``mask``, relative to the start of their kept tokens."""
    kept_lengths = result.lengths[mask]
    doc_starts = np.cumsum(kept_lengths) - kept_lengths
    counts = result.sentence_counts
    return result.sentence_starts[np.repeat(mask, counts)] + np.repeat(doc_starts, counts[mask])


def _check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder exists and is not empty: {out} (pass --overwrite to replace it)")


def _no_documents_error(stats: dict[str, int], inputs: Sequence[str]) -> DataError:
    if stats["docs_in"] == 0:
        return DataError(f"no documents in the inputs (empty?): {', '.join(inputs)}")
    removed = ", ".join(f"{key[len('removed_'):].replace('_', ' ')} {value}"
                        for key, value in stats.items() if key.startswith("removed_") and value)
    return DataError(f"no documents left after cleaning: {stats['docs_in']} read, all removed "
                     f"({removed})")


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks, e.g. in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def _resolve_tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    # A copy without truncation or padding: a pretraining document must keep all its tokens.
    tok = Tokenizer.from_str(tok.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def prepare_corpus(inputs: Sequence[str | Path], tokenizer: Tokenizer | str | Path,
                   out_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Clean, deduplicate, tokenize and shard ``inputs`` into ``out_dir``; return its meta.json.

    ``inputs`` are .txt/.jsonl/.parquet files, their .gz forms, folders of them, or ``-``
    (stdin). ``tokenizer`` is a Tokenizer or anything :func:`load_tokenizer` accepts.
    ``options`` are the fields of :class:`PrepareOptions`. The dataset is built in a temporary
    folder beside ``out_dir`` and renamed into place at the end, so a failed run leaves no
    half-written dataset and never damages an existing one.

    With ``workers`` > 1 (default: one per available core), worker processes are started
    with "spawn": forking a process whose tokenizers (or torch) thread pools have run can
    deadlock. A spawned worker re-runs the calling script to rebuild ``__main__``, so a script
    that calls this from its top level outside ``if __name__ == "__main__":`` (like the
    README's example) is detected and tokenized in this process instead, with a warning:
    measured on 5.6 MB of text with 2 contended cores, 1 process took 3.4 s, 2 spawned
    workers 3.6 s, 2 forked 2.9-3.3 s, so the guard only matters for large corpora on many
    cores. A worker that dies (killed, out of memory) fails the call at once with a DataError.
    """
    opts = from_dict(PrepareOptions, options, where="prepare options")
    tok = _resolve_tokenizer(tokenizer)
    vocab = max(tokenizer_vocab_size(tok), max(tok.get_vocab(with_added_tokens=True).values()) + 1)
    eos = opts.eos_id if opts.eos_id is not None else eos_token_id(tok)
    if eos is None:
        raise DataError("the tokenizer has no end-of-text token (<|endoftext|>, </s>, [SEP] or "
                        "<eos>); pass --eos-id")
    if not 0 <= eos < vocab:
        raise DataError(f"eos id {eos} is out of range for vocab size {vocab}")
    dtype = np.dtype("<u2") if vocab <= 2**16 else np.dtype("<u4")
    train_paths = expand_inputs(inputs)
    val_paths = expand_inputs(opts.val_inputs) if opts.val_inputs else []
    if (train_paths + val_paths).count("-") > 1:
        raise DataError("stdin (-) can be read only once")
    if opts.num_parts > 1:
        train_paths, val_paths = _part_inputs(train_paths, val_paths, opts.num_parts, opts.part)
    out = Path(out_dir)
    _check_output_dir(out, opts.overwrite)

    settings = {"cleaner": opts.cleaner_kwargs(), "eos_id": eos, "dtype": dtype.str,
                "near_dedup": opts.near_dedup, "val_fraction": opts.val_fraction,
                "split_sentences": opts.split_sentences}
    read = opts.read_kwargs()
    # With --val-input, val docs come first so dedup drops train copies of val docs, not the reverse.
    chunks = (_chunks(val_paths, "val", read), _chunks(train_paths, "train", read)) if val_paths \
        else (_chunks(train_paths, None, read),)
    workers = opts.workers if opts.workers is not None else available_cores()
    script = _unguarded_main_script() if workers > 1 else None
    if script is not None:
        warnings.warn(f"tokenizing in this process: {script} calls prepare_corpus outside "
                      f"'if __name__ == \"__main__\":', which worker processes would re-run; "
                      f"put the call under that guard to use {workers} workers", stacklevel=2)
        workers = 1

    tmp = temp_dir_beside(out)
    writers = {split: ShardWriter(tmp, split, dtype, opts.shard_tokens, opts.split_sentences)
               for split in SPLITS}
    stats = new_stats()
    exact = ExactDeduplicator() if opts.dedup else None
    near = NearDeduplicator(opts.near_dedup_threshold) if opts.near_dedup else None
    progress = _Progress(opts.progress)
    try:
        all_chunks = (chunk for stream in chunks for chunk in stream)
        for result in _run_chunks(all_chunks, workers, tok.to_str(), settings):
            _absorb(result, stats, writers, exact, near)
            progress.update(stats)
        for writer in writers.values():
            writer.close()
        if stats["docs_out"] == 0:
            raise _no_documents_error(stats, [str(p) for p in [*inputs, *opts.val_inputs]])
        save_tokenizer(tok, tmp)
        meta = {
            "format": FORMAT,
            "dtype": "uint16" if dtype.itemsize == 2 else "uint32",
            "vocab_size": vocab,
            "eos_id": eos,
            "tokenizer_sha256": tokenizer_sha256(tok),
            # Only with an index, so the meta.json of a plain dataset is unchanged.
            **({"sentence_index": True} if opts.split_sentences else {}),
            "splits": {split: writer.summary() for split, writer in writers.items()},
            "cleaning": stats,
            "inputs": [str(p) for p in inputs],
            "options": opts.recorded(),
            "lmforge_version": __version__,
            **({"part": {"index": opts.part, "count": opts.num_parts, "inputs": train_paths}}
               if opts.num_parts > 1 else {}),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
    return meta


# ----------------------------------------------------------------------------- parts

def _part_inputs(train: list[str], val: list[str], parts: int, part: int) -> tuple[list[str], list[str]]:
    """Every ``parts``-th input file from the ``part``-th (the val inputs likewise)."""
    if "-" in train + val:
        raise DataError("stdin (-) cannot be split into parts; give files or folders")
    mine = train[part::parts]
    if not mine:
        raise DataError(f"part {part} of {parts} has no input file ({len(train)} files in all); "
                        "use at most as many parts as files")
    return mine, val[part::parts]


# What every part of one dataset must share to be merged.
_SHARED_META = ("format", "dtype", "vocab_size", "eos_id", "tokenizer_sha256", "sentence_index")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no copy, the part stays intact), or a copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def merge_prepared(parts: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Join datasets prepared in parts (``num_parts``/``part``, or any prepared with the same
    tokenizer) into ``out_dir``: their shards renumbered in part order (hard links where the
    filesystem allows, else copies), one meta.json with the summed counts. Parts written by
    ``num_parts`` must all be there, each once."""
    roots = [Path(p) for p in parts]
    seen = [r.resolve() for r in roots]
    repeated = next((r for i, r in enumerate(roots) if seen[i] in seen[:i]), None)
    if repeated is not None:  # its documents would be counted twice
        raise DataError(f"{repeated} is given more than once; merge each part once")
    metas = [read_meta(root) for root in roots]
    for root, meta in zip(roots[1:], metas[1:]):
        for key in _SHARED_META:
            if meta.get(key) != metas[0].get(key):
                raise DataError(f"cannot merge {root} with {roots[0]}: their {key} differ "
                                f"({meta.get(key)!r} vs {metas[0].get(key)!r})")
    indexed = [m["part"] for m in metas if "part" in m]
    if indexed:
        count = indexed[0]["count"]
        found = sorted(p["index"] for p in indexed)
        if len(indexed) != len(metas) or found != list(range(count)):
            raise DataError(f"a dataset prepared in {count} parts merges all of them once; got "
                            f"part(s) {', '.join(map(str, found))} of {len(metas)} folder(s)")
        order = sorted(range(len(metas)), key=lambda i: metas[i]["part"]["index"])
        roots, metas = [roots[i] for i in order], [metas[i] for i in order]
    out = Path(out_dir)
    _check_output_dir(out, overwrite)
    tmp = temp_dir_beside(out)
    try:
        splits = {split: _merge_split(split, roots, metas, tmp) for split in SPLITS}
        shutil.copyfile(roots[0] / "tokenizer.json", tmp / "tokenizer.json")
        stats = new_stats()
        for meta in metas:
            for key, value in meta.get("cleaning", {}).items():
                stats[key] = stats.get(key, 0) + value
        options = {k: v for k, v in metas[0].get("options", {}).items() if k not in ("num_parts", "part")}
        meta = {**{k: metas[0][k] for k in _SHARED_META if k in metas[0]}, "splits": splits,
                "cleaning": stats, "inputs": [i for m in metas for i in m.get("inputs", [])],
                "options": options, "merged_from": [str(r) for r in roots],
                "lmforge_version": __version__}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _merge_split(split: str, roots: list[Path], metas: list[dict], tmp: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {"shards": [], "shard_tokens": [], "tokens": 0, "docs": 0}
    sentences = bool(metas[0].get("sentence_index"))
    if sentences:
        merged.update(sentences=0, shard_sentences=[])
    for root, meta in zip(roots, metas):
        info = meta["splits"].get(split, {})
        for i, (name, tokens) in enumerate(zip(info.get("shards", []), info.get("shard_tokens", []))):
            new = f"{split}-{len(merged['shards']):05d}.bin"
            _link_or_copy(root / name, tmp / new)
            if sentences:
                _link_or_copy(root / sentence_index_name(name), tmp / sentence_index_name(new))
                merged["shard_sentences"].append(info["shard_sentences"][i])
            merged["shards"].append(new)
            merged["shard_tokens"].append(tokens)
        merged["tokens"] += info.get("tokens", 0)
        merged["docs"] += info.get("docs", 0)
        if sentences:
            merged["sentences"] += info.get("sentences", 0)
    return merged

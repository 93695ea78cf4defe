"""``lmforge prepare``: raw text files -> cleaned, deduplicated, tokenized binary shards."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..data.prepare import PrepareOptions, prepare_corpus
from .flags import add_out_flag, examples

_DEFAULTS = PrepareOptions()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` command to the top-level parser."""
    p = subparsers.add_parser(
        "prepare", help="clean, deduplicate and tokenize a corpus into binary shards",
        description="Stream .txt/.jsonl/.parquet files (or .gz of txt/jsonl, folders, - for "
                    "stdin), clean and deduplicate the documents, tokenize them in parallel and "
                    "write OUT/train-*.bin, OUT/val-*.bin, OUT/tokenizer.json and OUT/meta.json.",
        epilog=examples(
            "lmforge prepare shakespeare.txt --tokenizer tok/ --out data/shakespeare",
            "lmforge prepare corpus/ --tokenizer tok/ --split-on-blank-lines --near-dedup --out data/corpus",
            "zcat dump.jsonl.gz | lmforge prepare - --tokenizer tok/ --text-field body --out data/dump"))
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or folders, - for stdin")
    p.add_argument("--tokenizer", "-t", required=True, metavar="PATH",
                   help="tokenizer.json or a tokenizer folder (see `lmforge tokenizer`)")
    add_out_flag(p, required=True, metavar="DIR", help="output dataset folder")

    read = p.add_argument_group("reading")
    split = read.add_mutually_exclusive_group()
    split.add_argument("--split-on-blank-lines", action="store_true",
                       help="a text file holds documents separated by blank lines "
                            "(default: one document per file)")
    split.add_argument("--split-on-lines", action="store_true", help="every text line is a document")
    split.add_argument("--separator", metavar="LINE",
                       help="documents are separated by lines equal to LINE (e.g. %% for fortunes)")
    read.add_argument("--text-field", default=_DEFAULTS.text_field, metavar="NAME",
                      help="JSONL field / Parquet, TSV or CSV column holding the text (default: text)")
    read.add_argument("--encoding", default=_DEFAULTS.encoding,
                      help="encoding of text files (default: utf-8; e.g. latin-1)")
    read.add_argument("--val-input", nargs="+", default=[], metavar="PATH", dest="val_inputs",
                      help="use these inputs as the val split instead of a hash split")

    clean = p.add_argument_group("cleaning")
    clean.add_argument("--normalize", choices=["none", "nfc", "nfkc"], default=_DEFAULTS.normalize,
                       help="Unicode normalization (default: nfc)")
    clean.add_argument("--keep-control-chars", dest="remove_control_chars", action="store_false",
                       help="keep control characters (default: remove all but \\n and \\t)")
    clean.add_argument("--collapse-whitespace", action="store_true",
                       help="squeeze runs of spaces/tabs to one space, drop trailing spaces")
    clean.add_argument("--min-chars", type=int, default=_DEFAULTS.min_chars, metavar="N",
                       help="drop documents shorter than N characters")
    clean.add_argument("--max-chars", type=int, default=None, metavar="N",
                       help="drop documents longer than N characters")
    clean.add_argument("--min-alpha-frac", type=float, default=_DEFAULTS.min_alpha_frac, metavar="F",
                       help="drop documents whose share of letters among non-space characters "
                            "is below F (junk filter; default: off)")
    clean.add_argument("--no-dedup", dest="dedup", action="store_false",
                       help="keep exact duplicate documents (default: drop them)")
    clean.add_argument("--near-dedup", action="store_true",
                       help="drop near duplicates (MinHash LSH over word 5-shingles)")
    clean.add_argument("--near-dedup-threshold", type=float, default=_DEFAULTS.near_dedup_threshold,
                       metavar="J", help="Jaccard similarity that counts as near duplicate "
                                         "(default: 0.8)")

    out = p.add_argument_group("output")
    out.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction, metavar="F",
                     help="share of documents for val, by a stable content hash (default: 0.005)")
    out.add_argument("--shard-tokens", type=int, default=_DEFAULTS.shard_tokens, metavar="N",
                     help="tokens per shard file (default: 100000000)")
    out.add_argument("--split-sentences", action="store_true",
                     help="tokenize sentence by sentence and write a sentence index beside each "
                          "shard (OUT/train-00000.sent.bin), as NSP, SOP and sentence "
                          "permutation need; shards then end at document ends")
    out.add_argument("--eos-id", type=int, default=None, metavar="ID",
                     help="id appended after every document (default: the tokenizer's "
                          "<|endoftext|>, </s>, [SEP] or <eos>)")
    out.add_argument("--workers", type=int, default=None, metavar="N",
                     help="tokenizer processes (default: number of cores; 0/1: none)")
    out.add_argument("--num-parts", type=int, default=_DEFAULTS.num_parts, metavar="K",
                     help="prepare the corpus in K parts (one per machine or process), then join "
                          "them with `lmforge prepare-merge`; dedup holds within a part")
    out.add_argument("--part", type=int, default=_DEFAULTS.part, metavar="I",
                     help="which part this run prepares, 0..K-1: every K-th input file from the I-th")
    out.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_prepare)


_OPTION_NAMES = [f for f in PrepareOptions.__dataclass_fields__ if f != "progress"]


def _prepare(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in _OPTION_NAMES}
    start = time.perf_counter()
    progress = not args.quiet and sys.stderr.isatty()
    meta = prepare_corpus(args.inputs, args.tokenizer, args.out, progress=progress, **options)
    if not args.quiet:
        print(format_summary(meta, time.perf_counter() - start, args.out))
    return 0


def format_summary(meta: dict[str, Any], seconds: float, out: str) -> str:
    """The end-of-run table: documents through each filter, tokens per split, throughput."""
    c = meta["cleaning"]
    rows = [
        ("documents in", c["docs_in"]),
        ("  empty", -c["removed_empty"]),
        ("  too short", -c["removed_too_short"]),
        ("  too long", -c["removed_too_long"]),
        ("  junk (alpha share)", -c["removed_junk"]),
        ("  exact duplicates", -c["removed_duplicate"]),
        ("  near duplicates", -c["removed_near_duplicate"]),
        ("documents out", c["docs_out"]),
    ]
    lines = ["", f"{'cleaning':<24}{'docs':>14}"]
    lines += [f"{name:<24}{value:>14,}" for name, value in rows]
    lines.append(f"{'control chars removed':<24}{c['control_chars_removed']:>14,}")
    lines.append(f"{'docs re-normalized':<24}{c['normalized_docs']:>14,}")
    lines.append(f"{'whitespace collapsed':<24}{c['whitespace_collapsed_docs']:>14,}")
    sentences = meta.get("sentence_index", False)
    lines += ["", f"{'split':<10}{'docs':>12}" + (f"{'sentences':>14}" if sentences else "")
              + f"{'tokens':>16}{'shards':>8}"]
    for name, split in meta["splits"].items():
        lines.append(f"{name:<10}{split['docs']:>12,}"
                     + (f"{split['sentences']:>14,}" if sentences else "")
                     + f"{split['tokens']:>16,}{len(split['shards']):>8}")
    mb = c["bytes_in"] / 1e6
    lines += ["",
              f"dtype {meta['dtype']}, vocab {meta['vocab_size']:,}, eos id {meta['eos_id']}",
              f"read {mb:,.1f} MB in {seconds:,.1f} s ({mb / max(seconds, 1e-9):,.2f} MB/s, "
              f"{c['docs_in'] / max(seconds, 1e-9):,.0f} docs/s)",
              f"wrote {out}"]
    return "\n".join(lines)

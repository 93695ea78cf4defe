"""``lmforge tokenizer train|encode|decode|info``: build, inspect and use tokenizers."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ..readers import open_text
from ..errors import DataError
from ..tokenization import (KINDS, decode, encode, load_tokenizer, save_tokenizer, tokenizer_info,
                            train_tokenizer)
from ..tokenization.load import TOKENIZER_FILE
from .flags import add_out_flag, examples


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tokenizer`` command and its actions to the top-level parser."""
    parser = subparsers.add_parser(
        "tokenizer", help="train, inspect and use tokenizers",
        description="Train a tokenizer on raw text, or encode/decode/inspect with one.",
        epilog=examples("lmforge tokenizer train shakespeare.txt --vocab-size 1024 --out tok/",
                        'lmforge tokenizer encode --tokenizer tok/ --text "To be, or not to be"',
                        "lmforge tokenizer info --tokenizer tok/"))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    _register_train(actions)
    _register_encode(actions)
    _register_decode(actions)
    _register_info(actions)


def _add_tokenizer_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", "-t", required=True, metavar="PATH",
                        help="tokenizer.json, or a folder with tokenizer.json, vocab.json + "
                             "merges.txt (GPT-2) or vocab.txt (BERT)")


def _register_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "train", help="train a char, word, byte-level BPE or WordPiece tokenizer",
        description="Train a tokenizer on text files or folders (.txt, .jsonl, .parquet, .gz) "
                    "and write OUT/tokenizer.json.",
        epilog=examples("lmforge tokenizer train shakespeare.txt --vocab-size 1024 --out tok/",
                        "lmforge tokenizer train wiki/ --kind wordpiece --vocab-size 30522 "
                        "--lowercase --out bert-tok/",
                        "lmforge tokenizer train input.txt --kind char --out char-tok/"))
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="training files or folders, - for stdin")
    p.add_argument("--kind", choices=KINDS, default="bpe",
                   help="char: one token per character; word: one token per whitespace-"
                        "separated word (already tokenized text such as WikiText); bpe: GPT-2 "
                        "byte-level BPE; wordpiece: BERT style (default: bpe)")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="vocab size incl. special tokens (required for bpe/wordpiece; "
                        "for char/word, an optional cap keeping the most frequent)")
    add_out_flag(p, required=True, metavar="DIR",
                 help=f"output folder for {TOKENIZER_FILE} (or a .json file path)")
    p.add_argument("--special-tokens", nargs="+", default=None, metavar="TOKEN",
                   help="special tokens, first ids (default: <|endoftext|> for char/word/bpe; "
                        "[PAD] [UNK] [CLS] [SEP] [MASK] for wordpiece)")
    p.add_argument("--lowercase", action="store_true", help="lowercase text before tokenizing")
    p.add_argument("--normalization", choices=["none", "nfc", "nfkc"], default="none",
                   help="Unicode normalization inside the tokenizer (default: none)")
    p.add_argument("--min-frequency", type=int, default=2, metavar="N",
                   help="minimum count of a merge/word piece/word; rarer words become <unk> "
                        "(default: 2; unused for char)")
    p.add_argument("--encoding", default="utf-8",
                   help="encoding of the input files (default: utf-8; e.g. latin-1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    target = out if out.suffix == ".json" else out / TOKENIZER_FILE
    if out.suffix != ".json" and out.exists() and not out.is_dir():
        raise DataError(f"output path exists and is not a folder: {out}")
    if target.exists() and not args.overwrite:
        raise DataError(f"{target} exists (pass --overwrite to replace it)")
    # Only a folder holding nothing but an earlier tokenizer is ours to write into: a run or
    # dataset folder's tokenizer.json belongs to its weights or shards.
    others = sorted(p.name for p in out.iterdir() if p.name != TOKENIZER_FILE) \
        if out.suffix != ".json" and out.is_dir() else []
    if others and not args.overwrite:
        raise DataError(f"output folder {out} holds other files ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}), not just a tokenizer; choose "
                        f"another folder, or pass --overwrite to write {TOKENIZER_FILE} into it")
    start = time.perf_counter()
    tok = train_tokenizer(args.inputs, kind=args.kind, vocab_size=args.vocab_size,
                          special_tokens=args.special_tokens, lowercase=args.lowercase,
                          normalization=args.normalization, min_frequency=args.min_frequency,
                          encoding=args.encoding, show_progress=not args.quiet and sys.stderr.isatty())
    path = save_tokenizer(tok, out)
    info = tokenizer_info(tok)
    print(f"trained a {info['kind']} tokenizer in {time.perf_counter() - start:.1f} s")
    _print_info(info)
    print(f"  {'saved':<16}{path}")
    return 0


def _register_encode(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "encode", help="print the token ids of a text",
        description="Encode --text, a FILE, or stdin, and print the ids space-separated.",
        epilog=examples('lmforge tokenizer encode --tokenizer tok/ --text "Hello world"',
                        "lmforge tokenizer encode --tokenizer models/gpt2 essay.txt --json"))
    _add_tokenizer_arg(p)
    p.add_argument("file", nargs="?", metavar="FILE", help="text file to encode (default: stdin)")
    p.add_argument("--text", help="text to encode (instead of FILE/stdin)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--add-special-tokens", action="store_true",
                   help="apply the tokenizer's post-processor (e.g. [CLS] ... [SEP])")
    p.set_defaults(func=_encode)


def _encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    if args.text is not None and args.file:
        raise DataError("give either --text or FILE, not both")
    if args.text is not None:
        text = args.text
    else:
        with open_text(args.file or "-") as stream:
            text = stream.read()
    ids = encode(tok, text, add_special_tokens=args.add_special_tokens)
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    return 0


def _register_decode(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "decode", help="print the text of token ids",
        description="Decode ids given as arguments or on stdin (space/comma separated or a "
                    "JSON list).",
        epilog=examples("lmforge tokenizer decode --tokenizer tok/ 15496 995",
                        "echo '[15496, 995]' | lmforge tokenizer decode --tokenizer models/gpt2"))
    _add_tokenizer_arg(p)
    p.add_argument("ids", nargs="*", metavar="ID", help="token ids (default: read stdin)")
    p.add_argument("--skip-special-tokens", action="store_true", help="leave special tokens out")
    p.set_defaults(func=_decode)


def parse_ids(text: str) -> list[int]:
    """Ids from "1 2 3", "1,2,3" or "[1, 2, 3]"; DataError on anything else."""
    ids = []
    for item in re.split(r"[\s,\[\]]+", text):
        if not item:
            continue
        try:
            ids.append(int(item))
        except ValueError:
            raise DataError(f"not a token id: {item!r}") from None
    return ids


def _decode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    ids = parse_ids(" ".join(args.ids) if args.ids else sys.stdin.read())
    text = decode(tok, ids, skip_special_tokens=args.skip_special_tokens)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _register_info(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("info", help="show a tokenizer's kind, vocab size and special tokens",
                           description="Describe a tokenizer.",
                           epilog=examples("lmforge tokenizer info --tokenizer tok/",
                                           "lmforge tokenizer info --tokenizer models/gpt2 --json"))
    _add_tokenizer_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)


def _print_info(info: dict) -> None:
    rows = [
        ("kind", f"{info['kind']} ({info['model']})"),
        ("vocab size", f"{info['vocab_size']:,}"),
        ("special tokens", " ".join(info["special_tokens"]) or "none"),
        ("eos", "none" if info["eos_id"] is None else f"{info['eos_token']} = {info['eos_id']}"),
        ("normalizer", info["normalizer"]),
        ("pre-tokenizer", info["pre_tokenizer"]),
        ("post-processor", info["post_processor"]),
        ("decoder", info["decoder"]),
        ("sha256", info["sha256"]),
    ]
    for name, value in rows:
        print(f"  {name:<16}{value}")


def _info(args: argparse.Namespace) -> int:
    info = tokenizer_info(load_tokenizer(args.tokenizer))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(args.tokenizer)
        _print_info(info)
    return 0

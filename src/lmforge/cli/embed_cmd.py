"""`lmforge embed`: sentence embeddings, one per input line, saved as .npy or JSONL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError, LMForgeError
from ..evaluation.embeddings import POOLINGS, embed
from .flags import add_out_flag, examples
from .inference import add_model_flags, language_model, load_model_and_tokenizer, read_text_file

OUTPUT_SUFFIXES = (".npy", ".jsonl")


def register(sub) -> None:
    p = sub.add_parser(
        "embed", help="sentence embeddings to .npy or JSONL",
        description="Embed sentences, one per line of --input (or stdin; blank lines skipped), "
                    "with a trained model's final hidden states. --out ending in .npy writes "
                    "a float32 array (N x d) whose rows follow the input lines; .jsonl (or no "
                    "--out: stdout) writes {\"text\", \"embedding\"} per line. Encoders "
                    "support all poolings; decoders and LSTMs mean pooling only.",
        epilog=examples(
            "lmforge embed --model runs/bert/model --input sentences.txt --out vectors.npy",
            "echo 'a sentence' | lmforge embed --model runs/bert/model --pooling cls --normalize"))
    add_model_flags(p)
    p.add_argument("--input", metavar="PATH",
                   help="a text file, one sentence per line; without it, stdin")
    add_out_flag(p, aliases=("--output",), metavar="OUT.npy|OUT.jsonl",
                 help="where to write, by suffix; without it, JSONL on stdout (also --output)")
    p.add_argument("--pooling", default="mean", choices=POOLINGS,
                   help="mean of the token vectors (padding excluded), the [CLS] vector, or "
                        "[CLS] through BERT's pooler (dense + tanh)")
    p.add_argument("--normalize", action="store_true", help="scale each vector to unit L2 norm")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    p.add_argument("--max-length", type=int,
                   help="truncate each sentence to this many tokens, [CLS]/[SEP] included "
                        "(default: the model's context)")
    p.set_defaults(func=run)


def read_sentences(path: str | None) -> list[str]:
    if path is not None:
        text = read_text_file(path, "input file")
    elif sys.stdin.isatty():
        raise LMForgeError("no input: pass --input FILE or pipe sentences on stdin, one per line")
    else:
        text = sys.stdin.read()
    sentences = [line for line in text.splitlines() if line.strip()]
    if not sentences:
        raise DataError("no sentences to embed: the input is empty")
    return sentences


def check_output(path: str | None) -> None:
    if path is not None and Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise LMForgeError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {path}")


def write_jsonl(sentences: list[str], vectors: np.ndarray, out) -> None:
    for text, vector in zip(sentences, vectors):
        out.write(json.dumps({"text": text, "embedding": vector.tolist()}, ensure_ascii=False) + "\n")


def run(args: argparse.Namespace) -> int:
    check_output(args.out)
    sentences = read_sentences(args.input)
    model, tokenizer = load_model_and_tokenizer(args)
    # A classifier's backbone still embeds: its hidden states are what the head reads.
    model = language_model(model, args, "embed", "hidden states", backbone_ok=True)
    vectors = embed(model, tokenizer, sentences, pooling=args.pooling, normalize=args.normalize,
                    batch_size=args.batch_size, max_length=args.max_length, precision=args.precision)
    if args.out is None:
        write_jsonl(sentences, vectors, sys.stdout)
        return 0
    path = Path(args.out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".npy":
            np.save(path, vectors)
        else:
            with open(path, "w", encoding="utf-8") as f:
                write_jsonl(sentences, vectors, f)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror}") from None
    print(f"wrote {len(vectors)} embeddings of dimension {vectors.shape[1]} to {path}", file=sys.stderr)
    return 0

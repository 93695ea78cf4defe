"""`lmforge fill-mask`: the most likely tokens for each [MASK] in a text, from an encoder."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import DataError, LMForgeError
from ..evaluation.fill_mask import Prediction, fill_in, fill_mask
from .flags import examples
from .inference import add_model_flags, language_model, load_model_and_tokenizer, read_text_file


def register(sub) -> None:
    p = sub.add_parser(
        "fill-mask", help="top-k predictions for [MASK] tokens (encoders)",
        description="Show the top-k tokens an encoder (masked LM) predicts for each [MASK] (or "
                    "<mask>) in a text, with probabilities (special tokens excluded), and the "
                    "text filled in with the top guesses. Texts come from --text, --file (one "
                    "per line) or stdin (one per line). Several masks in one text are guessed "
                    "independently, each with the others still masked.",
        epilog=examples(
            'lmforge fill-mask --model models/bert-base-uncased --text "Paris is the [MASK] of France."',
            "lmforge fill-mask --model runs/bert --file masked.txt --top-k 10 --json"))
    add_model_flags(p)
    p.add_argument("--text", action="extend", nargs="+", metavar="TEXT",
                   help='text(s) with [MASK], e.g. "The capital of France is [MASK]."')
    p.add_argument("--file", metavar="PATH", help="a file of texts, one per line (blank lines skipped)")
    p.add_argument("--top-k", type=int, default=5, help="guesses per mask")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per text (JSONL): text, filled, masks")
    p.set_defaults(func=run)


def collect_texts(args: argparse.Namespace) -> list[str]:
    """Texts from --text and --file; stdin (one per line) when neither is given."""
    texts = list(args.text or [])
    if args.file:
        texts += read_text_file(args.file, "text file").splitlines()
    elif not texts:
        if sys.stdin.isatty():
            raise LMForgeError("no text: pass --text TEXT, --file PATH, or pipe texts on stdin")
        texts = sys.stdin.read().splitlines()
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("no text: give a text with [MASK] in it")
    return texts


def print_table(text: str, masks: list[list[Prediction]], filled: str) -> None:
    print(text)
    for m, guesses in enumerate(masks, 1):
        if len(masks) > 1:
            print(f"  mask {m}")
        print("  rank  prob    token")
        for rank, guess in enumerate(guesses, 1):
            print(f"  {rank:>4}  {guess.prob:.4f}  {guess.token}")
    print(f"  filled: {filled}")


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise LMForgeError(f"--top-k must be at least 1, got {args.top_k}")
    texts = collect_texts(args)
    model, tokenizer = load_model_and_tokenizer(args)
    model = language_model(model, args, "fill-mask", "a masked-LM model (an encoder with "
                           "its masked-LM head)")
    for i, text in enumerate(texts):
        masks = fill_mask(model, tokenizer, text, args.top_k, precision=args.precision)
        filled = fill_in(tokenizer, text, [guesses[0].token_id for guesses in masks])
        if args.json:
            print(json.dumps({"text": text, "filled": filled, "masks": [
                [{"token": g.token, "prob": g.prob, "id": g.token_id} for g in guesses]
                for guesses in masks]}, ensure_ascii=False))
            continue
        if i:
            print()
        print_table(text, masks, filled)
    return 0

"""`lmforge score`: log-probability and perplexity of a text under a trained model (for an
encoder: pseudo-log-likelihood and pseudo-perplexity)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..errors import DataError, LMForgeError
from ..evaluation import ScoreResult, score_text
from .flags import examples
from .inference import (add_model_flags, fine_tuned_task, has_lm_head, language_model,
                        load_model_and_tokenizer, read_text_file)


def register(sub) -> None:
    p = sub.add_parser(
        "score", help="log-probability and perplexity of a text",
        description="Score a text (--text, --file or stdin): total log-probability in nats and "
                    "bits, tokens scored, mean negative log-likelihood and perplexity. Each token "
                    "is scored given all the text before it, after the end-of-text token; texts "
                    "longer than the model's context use a sliding window. An encoder (masked "
                    "LM) reports pseudo-log-likelihood instead: each token masked in turn and "
                    "scored given all the others (Salazar et al. 2020), and pseudo-perplexity.",
        epilog=examples('lmforge score --model runs/shakespeare --text "To be, or not to be"',
                        "lmforge score --model runs/shakespeare --file play.txt --per-token tokens.jsonl",
                        "cat essay.txt | lmforge score --model models/gpt2 --json"))
    add_model_flags(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", help="the text to score")
    source.add_argument("--file", metavar="PATH", help="a UTF-8 text file to score")
    p.add_argument("--stride", type=int,
                   help="sliding-window step for long texts (default: half the context); "
                        "smaller = more context per token, slower (decoders only)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="encoders: masked copies of the text per forward pass")
    p.add_argument("--per-token", metavar="OUT.jsonl",
                   help="write one JSON object per token: index, id, token, logprob")
    p.add_argument("--json", action="store_true", help="print the totals as one JSON object")
    p.set_defaults(func=run)


def read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if args.file is not None:
        return read_text_file(args.file, "text file")
    if sys.stdin.isatty():
        raise LMForgeError("no text: pass --text TEXT, --file PATH, or pipe text on stdin")
    return sys.stdin.read()


def write_per_token(result: ScoreResult, path: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            for token in result.tokens:
                f.write(json.dumps(dataclasses.asdict(token), ensure_ascii=False) + "\n")
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror}") from None


def print_summary(result: ScoreResult) -> None:
    pseudo = "pseudo-" if result.method == "pseudo" else ""
    width = 12 + len(pseudo)
    print(f"{'tokens':<{width}}{result.num_tokens}")
    print(f"{pseudo + 'log-prob':<{width}}{result.total_logprob:.4f} nats "
          f"({result.total_logprob_bits:.4f} bits)")
    print(f"{'mean NLL':<{width}}{result.mean_nll:.4f} nats/token")
    print(f"{pseudo + 'perplexity':<{width}}{result.perplexity:.4f}")


def run(args: argparse.Namespace) -> int:
    # The model first: a missing model is the problem to report, whatever the text.
    model, tokenizer = load_model_and_tokenizer(args)
    if fine_tuned_task(model) is not None:
        # The backbone of a classifier keeps the LM head it was pretrained with (tied to the
        # embeddings, or left untouched by fine-tuning), so it still scores text.
        model = language_model(model, args, "score", "a language model with its LM head",
                               backbone_ok=has_lm_head(model.backbone))
    text = read_text(args)
    if not text:
        raise DataError("empty text: nothing to score")
    result = score_text(model, tokenizer, text, stride=args.stride, precision=args.precision,
                        batch_size=args.batch_size)
    if args.per_token:
        write_per_token(result, args.per_token)
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print_summary(result)
    return 0

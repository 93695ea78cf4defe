"""`lmforge quickstart`: the whole pipeline on the packaged Shakespeare in a few minutes."""

from __future__ import annotations

from ..quickstart import quickstart
from .flags import add_out_flag, examples


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="train a tokenizer and a small GPT on Shakespeare, then sample",
                       description="Tokenizer -> prepare -> pretrain -> generate on the packaged "
                                   "Tiny Shakespeare (or --corpus), in a few minutes on a CPU.",
                       epilog=examples("lmforge quickstart",
                                       "lmforge quickstart --corpus my-novel.txt --max-steps 300 "
                                       "--out runs/novel"))
    add_out_flag(p, default="runs/quickstart", help="folder for everything it makes")
    p.add_argument("--corpus", help="a text file to use instead of Tiny Shakespeare")
    p.add_argument("--max-steps", type=int, default=900, help="training steps")
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--prompt", default="ROMEO:", help="prompt for the final sample")
    p.set_defaults(func=run)


def run(args) -> int:
    quickstart(args.out, args.corpus, args.vocab_size, args.max_steps, args.prompt)
    return 0

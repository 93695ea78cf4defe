"""`lmforge predict`: batch inference of a fine-tuned model on a file or stdin -> JSONL."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ..errors import DataError
from .inference import add_model_flags, load_model_tokenizer_config


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict with a fine-tuned model, file or stdin -> JSONL",
        description="Run a fine-tuned task model over --data (the task's file format; labels are "
                    "not needed) or stdin (one text per line, a TAB before the second text of a "
                    "pair; JSON lines for token classification and QA) and write one JSON object "
                    "per example: label and probabilities, a score, entities with character "
                    "offsets, or an answer span with its score.")
    add_model_flags(p, precision="auto")
    p.add_argument("--data", default="-", help="input file, or - for stdin (default)")
    p.add_argument("--output", "-o", help="JSONL output file (default: stdout)")
    p.add_argument("--task", help="task of a model without a head (seq2seq, sft; default: the "
                                  "task its fine-tuning run recorded)")
    p.add_argument("--max-new-tokens", type=int, dest="max_new_tokens",
                   help="seq2seq/sft: tokens to generate (default: the run's task option)")
    p.add_argument("--num-beams", type=int, dest="num_beams",
                   help="seq2seq/sft: beam search width, 1 = greedy (default: the run's)")
    p.add_argument("--task-args", dest="task_args",
                   help="seq2seq/sft task options as JSON, over those the run recorded")
    p.add_argument("--text-column", dest="text_column")
    p.add_argument("--text-pair-column", dest="text_pair_column")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run)


def stdin_file(task: str) -> Path:
    """stdin as a temporary file in the task's format (TSV of text[, pair] or JSONL)."""
    text = sys.stdin.read()
    if not text.strip():
        raise DataError("no input on stdin")
    is_json = text.lstrip().startswith("{")
    if not is_json and task == "token-classification":  # plain lines: whitespace-split words
        text = "".join(json.dumps({"text": line}) + "\n" for line in text.splitlines() if line.strip())
        is_json = True
    tmp = Path(tempfile.mkdtemp()) / ("stdin.jsonl" if is_json else "stdin.tsv")
    if tmp.suffix == ".tsv":
        lines = [line for line in text.splitlines() if line.strip()]
        pair = any("\t" in line for line in lines)
        header = "sentence\tsentence2" if pair else "sentence"
        text = header + "\n" + "\n".join(lines) + "\n"
    tmp.write_text(text)
    return tmp


def run(args) -> int:
    from ..tasks.inference import headless_task_options, objective_for
    from ..training.runtime import autocast, resolve_precision
    model, tokenizer, tok_cfg = load_model_tokenizer_config(args)
    options = {}
    spec = getattr(model, "spec", None)
    if spec is not None and spec.task in ("classification", "regression"):
        options = dict(text_column=args.text_column, text_pair_column=args.text_pair_column,
                       encoding=args.encoding)
    task = args.task
    if spec is None:  # a generative model: the options its run recorded, then the flags
        task, options = headless_task_options(args.model, args.task, tok_cfg, args.task_args,
                                              max_new_tokens=args.max_new_tokens,
                                              num_beams=args.num_beams, encoding=args.encoding)
    objective = objective_for(model, tokenizer, task, **options)
    path = stdin_file(objective.name) if args.data == "-" else Path(args.data)
    examples = objective.read(str(path), labeled=False)
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    predictions = objective.predict(model.eval(), examples, args.batch_size, device,
                                    lambda: autocast(device, precision))
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for example, prediction in zip(examples, predictions):
            out.write(json.dumps({**objective.describe(example), **prediction}, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    return 0

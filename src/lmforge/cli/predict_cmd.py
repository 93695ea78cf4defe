"""`lmforge predict`: batch inference of a fine-tuned model on a file or stdin -> JSONL."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ..errors import DataError
from .flags import add_out_flag, examples
from .inference import add_model_flags, add_task_flags, load_task


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict with a fine-tuned model, file or stdin -> JSONL",
        description="Run a fine-tuned task model over --data (the task's file format; labels are "
                    "not needed) or stdin (one text per line, a TAB before the second text of a "
                    "pair; JSON lines for token classification and QA) and write one JSON object "
                    "per example: label and probabilities, a score, entities with character "
                    "offsets, or an answer span with its score.",
        epilog=examples("lmforge predict --model runs/sst2 --data reviews.tsv --out predictions.jsonl",
                        "echo 'a gripping, funny film' | lmforge predict --model runs/sst2"))
    add_model_flags(p)
    p.add_argument("--data", default="-", help="input file, or - for stdin (default)")
    add_out_flag(p, aliases=("--output",), metavar="FILE",
                 help="JSONL output file (default: stdout; also --output)")
    add_task_flags(p)
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
    from ..tasks.inference import predict_file
    model, objective, device, autocast_ctx = load_task(args)
    path = stdin_file(objective.name) if args.data == "-" else Path(args.data)
    predictions = predict_file(model, objective, path, args.batch_size, device, autocast_ctx)
    try:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    except OSError as exc:
        raise DataError(f"cannot write {args.out}: {exc.strerror}") from None
    try:
        for prediction in predictions:
            out.write(json.dumps(prediction, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(predictions)} predictions to {args.out}", file=sys.stderr)
    return 0

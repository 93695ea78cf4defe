"""`lmforge evaluate`: a fine-tuned model's metrics on a labeled file, as a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from .inference import add_model_flags, load_model_tokenizer_config


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a fine-tuned model on a labeled file",
        description="Score a fine-tuned task model on a labeled file in its task's format; print "
                    "the metrics as a table and save them as JSON.")
    add_model_flags(p, precision="auto")
    p.add_argument("--data", required=True, help="labeled file")
    p.add_argument("--output", "-o", help="JSON file for the metrics")
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
    p.add_argument("--label-column", dest="label_column")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import DataError
    from ..tasks.inference import headless_task_options, objective_for
    from ..training.runtime import autocast, resolve_precision
    model, tokenizer, tok_cfg = load_model_tokenizer_config(args)
    options = {}
    spec = getattr(model, "spec", None)
    if spec is not None and spec.task in ("classification", "regression"):
        options = dict(text_column=args.text_column, text_pair_column=args.text_pair_column,
                       label_column=args.label_column, encoding=args.encoding)
    task = args.task
    if spec is None:  # a generative model: the options its run recorded, then the flags
        task, options = headless_task_options(args.model, args.task, tok_cfg, args.task_args,
                                              max_new_tokens=args.max_new_tokens,
                                              num_beams=args.num_beams, encoding=args.encoding)
    objective = objective_for(model, tokenizer, task, **options)
    features = objective.featurize(objective.read(args.data), training=False)
    if not features:
        raise DataError(f"{args.data}: no examples to evaluate")
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    batches = objective.eval_batches(features, 0, args.batch_size, 0)
    metrics = objective.evaluate(model.eval(), batches, device, lambda: autocast(device, precision))
    metrics = {k.removeprefix("val_"): v for k, v in metrics.items()}
    width = max(len(k) for k in metrics)
    print(f"{args.data}: {len(features)} examples")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps({"data": args.data, "examples": len(features),
                                                 **metrics}, indent=2) + "\n")
    return 0

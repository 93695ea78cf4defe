"""`lmforge compress`: quantized and pruned variants of a model (and students distilled
elsewhere) measured side by side: size, parameters, speed, quality, Pareto frontier."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import add_dataclass_flags, flags_to_dict, options_from_dict
from ..errors import LMForgeError
from .flags import add_out_flag, examples
from .inference import add_model_flags, add_positional_model, model_argument


def register(sub) -> None:
    p = sub.add_parser(
        "compress", help="quantize / prune a model and compare size, speed and quality",
        description="Make compressed variants of a model (weight-only int8/int4, dynamic int8, "
                    "magnitude/Wanda/2:4 pruning, structured head and FFN pruning, chains such "
                    "as wanda50+int8, and students from `lmforge distill` as model:PATH), save "
                    "each, and measure all of them the same way: size on disk, parameters, "
                    "prefill and decode speed (examples/s for encoders) and quality (perplexity, "
                    "the task's metric, or similarity to the original's embeddings). Writes "
                    "OUT/report.md, OUT/report.json, OUT/pareto.png and OUT/variants/NAME/.",
        epilog=examples(
            "lmforge compress runs/gpt --methods int8,int4,wanda50 --eval-data valid.txt",
            "lmforge compress --model SmolLM2-135M-Instruct.Q4_1.gguf --methods int8,int4-g64,"
            "wanda-2:4 --eval-data wiki.valid.txt --out runs/smol-compress",
            "lmforge compress runs/sst2 --methods dynamic-int8,heads25,model:runs/sst2-student "
            "--eval-data dev.tsv --calibration train.tsv",
            "lmforge generate --model runs/compress/variants/int8 --prompt 'ROMEO:'"))
    add_model_flags(p)
    add_positional_model(p, "the model to compress (or --model): a model or run folder, Hugging Face "
                         "folder, or .gguf file")
    add_out_flag(p, default="runs/compress", metavar="DIR",
                 help="output folder for the report and the variants' model folders")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    from ..compression.report import CompressOptions
    add_dataclass_flags(p, CompressOptions, skip=("device", "precision"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compression.report import CompressOptions, compress, format_table

    path = model_argument(args)
    if args.tokenizer:
        raise LMForgeError("compress saves each variant with the model's own tokenizer; "
                           "--tokenizer does not apply")
    fields = flags_to_dict(args, CompressOptions) | {"device": args.device, "precision": args.precision}
    options = options_from_dict(CompressOptions, fields, where="flag")
    say = (lambda _: None) if args.json else print
    result = compress(path, options, out=args.out, overwrite=args.overwrite, log_fn=say)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print()
    print(format_table(result))
    front = [r["name"] for r in result["rows"] if r["pareto"]]
    out = Path(args.out)
    print(f"\nPareto-optimal (size, speed, {result['quality']}): {', '.join(front)}")
    print(f"report: {out / 'report.md'}, {out / 'report.json'}, plot: {out / 'pareto.png'}")
    return 0

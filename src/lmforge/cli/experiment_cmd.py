"""`lmforge experiment pretrain-vs-scratch`: does pretraining help on this task and budget?"""

from __future__ import annotations

from ..config import add_dataclass_flags, flags_to_dict, from_dict, load_file
from ..errors import ConfigError
from ..training.config import CHOICES
from .flags import examples, task_names


def register(sub) -> None:
    from ..tasks.finetune import FinetuneConfig
    p = sub.add_parser(
        "experiment", help="pretrain-vs-scratch: fine-tune from a checkpoint and from random init",
        description="pretrain-vs-scratch: fine-tune --model as is and re-initialized (same "
                    "architecture, tokenizer, data and budget), once per seed; print the final "
                    "metrics and the gap, and write OUT/experiment.json and curves.png. Takes "
                    "every `lmforge finetune` flag.",
        epilog=examples("lmforge experiment pretrain-vs-scratch --model runs/bert --data train.tsv "
                        "--val-data dev.tsv --epochs 2 --seeds 1,2 --out runs/pvs",
                        "lmforge experiment pretrain-vs-scratch --model runs/bert --data train.tsv "
                        "--val-data dev.tsv --label-counts 100,300,1000,all --epochs 3 --out runs/le"))
    p.add_argument("name", choices=["pretrain-vs-scratch"], help="the experiment to run")
    p.add_argument("--config", help="YAML or TOML file of fine-tuning fields")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    p.add_argument("--overwrite", action="store_true", help="replace existing run folders")
    p.add_argument("--label-counts", metavar="COUNTS",
                   help="label-efficiency curves: fine-tune both arms at each of these numbers "
                        "of labeled examples (fixed nested subsets), e.g. 100,300,1000,3000,all")
    p.add_argument("--continued-model", metavar="PATH",
                   help="with --label-counts: a third arm, e.g. --model after continued "
                        "pretraining on in-domain text")
    add_dataclass_flags(p, FinetuneConfig, skip=("objective", "objective_args", "sampling",
                                                 "eval_batches", "from_scratch"),
                        choices={**CHOICES, "task": task_names()},
                        names={"out_dir": ("--out", "-o")})
    p.set_defaults(func=run)


def run(args) -> int:
    from ..tasks.experiment import format_experiment, pretrain_vs_scratch
    from ..tasks.finetune import FinetuneConfig
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    data = load_file(args.config) if args.config else {}
    data.update(flags_to_dict(args, FinetuneConfig))
    cfg = from_dict(FinetuneConfig, data, where=args.config or "command line")
    if "out_dir" not in data:
        cfg.out_dir = "runs/pretrain-vs-scratch"
    if args.continued_model and not args.label_counts:
        raise ConfigError("--continued-model is an arm of the label-efficiency curves: give "
                          "--label-counts too")
    if args.label_counts:
        from ..tasks.experiment import format_label_efficiency, label_efficiency, parse_label_counts
        summary = label_efficiency(cfg, seeds, parse_label_counts(args.label_counts),
                                   continued=args.continued_model, overwrite=args.overwrite)
        print(format_label_efficiency(summary))
        print(f"wrote {cfg.out_dir}/label_efficiency.json and label_efficiency.png")
        return 0
    print(format_experiment(pretrain_vs_scratch(cfg, seeds, overwrite=args.overwrite)))
    return 0

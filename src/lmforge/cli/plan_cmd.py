"""`lmforge plan`: parameters, FLOPs, memory per GPU (DDP vs FSDP) and time to a token budget."""

from __future__ import annotations

import argparse
import json

from ..config import add_dataclass_flags, flags_to_dict, from_dict
from ..models.config import CHOICES as MODEL_CHOICES
from ..models.config import ModelConfig
from .flags import examples
from ..training.plan import PlanConfig, format_plan, make_plan


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help="estimate FLOPs, memory per GPU and training time before scaling out",
        description="Given a model (a preset, a model or run folder, and/or architecture flags), "
                    "sequence length, global "
                    "batch, GPU memory and count, precision, token budget and MFU: parameters, "
                    "FLOPs per token (6N + 12*L*d*T), memory per GPU for DDP and FSDP, whether it "
                    "fits, and the time to the budget.",
        epilog=examples("lmforge plan --model smollm2-135m --gpus 8 --tokens 20e9",
                        "lmforge plan --model runs/shakespeare --gpus 1 --gpu A100 --gpu-memory 40",
                        "lmforge plan --model gpt2 --n-layer 48 --n-embd 1600 --json"))
    add_dataclass_flags(p, PlanConfig, skip=("model_args",),
                        choices={"precision": ("bf16", "fp32"), "parallel": ("ddp", "fsdp")})
    add_dataclass_flags(p, ModelConfig, group="model architecture (override the preset)",
                        skip=("arch",), choices=MODEL_CHOICES,
                        default_note="from the preset or model")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = flags_to_dict(args, PlanConfig)
    model_args = flags_to_dict(args, ModelConfig)
    if model_args:
        data["model_args"] = model_args
    result = make_plan(from_dict(PlanConfig, data, where="command line"))
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0

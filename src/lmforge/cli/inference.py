"""Flags and loading shared by the commands that run a trained model (`generate`, `score`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import DataError, LMForgeError
from ..models.io import load_model
from ..tokenization import load_tokenizer
from ..training.runtime import resolve_device

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def add_model_flags(p: argparse.ArgumentParser, precision: str) -> None:
    """--model, --tokenizer, --device and --precision (default ``precision``)."""
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model folder (lmforge or Hugging Face), training run folder, or .gguf file")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer.json or tokenizer folder, if not the one saved beside the model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help="auto = bf16 autocast where the hardware runs it fast, else fp32")


def load_model_and_tokenizer(args: argparse.Namespace) -> tuple[torch.nn.Module, Tokenizer]:
    """The model named by --model (lmforge or Hugging Face folder, or GGUF file) on --device,
    and --tokenizer or the tokenizer that comes with it."""
    return load_model_tokenizer_config(args)[:2]


def load_model_tokenizer_config(args: argparse.Namespace) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """:func:`load_model_and_tokenizer` plus the model's tokenizer_config (chat template)."""
    model, tokenizer, tok_cfg = load_model(args.model, device=resolve_device(args.device))
    if args.tokenizer:
        return model, load_tokenizer(args.tokenizer), tok_cfg
    if tokenizer is None:
        raise LMForgeError(f"no tokenizer found with the model in {args.model}; "
                           "pass --tokenizer PATH")
    return model, tokenizer, tok_cfg


def read_text_file(path: str, what: str) -> str:
    """A UTF-8 text file's content; a missing or unreadable file is a one-line DataError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None



def add_task_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that run a fine-tuned task model (`predict`, `evaluate`)."""
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


def load_task(args: argparse.Namespace):
    """(model in eval mode, its task objective, device, autocast context factory) for --model:
    a task head's own task, or the generative task and options its fine-tuning run recorded."""
    from ..tasks.inference import task_objective
    from ..training.runtime import autocast, resolve_precision
    model, tokenizer, tok_cfg = load_model_tokenizer_config(args)
    objective = task_objective(model, tokenizer, tok_cfg, args.model, args.task, args.task_args,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                               text_column=args.text_column, text_pair_column=args.text_pair_column,
                               label_column=getattr(args, "label_column", None), encoding=args.encoding)
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    return model.eval(), objective, device, lambda: autocast(device, precision)

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


"""Flags and loading shared by the commands that run a trained model (`generate`, `score`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError, LMForgeError
from ..hub import load_model
from ..tokenization import load_tokenizer
from ..runtime import GENERATION_PRECISION, INFERENCE_PRECISION, resolve_device
from .flags import task_names

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = {
    # scoring and analysis: fp32 by default, "auto" is autocast
    INFERENCE_PRECISION: "fp32 matches transformers' fp32 output; auto = bf16 autocast where the "
                         "hardware runs it fast (faster, may change the results)",
    # generation: the weights are cast once
    GENERATION_PRECISION: "the dtype the weights are cast to once: auto = whichever of fp32 and "
                          "bf16 decodes faster on this hardware, measured on the model (may "
                          "change greedy output); fp32 matches transformers' fp32 output",
}


def add_model_flags(p: argparse.ArgumentParser, precision: str = INFERENCE_PRECISION) -> None:
    """--model, --tokenizer, --device and --precision, whose default is ``precision``: fp32 for
    the scoring and analysis commands, "auto" for the generating ones (`generate`, `chat`)."""
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model folder (lmforge or Hugging Face), training run folder, or .gguf file")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer.json or tokenizer folder, if not the one saved beside the model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=PRECISION_HELP[precision])


def add_positional_model(p: argparse.ArgumentParser, help: str) -> None:
    """MODEL as a positional argument beside --model (which then is no longer required); read
    it back with :func:`model_argument`."""
    p.add_argument("model_path", nargs="?", metavar="MODEL", help=help)
    for action in p._actions:
        if action.dest == "model":
            action.required = False


def model_argument(args: argparse.Namespace) -> str:
    """The model given positionally or by --model (one of them, not two different ones)."""
    if args.model and args.model_path and args.model != args.model_path:
        raise LMForgeError(f"two models given: {args.model_path} and --model {args.model}")
    path = args.model or args.model_path
    if not path:
        raise LMForgeError("no model: pass MODEL (or --model MODEL)")
    return path


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The sampling flags of the generating commands (`generate`, `chat`), with the defaults of
    the Python API."""
    from ..generation.sampling import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="tokens to generate per completion")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens with this probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the text (CTRL)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, help="make sampling reproducible")


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


def fine_tuned_task(model: torch.nn.Module) -> str | None:
    """The task of a fine-tuned task model (a backbone plus a head), else None."""
    spec = getattr(model, "spec", None)
    return spec.task if spec is not None and hasattr(model, "backbone") else None


def has_lm_head(model: torch.nn.Module) -> bool:
    """Whether a plain model predicts tokens: a decoder's, LSTM's or encoder-decoder's LM head,
    an encoder's masked-LM head (a task model's backbone keeps the one it was pretrained with)."""
    return model.has_mlm_head() if model.is_encoder else getattr(model, "lm_head", None) is not None


def language_model(model: torch.nn.Module, args: argparse.Namespace, command: str,
                   needs: str, backbone_ok: bool = False) -> torch.nn.Module:
    """``model`` itself, or for a fine-tuned task model: its backbone, with a note on stderr,
    when ``backbone_ok`` (and, scoring or filling masks, the backbone kept its LM head), else
    one error naming the problem instead of a traceback deep in ``command``."""
    task = fine_tuned_task(model)
    if task is None:
        return model
    backbone, arch = model.backbone, model.backbone.kind
    article = "an" if arch[0] in "aeiou" else "a"
    what = f"{args.model} is a fine-tuned {task} model (a task head on {article} {arch})"
    if backbone_ok:
        print(f"lmforge {command}: note: {what}; using the backbone under its head",
              file=sys.stderr)
        return backbone
    raise ConfigError(f"{what}; {command} needs {needs}: use `lmforge predict --model "
                      f"{args.model}`, or the model it was fine-tuned from")


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
    p.add_argument("--task", choices=task_names(),
                   help="task of a model without a head (seq2seq, sft; default: the task its "
                        "fine-tuning run recorded)")
    p.add_argument("--max-new-tokens", type=int, dest="max_new_tokens",
                   help="seq2seq/sft: tokens to generate (default: the run's task option)")
    p.add_argument("--num-beams", type=int, dest="num_beams",
                   help="seq2seq/sft: beam search width, 1 = greedy (default: the run's)")
    p.add_argument("--task-args", dest="task_args",
                   help="seq2seq/sft task options as JSON, over those the run recorded")
    p.add_argument("--text-column", dest="text_column",
                   help="text column/field (default: the one the run trained on, or sentence, "
                        "text, sentence1, ...)")
    p.add_argument("--text-pair-column", dest="text_pair_column",
                   help="second text of a pair (default: sentence2, ... if present)")
    p.add_argument("--encoding", default="utf-8", help="encoding of the input file")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")


def load_task(args: argparse.Namespace):
    """(model in eval mode, its task objective, device, autocast context factory) for --model:
    a task head's own task, or the generative task and options its fine-tuning run recorded."""
    from ..tasks.inference import task_objective
    from ..runtime import autocast, resolve_precision
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, tokenizer, tok_cfg = load_model_tokenizer_config(args)
    objective = task_objective(model, tokenizer, tok_cfg, args.model, args.task, args.task_args,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                               text_column=args.text_column, text_pair_column=args.text_pair_column,
                               label_column=getattr(args, "label_column", None), encoding=args.encoding)
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    return model.eval(), objective, device, lambda: autocast(device, precision)

"""`lmforge models`: the named presets with their shapes and parameter counts."""

from __future__ import annotations

import torch

from ..models import PRESETS, build_model, preset
from .flags import examples


def register(sub) -> None:
    p = sub.add_parser("models", help="list model presets with parameter counts",
                       description="List model presets (use with `lmforge pretrain --model NAME`): "
                                   "kind (decoder, encoder, encoder-decoder, lstm), style, shape "
                                   "and parameters.",
                       epilog=examples("lmforge models"))
    p.set_defaults(func=run)


def run(args) -> int:
    rows = []
    for name in PRESETS:
        cfg = preset(name)
        with torch.device("meta"):  # count parameters without allocating them
            n = build_model(cfg).num_parameters()
        style = {"encoder": "bert", "lstm": "-",
                 "encoder-decoder": "t5" if cfg.pos_embedding == "relative" else "bart"}.get(
                     cfg.arch, "llama" if cfg.pos_embedding == "rope" else "gpt2")
        heads = f"{cfg.n_head}/{cfg.n_kv_head}" if cfg.n_kv_head != cfg.n_head else str(cfg.n_head)
        if cfg.arch == "lstm":
            heads = "-"
        rows.append((name, cfg.arch, style, cfg.n_layer, heads, cfg.n_embd, cfg.context_length,
                     cfg.vocab_size, f"{n / 1e6:.2f}M"))
    header = ("preset", "kind", "style", "layers", "heads", "d_model", "context", "vocab", "params")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print("\nparams are for the preset vocab; a new model's vocab follows its tokenizer.")
    return 0

"""`lmforge convert SRC OUT`: between lmforge model folders, Hugging Face folders and GGUF files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, DataError

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert models between lmforge, Hugging Face and GGUF",
        description="Read a model (lmforge model or run folder, Hugging Face folder with "
                    "safetensors weights, or .gguf file) with its tokenizer and write it in "
                    "another format. Hugging Face output loads with transformers' "
                    "AutoModel*/AutoTokenizer.from_pretrained; GGUF output (decoders only) with "
                    "llama.cpp tools and the gguf package.")
    p.add_argument("src", help="model folder, run folder or .gguf file")
    p.add_argument("out", help="output folder (lmforge, hf) or .gguf file")
    p.add_argument("--to", choices=("lmforge", "hf", "gguf"),
                   help="output format (default: hf for an lmforge source, else lmforge; "
                        "gguf when OUT ends in .gguf)")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16", "q8_0"),
                   help="weight type of the output (default: f32; gguf default f16; q8_0 gguf only)")
    p.add_argument("--architecture", metavar="CLASS",
                   help="Hugging Face class to record for an encoder (BertForPreTraining, "
                        "BertForMaskedLM, BertModel; default: the one holding every head)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..interop.hf import export_hf, is_hf_folder
    from ..interop.model_folder import save_pretrained
    from ..models.io import load_model

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise DataError(f"model not found: {src}")
    to = args.to or ("gguf" if out.suffix == ".gguf" else
                     "lmforge" if src.suffix == ".gguf" or is_hf_folder(src) else "hf")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if args.dtype == "q8_0" and to != "gguf":
        raise ConfigError("--dtype q8_0 is for --to gguf only")
    if args.architecture and to != "hf":
        raise ConfigError("--architecture is for --to hf only")
    model, tokenizer, tok_cfg = load_model(src)
    if to == "gguf":
        from ..interop.gguf import write_gguf
        if tokenizer is None:
            raise DataError(f"no tokenizer found with {src}; GGUF files embed one")
        write_gguf(model, tokenizer, out, dtype=args.dtype or "f16", tokenizer_config=tok_cfg)
    else:
        dtype = DTYPES[args.dtype or "f32"]
        if to == "hf":
            export_hf(model, tokenizer, out, tokenizer_config=tok_cfg,
                      architecture=args.architecture, dtype=dtype)
        else:
            save_pretrained(model.to(dtype), out, tokenizer, tokenizer_config=tok_cfg)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({to}, {model.config.arch}, {n / 1e6:.2f}M parameters)")
    return 0

"""`lmforge convert SRC OUT`: between lmforge model folders, Hugging Face folders and GGUF files."""

from __future__ import annotations

from ..errors import ConfigError
from .flags import add_out_flag, examples


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert models between lmforge, Hugging Face and GGUF",
        description="Read a model (lmforge model or run folder, Hugging Face folder with "
                    "safetensors weights, or .gguf file) with its tokenizer and write it in "
                    "another format. Hugging Face output loads with transformers' "
                    "AutoModel*/AutoTokenizer.from_pretrained; GGUF output (decoders only) with "
                    "llama.cpp tools and the gguf package.",
        epilog=examples("lmforge convert runs/shakespeare/model --out hf/shakespeare",
                        "lmforge convert runs/shakespeare --out shakespeare.gguf --dtype q8_0",
                        "lmforge convert models/gpt2 gpt2-lmforge --to lmforge"))
    p.add_argument("src", help="model folder, run folder or .gguf file")
    p.add_argument("out_positional", nargs="?", metavar="OUT",
                   help="output folder (lmforge, hf) or .gguf file (or give it as --out)")
    add_out_flag(p, metavar="OUT", help="output folder (lmforge, hf) or .gguf file")
    p.add_argument("--to", choices=("lmforge", "hf", "gguf"),
                   help="output format (default: hf for an lmforge source, else lmforge; "
                        "gguf when OUT ends in .gguf)")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16", "q8_0", "q4_0"),
                   help="weight type of the output (default: f32; gguf default f16; q8_0, q4_0 gguf only)")
    p.add_argument("--architecture", metavar="CLASS",
                   help="Hugging Face class to record for an encoder (BertForPreTraining, "
                        "BertForMaskedLM, BertModel; default: the one holding every head)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import convert_model
    if args.out and args.out_positional and args.out != args.out_positional:
        raise ConfigError("give the output once: OUT or --out, not both")
    if not (args.out or args.out_positional):
        raise ConfigError("no output given: pass --out OUT (a folder, or a .gguf file)")
    out, to, model = convert_model(args.src, args.out or args.out_positional, to=args.to,
                                   dtype=args.dtype, architecture=args.architecture,
                                   overwrite=args.overwrite)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({to}, {model.kind}, {n / 1e6:.2f}M parameters)")
    return 0

"""`lmforge serve`: an OpenAI-compatible HTTP API (continuous batching) and a web playground."""

from __future__ import annotations

import argparse

from ..config import add_dataclass_flags, flags_to_dict, options_from_dict
from ..errors import LMForgeError
from .flags import examples
from .inference import add_model_flags, add_positional_model, model_argument
from ..runtime import GENERATION_PRECISION


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="OpenAI-compatible API server and web playground",
        description="Serve a model over HTTP: OpenAI's /v1/completions, /v1/chat/completions "
                    "(server-sent-event streaming) and /v1/embeddings, with continuous "
                    "batching of concurrent requests; /v1/classify, /v1/token-classify, /v1/qa "
                    "and /v1/fill-mask for fine-tuned task models and encoders; /health, "
                    "/metrics (Prometheus), /docs, and a playground page at /. Binds "
                    "127.0.0.1 unless --host says otherwise (which then needs --api-key).",
        epilog=examples("lmforge serve runs/gpt",
                        "lmforge serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8080",
                        "lmforge serve runs/sst2 --host 0.0.0.0 --api-key $KEY",
                        "curl localhost:8000/v1/completions -H 'Content-Type: application/json' "
                        "-d '{\"prompt\": \"ROMEO:\", \"max_tokens\": 40}'"))
    add_model_flags(p, precision=GENERATION_PRECISION)
    add_positional_model(p, "the model to serve (or --model): a model or run folder, Hugging Face "
                         "folder, or .gguf file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback requires --api-key")
    p.add_argument("--port", type=int, default=8000, help="port to bind (0: any free port)")
    p.add_argument("--model-name", metavar="NAME",
                   help="the model's id in the API (default: the folder or file name)")
    from ..serving.app import ServeOptions
    add_dataclass_flags(p, ServeOptions, group="limits and access")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serving.app import ServeOptions
    from ..serving.served import ServedModel
    from ..serving.server import announce, check_host, serve

    path = model_argument(args)
    if not 0 <= args.port <= 65535:
        raise LMForgeError(f"--port must be in 0..65535, got {args.port}")
    options = options_from_dict(ServeOptions, flags_to_dict(args, ServeOptions), where="flag")
    options.validate()
    check_host(args.host, options)  # before the model loads: a refusal should be quick
    served = ServedModel.load(path, tokenizer=args.tokenizer, device=args.device,
                              precision=args.precision, max_batch=options.max_batch,
                              max_queue=options.max_queue, name=args.model_name)
    serve(served, args.host, args.port, options, ready=lambda url: announce(url, served.name))
    return 0

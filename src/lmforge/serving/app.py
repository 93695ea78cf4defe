"""The HTTP API: OpenAI's completions, chat completions and embeddings, lmforge's task endpoints,
health, Prometheus metrics and the web playground, as one FastAPI application.

    app = create_app(ServedModel.load("runs/gpt"), ServeOptions(api_key="secret"))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or `lmforge serve runs/gpt`
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, LMForgeError
from ..evaluation.embeddings import embed
from .engine import QueueFull, SamplingParams
from .metrics import CONTENT_TYPE, Metrics
from .protocol import (ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingRequest,
                       FillMaskRequest, QARequest, TextPair, TokenClassifyRequest)
from .served import ServedModel
from .streams import (APIError, Choice, Request, chat_logprobs, completion_logprobs, new_id,
                      sse)

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/", "/health", "/docs", "/openapi.json", "/favicon.ico")


@dataclass
class ServeOptions:
    """Limits and access of `lmforge serve` (flags of the same names)."""

    max_batch: int = field(default=16, metadata={"help": "sequences decoded together (continuous batching)"})
    max_queue: int = field(default=64, metadata={"help": "requests that may wait for a slot; "
                                                         "beyond, 429 with Retry-After"})
    max_tokens: int = field(default=4096, metadata={"help": "the most new tokens one request may ask for"})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body (413 beyond)"})
    request_timeout: float = field(default=600.0, metadata={"help": "seconds before a request is "
                                                                   "abandoned (504)"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' (needed to bind beyond 127.0.0.1)"})
    max_requests: int | None = field(default=None, metadata={
        "help": "stop after answering this many API requests (tests, smoke runs)"})

    def validate(self) -> None:
        for name in ("max_batch", "max_queue", "max_tokens", "max_body_bytes", "max_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if self.request_timeout <= 0:
            raise ConfigError(f"request-timeout must be > 0, got {self.request_timeout}")


# ---- middleware ------------------------------------------------------------------------------


class Guard:
    """Pure ASGI middleware (streams and disconnects pass through untouched): API key, body
    size, request metrics, and the count that stops the server after ``max_requests``."""

    def __init__(self, app, options: ServeOptions, on_limit, metrics: Metrics):
        self.app, self.options, self.on_limit, self.metrics = app, options, on_limit, metrics
        self.answered = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, t0, status = scope["path"], time.perf_counter(), [500]

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self._guarded(scope, receive, send_and_count)
        finally:
            if path.startswith("/v1/"):
                self.metrics.requests.labels(path, str(status[0])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
                self.answered += 1
                if self.options.max_requests and self.answered >= self.options.max_requests:
                    self.on_limit()

    async def _guarded(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.options.api_key
        if key and scope["path"] not in PUBLIC_PATHS:
            if headers.get("authorization", "") != f"Bearer {key}":
                return await _send_error(send, APIError(
                    401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    type="invalid_request_error", code="invalid_api_key"))
        limit = self.options.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_error(send, _too_large(limit))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
            return message
        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body exceeds {limit} bytes", code="body_too_large")


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc)
    return (f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid request"),
            loc[0] if loc else None)


# ---- the application -------------------------------------------------------------------------


def create_app(served: ServedModel, options: ServeOptions | None = None,
               on_limit=lambda: None) -> FastAPI:
    """The FastAPI app serving ``served``. ``on_limit`` is called once ``max_requests`` API
    requests have been answered (the server passes its shutdown)."""
    options = options or ServeOptions()
    options.validate()
    engine = served.engine
    metrics = Metrics(queue_depth=lambda: engine.queue_depth if engine else 0,
                      running=lambda: len(engine.running) if engine else 0)
    if engine is not None:
        engine.stats.on_step = lambda seconds, batch: metrics.step.observe(seconds)
        engine.stats.on_first_token = metrics.first_token.observe

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if engine is not None:
            engine.start()
        yield
        if engine is not None:
            engine.stop()

    app = FastAPI(title="lmforge", version="1", lifespan=lifespan,
                  description=f"OpenAI-compatible API serving {served.name}")
    app.add_middleware(Guard, options=options, on_limit=on_limit, metrics=metrics)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                       f"{exc.detail}", type=kind))

    @app.exception_handler(LMForgeError)
    async def _lmforge(request, exc: LMForgeError):
        return error_response(APIError(400, str(exc)))

    def check_model(name: str | None, capability: str) -> None:
        if name is not None and name != served.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves "
                                f"'{served.name}'", param="model", code="model_not_found")
        if capability not in served.capabilities:
            raise APIError(400, f"'{served.name}' cannot do {capability} (it can: "
                                f"{', '.join(served.capabilities) or 'nothing'})",
                           param="model", code="unsupported_capability")

    # ---- pages and service endpoints -----------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def playground():
        try:
            page = resources.files("lmforge.serving").joinpath("static/playground.html").read_text(encoding="utf-8")
        except FileNotFoundError:
            page = "<!doctype html><title>lmforge</title><p>lmforge serve: the playground page is missing."
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        if engine is not None and not engine.alive and engine.error is not None:
            raise APIError(503, "the decoding loop has stopped", type="server_error")
        return {"status": "ok", "model": served.name}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model",
                                            "created": created, "owned_by": "lmforge",
                                            "capabilities": served.capabilities,
                                            "lmforge": served.describe(options.max_tokens)}]}

    # ---- generation ----------------------------------------------------------------------
    def sampling(body, max_tokens: int, logprobs: int | None, index: int) -> SamplingParams:
        seed = body.seed + index if body.seed is not None else None
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=seed, presence_penalty=body.presence_penalty,
                              frequency_penalty=body.frequency_penalty,
                              stop_token_ids=frozenset() if body.ignore_eos else served.stop_ids,
                              logprobs=logprobs)

    def check_lengths(prompts: list[list[int]], max_tokens: int | None,
                      param: str = "prompt") -> int:
        """The max_tokens to use: the request's, else what fits; 400 when it cannot fit."""
        context = served.context_length
        longest = max(len(p) for p in prompts)
        if any(not p for p in prompts):
            raise APIError(400, "the prompt is empty", param="prompt")
        if max_tokens is not None and max_tokens > options.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most "
                                f"{options.max_tokens}", param="max_tokens")
        if longest >= context or (max_tokens is not None and longest + max_tokens > context):
            asked = f" + {max_tokens} to generate" if max_tokens is not None else ""
            raise APIError(400, f"this model's maximum context length is {context} tokens; the "
                                f"prompt has {longest}{asked}", param=param,
                           code="context_length_exceeded")
        return max_tokens if max_tokens is not None else min(options.max_tokens, context - longest)

    def start(prompts: list[list[int]], body, max_tokens: int, logprobs: int | None,
              http: HTTPRequest) -> Request:
        if logprobs is not None and not engine.logprobs:
            raise APIError(400, f"'{served.name}' ({served.model.kind}) is served one request at "
                                "a time without log-probabilities", param="logprobs")
        stops = [body.stop] if isinstance(body.stop, str) else [s for s in body.stop or () if s]
        choices, params = [], []
        for p, prompt in enumerate(prompts):
            for i in range(body.n):
                index = p * body.n + i
                choices.append(Choice.new(index, prompt, served.tokenizer, stops))
                params.append(sampling(body, max_tokens, logprobs, i))
        request = Request(choices, options.request_timeout, http.is_disconnected)
        if max_tokens == 0:  # nothing to generate: finished at once
            for choice in choices:
                choice.finish_reason = "length"
            return request
        try:
            seqs = engine.submit_many([c.prompt for c in choices], params,
                                      asyncio.get_running_loop(),
                                      [request.callback(c.index) for c in choices])
        except QueueFull as exc:
            metrics.rejected.inc()
            raise APIError(429, f"the server is busy ({exc}); retry shortly",
                           type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except RuntimeError as exc:
            raise APIError(503, str(exc), type="server_error") from None
        for choice, seq in zip(choices, seqs):
            choice.sequence = seq
        metrics.prompt_tokens.inc(sum(len(p) for p in prompts) * body.n)
        return request

    async def collect(request: Request) -> None:
        async for _ in request.updates():
            pass

    def finish_metrics(request: Request) -> None:
        metrics.generated_tokens.inc(sum(len(c.tokens) for c in request.choices))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        check_model(body.model, "completions")
        raw = body.prompt
        if isinstance(raw, str):
            texts, prompts = [raw], [served.encode(raw)]
        elif raw and all(isinstance(x, int) for x in raw):
            prompts = [list(raw)]
            texts = [served.tokenizer.decode(prompts[0], skip_special_tokens=False)]
        elif raw and all(isinstance(x, list) for x in raw):
            prompts = [list(x) for x in raw]
            texts = [served.tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
        else:
            texts = list(raw)
            prompts = [served.encode(t) for t in texts]
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        vocab = served.model.config.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        max_tokens = check_lengths(prompts, body.max_tokens)
        request = start(prompts, body, max_tokens, body.logprobs, http)
        rid, now = new_id("cmpl"), int(time.time())
        prompt_tokens = sum(len(p) for p in prompts)
        echo = {c.index: texts[c.index // body.n] for c in request.choices} if body.echo else {}

        def logprobs_of(choice, items, offset):
            if body.logprobs is None:
                return None
            return completion_logprobs(items, served.token_text, offset)

        if not body.stream:
            await collect(request)
            finish_metrics(request)
            return {"id": rid, "object": "text_completion", "created": now, "model": served.name,
                    "choices": [{"index": c.index, "text": echo.get(c.index, "") + c.text.text,
                                 "logprobs": logprobs_of(c, c.logprobs, len(echo.get(c.index, ""))),
                                 "finish_reason": c.finish_reason} for c in request.choices],
                    "usage": request.usage(prompt_tokens)}

        offsets = {c.index: len(echo.get(c.index, "")) for c in request.choices}

        def piece(choice, text, items):
            lp = logprobs_of(choice, items, offsets[choice.index])
            offsets[choice.index] += sum(len(t) for t in lp["tokens"]) if lp else 0
            return {"text": text}, lp

        head = {"id": rid, "object": "text_completion", "created": now, "model": served.name}
        return stream_response(request, head, body.stream_options, prompt_tokens,
                               [(i, {"text": t}) for i, t in echo.items()], piece, {"text": ""},
                               finish_metrics)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: HTTPRequest):
        check_model(body.model, "chat")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = served.encode(served.render_chat(messages))
        max_tokens = check_lengths([prompt], body.max_completion_tokens
                                   if body.max_completion_tokens is not None else body.max_tokens,
                                   param="messages")
        top = body.top_logprobs or 0
        request = start([prompt], body, max_tokens, top if body.logprobs else None, http)
        rid, now = new_id("chatcmpl"), int(time.time())

        def logprobs_of(items):
            return chat_logprobs(items, served.token_text) if body.logprobs else None

        if not body.stream:
            await collect(request)
            finish_metrics(request)
            return {"id": rid, "object": "chat.completion", "created": now, "model": served.name,
                    "system_fingerprint": None,
                    "choices": [{"index": c.index,
                                 "message": {"role": "assistant", "content": c.text.text,
                                             "refusal": None},
                                 "logprobs": logprobs_of(c.logprobs),
                                 "finish_reason": c.finish_reason} for c in request.choices],
                    "usage": request.usage(len(prompt))}

        head = {"id": rid, "object": "chat.completion.chunk", "created": now,
                "model": served.name, "system_fingerprint": None}
        return stream_response(
            request, head, body.stream_options, len(prompt),
            [(c.index, {"delta": {"role": "assistant", "content": ""}}) for c in request.choices],
            lambda choice, text, items: ({"delta": {"content": text}}, logprobs_of(items)),
            {"delta": {}}, finish_metrics)

    # ---- embeddings and task endpoints (one call at a time, off the event loop) ----------
    async def aux(fn, *args, **kwargs):
        def locked():
            with served.aux_lock:
                return fn(*args, **kwargs)
        return await run_in_threadpool(locked)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        check_model(body.model, "embeddings")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or any(not t for t in texts):
            raise APIError(400, "input must be a non-empty text or list of non-empty texts",
                           param="input")
        vectors = await aux(_embed, served, texts)
        tokens = sum(len(served.encode(t)) for t in texts)
        return {"object": "list", "model": served.name,
                "data": [{"object": "embedding", "index": i,
                          "embedding": _base64(v) if body.encoding_format == "base64" else v}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        check_model(body.model, "classify")
        items = body.input if isinstance(body.input, list) else [body.input]
        if not items:
            raise APIError(400, "input is empty", param="input")
        inputs = [i.model_dump() if isinstance(i, TextPair) else i for i in items]
        results = await aux(served.pipelines["classify"], inputs, top_k=None)
        return {"object": "list", "model": served.name,
                "data": [{"index": i, "label": r[0]["label"], "score": r[0]["score"], "labels": r}
                         for i, r in enumerate(results)]}

    @app.post("/v1/token-classify")
    async def token_classify(body: TokenClassifyRequest):
        check_model(body.model, "token-classify")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or any(not t.strip() for t in texts):
            raise APIError(400, "input must be non-empty text", param="input")
        results = await aux(served.pipelines["token-classify"], texts)
        return {"object": "list", "model": served.name,
                "data": [{"index": i, "entities": r} for i, r in enumerate(results)]}

    @app.post("/v1/qa")
    async def qa(body: QARequest):
        check_model(body.model, "qa")
        if isinstance(body.question, str) != isinstance(body.context, str):
            raise APIError(400, "question and context must both be texts or both lists",
                           param="question")
        result = await aux(served.pipelines["qa"], question=body.question, context=body.context)
        if isinstance(result, dict):
            return {**result, "model": served.name}
        return {"object": "list", "model": served.name,
                "data": [{"index": i, **r} for i, r in enumerate(result)]}

    @app.post("/v1/fill-mask")
    async def fill_mask(body: FillMaskRequest):
        check_model(body.model, "fill-mask")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        pipe = served.pipelines["fill-mask"]
        results = [await aux(pipe, t, top_k=body.top_k) for t in texts]
        return {"object": "list", "model": served.name,
                "mask_token": served.describe()["mask_token"],
                "data": [{"index": i, "masks": _per_mask(r)} for i, r in enumerate(results)]}

    app.state.served, app.state.options, app.state.metrics = served, options, metrics
    return app


def stream_response(request: Request, head: dict, stream_options, prompt_tokens: int,
                    openings: list[tuple[int, dict]], piece, closing: dict,
                    on_finish) -> StreamingResponse:
    """Server-sent events in OpenAI's chunk format, for completions and chat alike: ``head``
    (id, object, created, model...) on every chunk; ``openings`` (index, body) first; then each
    update's ``piece(choice, text, logprobs) -> (body, logprobs)``; a ``closing`` body with the
    choice's finish_reason once it is done (also for choices done before any update); the usage
    chunk when ``stream_options.include_usage``; ``[DONE]``. An APIError mid-stream is sent as
    an error event."""
    include_usage = bool(stream_options and stream_options.include_usage)

    def chunk(index, body, logprobs=None, finish=None):
        out = {**head, "choices": [{"index": index, **body, "logprobs": logprobs,
                                    "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async def events():
        try:
            for index, body in openings:
                yield sse(chunk(index, body))
            closed = set()
            async for choice, text, items in request.updates():
                if text or items:
                    body, logprobs = piece(choice, text, items)
                    yield sse(chunk(choice.index, body, logprobs))
                if choice.done:
                    closed.add(choice.index)
                    yield sse(chunk(choice.index, closing, None, choice.finish_reason))
            for choice in request.choices:  # finished before any update (max_tokens 0)
                if choice.index not in closed:
                    yield sse(chunk(choice.index, closing, None, choice.finish_reason))
            on_finish(request)
            if include_usage:
                yield sse({**head, "choices": [], "usage": request.usage(prompt_tokens)})
        except APIError as err:
            yield sse(err.body())
        yield sse("[DONE]")
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _per_mask(result) -> list:
    """fill-mask results as one list of guesses per mask (the pipeline flattens a single mask)."""
    return result if result and isinstance(result[0], list) else [result]


def _base64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _embed(served: ServedModel, texts: list[str]) -> list[list[float]]:
    return embed(served.model, served.tokenizer, texts).tolist()


def options_from(values: dict) -> ServeOptions:
    """ServeOptions from a dict of given values (the CLI's flags)."""
    names = {f.name for f in dataclasses.fields(ServeOptions)}
    return ServeOptions(**{k: v for k, v in values.items() if k in names})

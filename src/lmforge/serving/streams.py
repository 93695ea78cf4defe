"""From engine token events to OpenAI responses: one :class:`Choice` per completion turns its
tokens into text (whole UTF-8 characters, cut before any stop string) and log-probabilities;
:class:`Request` drives the choices of one HTTP request, as one JSON body or as server-sent
events in OpenAI's chunk format.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..generation.text import IncrementalDecoder, CompletionText
from .engine import Sequence, TokenEvent


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class _Deltas:
    """A text sink collecting what is safe to show since the last take()."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        text, self.parts = "".join(self.parts), []
        return text


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Choice:
    """One completion being produced."""

    index: int
    prompt: list[int]
    text: CompletionText
    deltas: _Deltas
    sequence: Sequence | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    @classmethod
    def new(cls, index: int, prompt: list[int], tokenizer, stop_strings: list[str]) -> "Choice":
        deltas = _Deltas()
        return cls(index, prompt, CompletionText(IncrementalDecoder(tokenizer, prompt),
                                                  stop_strings, deltas), deltas)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def apply(self, events: list[TokenEvent]) -> tuple[str, list[TokenLogprob]]:
        """Take in a step's events; return the new text and log-probabilities to send."""
        start = len(self.logprobs)
        for ev in events:
            if self.done:
                break
            if ev.token_id is None:
                self.finish_reason = ev.finish_reason
                self.text.finish()
                break
            self.tokens.append(ev.token_id)
            if ev.logprob is not None:
                self.logprobs.append(TokenLogprob(ev.token_id, ev.logprob, ev.top or []))
            if self.text.add(ev.token_id):  # a stop string: the text ends before it
                self.finish_reason = "stop"
                self.text.finish()
                if self.sequence is not None:
                    self.sequence.cancel()
        return self.deltas.take(), self.logprobs[start:]


class Request:
    """The choices of one request and the queue their engine events arrive on."""

    def __init__(self, choices: list[Choice], timeout: float,
                 is_disconnected: Callable[[], "asyncio.Future[bool]"]):
        self.choices = choices
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.is_disconnected = is_disconnected

    def callback(self, index: int) -> Callable[[list[TokenEvent]], None]:
        return lambda events: self.queue.put_nowait((index, events))

    def cancel(self) -> None:
        for choice in self.choices:
            if choice.sequence is not None:
                choice.sequence.cancel()

    async def updates(self) -> AsyncIterator[tuple[Choice, str, list[TokenLogprob]]]:
        """(choice, new text, new log-probabilities) as events arrive, until every choice is
        done. Raises APIError on timeout or a failed decoding loop; a client that went away
        cancels its sequences (checked every second while waiting)."""
        checked = time.monotonic()
        try:
            while not all(c.done for c in self.choices):
                now = time.monotonic()
                if now - checked > 1.0:  # a non-streaming client may leave while tokens flow
                    checked = now
                    if await self.is_disconnected():
                        raise asyncio.CancelledError()
                left = self.deadline - now
                if left <= 0:
                    raise APIError(504, f"the request took longer than {self.timeout:g} s",
                                   type="timeout", code="timeout")
                try:
                    index, events = await asyncio.wait_for(self.queue.get(), min(left, 1.0))
                except TimeoutError:
                    if await self.is_disconnected():
                        raise asyncio.CancelledError() from None
                    continue
                choice = self.choices[index]
                if choice.done:
                    continue
                text, logprobs = choice.apply(events)
                if choice.finish_reason in ("error", "cancelled"):
                    raise APIError(500, "the decoding loop failed; see the server log",
                                   type="server_error")
                yield choice, text, logprobs
        finally:
            self.cancel()  # no-op for finished sequences; frees slots of abandoned ones

    def usage(self, prompt_tokens: int) -> dict:
        completion = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


# ---- log-probabilities in OpenAI's two formats ---------------------------------------------


def completion_logprobs(items: list[TokenLogprob], token_text: Callable[[int], str],
                        offset: int) -> dict:
    """/v1/completions' {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; ``offset``
    is where the first token's text starts in the returned text."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for item in items:
        text = token_text(item.token_id)
        out["tokens"].append(text)
        out["token_logprobs"].append(item.logprob)
        out["top_logprobs"].append({token_text(t): lp for t, lp in item.top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(items: list[TokenLogprob], token_text: Callable[[int], str]) -> dict:
    """/v1/chat/completions' {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}."""
    def entry(token_id: int, logprob: float) -> dict:
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
    return {"content": [{**entry(i.token_id, i.logprob),
                         "top_logprobs": [entry(t, lp) for t, lp in i.top]} for i in items],
            "refusal": None}

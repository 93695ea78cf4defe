"""Request bodies of the HTTP API, in OpenAI's field names (pydantic models: FastAPI validates
them and publishes them in the OpenAPI schema at /openapi.json).

Unknown fields are accepted and ignored, as OpenAI-compatible servers do, so clients that send
newer parameters (``user``, ``logit_bias`` ...) keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = Field(None, description="the served model's id (see /v1/models); "
                                                "optional: this server has one model")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0 = off)")
    seed: int | None = Field(None, description="makes sampling reproducible")
    stop: str | list[str] | None = Field(None, description="stop strings (cut before them)")
    n: int = Field(1, ge=1, le=16, description="completions per prompt")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="keep generating past EOS/end-of-turn tokens "
                                                "(vLLM's extension; load tests)")


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="text, texts, or token ids")
    max_tokens: int | None = Field(16, ge=0, description="new tokens per completion")
    logprobs: int | None = Field(None, ge=0, le=20,
                                 description="log-probabilities of each token and of this many "
                                             "most likely alternatives")
    echo: bool = Field(False, description="prepend the prompt to the completion text")


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as text (OpenAI's list of parts: its text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content
                           if part.get("type", "text") == "text")
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(_Body):
    model: str | None = None
    input: str | list[str] = Field(..., description="a text or a list of texts")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes (what the openai client asks for)")


class TextPair(BaseModel):
    text: str
    text_pair: str | None = None


class ClassifyRequest(_Body):
    model: str | None = None
    input: str | TextPair | list[str | TextPair]


class TokenClassifyRequest(_Body):
    model: str | None = None
    input: str | list[str]


class QARequest(_Body):
    model: str | None = None
    question: str | list[str]
    context: str | list[str]


class FillMaskRequest(_Body):
    model: str | None = None
    input: str | list[str]
    top_k: int = Field(5, ge=1, le=100)

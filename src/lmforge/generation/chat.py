"""Chat with an instruction-tuned model: a conversation rendered with the model's own chat
template (tokenizer_config.json's or GGUF's ``chat_template``), the reply generated up to the
model's end-of-turn token.

    reply = generate_chat(model, tok, tok_cfg, [{"role": "user", "content": "Hi!"}], greedy=True)
    chat = ChatSession(model, tok, tok_cfg, system="Answer in one sentence.")
    chat.send("What is the capital of France?", stream_to=sys.stdout)
    chat.send("And of Italy?")      # the history goes with each turn
    chat.save("chat.json")          # {"messages": [...]}, OpenAI's message format
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, DataError
from ..files import atomic_write_text
from ..runtime import GENERATION_PRECISION
from ..tokenization.chat_template import ChatTemplate, chat_template_for
from .sampling import DEFAULT_MAX_NEW_TOKENS
from .text import TextCompletion, TextSink, encode_prompt, generate_text

log = logging.getLogger(__name__)


def require_chat_template(tokenizer: Tokenizer, tokenizer_config: dict | None,
                          what: str = "the model") -> ChatTemplate:
    """The model's chat template; a model without one is one ConfigError (a base model has no
    chat format to guess)."""
    template = chat_template_for(tokenizer, tokenizer_config or {})
    if template is None:
        raise ConfigError(f"{what} has no chat template (no chat_template in its "
                          "tokenizer_config.json or GGUF metadata): chat needs an "
                          "instruction-tuned model; use plain generation instead")
    return template


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """``messages`` as a list of {"role", "content"} dicts of strings; anything else is one
    DataError naming the first bad message."""
    if isinstance(messages, (str, dict)) or not messages:
        raise DataError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages, 1):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise DataError(f"message {i} must be a dict with a 'role' and a 'content' string, "
                            f"got {str(m)[:60]}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def chat_prompt(tokenizer: Tokenizer, tokenizer_config: dict | None, messages: Sequence[dict],
                what: str = "the model") -> str:
    """The text the model continues to answer ``messages``: the conversation rendered with its
    chat template and the opening of an assistant turn (``add_generation_prompt``)."""
    template = require_chat_template(tokenizer, tokenizer_config, what)
    return template.render(check_messages(messages), add_generation_prompt=True)


def generate_chat(model: torch.nn.Module, tokenizer: Tokenizer, tokenizer_config: dict | None,
                  messages: Sequence[dict], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  **kwargs) -> TextCompletion:
    """The assistant's reply to ``messages`` (OpenAI's format: dicts with "role" — "system",
    "user", "assistant" — and "content"), rendered with the model's chat template. Generation
    stops at the model's end-of-turn or EOS token (finish_reason "stop"), which the text
    excludes. ``kwargs`` are :func:`~lmforge.generation.generate_text`'s (temperature, top_k,
    top_p, greedy, seed, stop_strings, stream_to, precision, ...). A model without a chat
    template is a ConfigError."""
    prompt = chat_prompt(tokenizer, tokenizer_config, messages)
    return generate_text(model, tokenizer, prompt, max_new_tokens,
                         tokenizer_config=tokenizer_config, **kwargs)


class _Recorder:
    """A text sink that keeps what it was sent and passes it on (the part of a reply that was
    streamed before Ctrl-C stopped it)."""

    def __init__(self, sink: TextSink | None):
        self.sink, self.text = sink, ""

    def write(self, text: str) -> None:
        self.text += text
        if self.sink is not None:
            self.sink.write(text)

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()


class ChatSession:
    """A conversation with a chat model that keeps its history across turns.

    ``send(text)`` adds a user turn, generates the reply (streamed to ``stream_to`` if given)
    and adds it; ``messages`` is the conversation so far (the system message first, if any);
    ``reset()`` forgets the turns and keeps the system prompt; ``save(path)`` writes
    ``{"messages": [...]}`` atomically, and ``messages=`` restores a saved conversation.
    When the conversation and room for the reply (``max_new_tokens``, at most half the
    context) no longer fit the model's context, the oldest turns are dropped and ``notify`` is
    told. Sampling options (temperature, top_k, top_p, repetition_penalty, greedy, seed,
    stop_strings, compile) are :func:`~lmforge.generation.generate_text`'s.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, tokenizer_config: dict | None,
                 system: str | None = None, messages: Sequence[dict] | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 precision: str = GENERATION_PRECISION,
                 notify: Callable[[str], None] | None = None, **sampling):
        self.model, self.tokenizer, self.tokenizer_config = model, tokenizer, tokenizer_config or {}
        self.template = require_chat_template(tokenizer, tokenizer_config)
        self.max_new_tokens, self.precision, self.sampling = max_new_tokens, precision, sampling
        self.notify = notify or log.warning
        self.system = system
        self.turns: list[dict] = []
        if messages:
            history = check_messages(messages)
            if history[0]["role"] == "system":
                self.system = history.pop(0)["content"]
            self.turns = history
        self.last: TextCompletion | None = None  # the latest reply, with its finish_reason

    @property
    def messages(self) -> list[dict]:
        """The conversation so far in OpenAI's format (a copy)."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [dict(m) for m in self.turns]

    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.turns = []
        self.last = None

    def save(self, path: str | Path) -> Path:
        """Write ``{"messages": [...]}`` to ``path`` (JSON, atomically; missing folders are made)."""
        text = json.dumps({"messages": self.messages}, ensure_ascii=False, indent=2) + "\n"
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return atomic_write_text(path, text)
        except OSError as exc:
            raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None

    def send(self, text: str, stream_to: TextSink | None = None) -> str:
        """Add the user turn ``text``, generate the reply, add it and return it. If Ctrl-C
        interrupts the reply, the part generated so far is kept as the reply and the
        KeyboardInterrupt is raised again."""
        if not isinstance(text, str) or not text.strip():
            raise DataError("a chat message needs some text")
        self.turns.append({"role": "user", "content": text})
        self._fit_context()
        recorder = _Recorder(stream_to)
        try:
            done = generate_chat(self.model, self.tokenizer, self.tokenizer_config, self.messages,
                                 self.max_new_tokens, stream_to=recorder, precision=self.precision,
                                 **self.sampling)
        except KeyboardInterrupt:
            self.turns.append({"role": "assistant", "content": recorder.text})
            raise
        except BaseException:
            self.turns.pop()  # a refused turn leaves the history as it was
            raise
        self.turns.append({"role": "assistant", "content": done.text})
        self.last = done
        return done.text

    def _prompt_tokens(self) -> int:
        text = self.template.render(self.messages, add_generation_prompt=True)
        return len(encode_prompt(self.tokenizer, text))

    def _fit_context(self) -> None:
        """Drop the oldest turns (a user message and the reply to it) while the prompt and the
        room for the reply exceed the context; a recurrent model has no context to fit."""
        if self.model.recurrent:
            return
        context = self.model.config.context_length
        budget = context - min(self.max_new_tokens, context // 2)
        dropped = 0
        while len(self.turns) > 1 and self._prompt_tokens() > budget:
            del self.turns[:2 if len(self.turns) > 2 else 1]
            dropped += 1
        if dropped:
            self.notify(f"the conversation no longer fit the model's context ({context} tokens): "
                        f"dropped its oldest {dropped} turn{'s' if dropped > 1 else ''}")

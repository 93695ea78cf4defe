"""Chat templates: a conversation rendered by the model's Jinja template exactly as
transformers' ``apply_chat_template`` renders it, and where in that text the assistant speaks
(what instruction tuning trains on).

    template = chat_template_for(tokenizer, tokenizer_config)   # None: the model has none
    text = template.render(messages, add_generation_prompt=True)
    stop_token_ids(tokenizer, tokenizer_config)                 # {0, 2}: EOS and <|im_end|>
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from ..errors import ConfigError, DataError
from .info import eos_token_id

# ChatML, the template transformers used for models without one.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                      "cls_token", "mask_token")


class ChatTemplate:
    """A Jinja chat template rendered as transformers renders it: a sandboxed environment
    (``ImmutableSandboxedEnvironment``, trim_blocks, lstrip_blocks, loop controls), the
    ``raise_exception`` and ``strftime_now`` helpers, a ``tojson`` that keeps non-ASCII text,
    ``{% generation %}`` blocks accepted, and the special tokens (bos_token, eos_token, ...) as
    variables."""

    def __init__(self, source: str, special_tokens: dict[str, str]):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class GenerationBlock(jinja2.ext.Extension):
            """``{% generation %}...{% endgeneration %}`` marks assistant text; render its body."""

            tags = {"generation"}

            def parse(self, parser):
                next(parser.stream)
                return parser.parse_statements(("name:endgeneration",), drop_needle=True)

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[GenerationBlock, jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"the chat template does not compile: {exc}") from None
        self.source, self.special_tokens = source, special_tokens

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        import jinja2
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special_tokens)
        except jinja2.TemplateError as exc:
            raise DataError(f"the chat template refused the conversation: {exc}") from None


    def end_of_turn(self, tokenizer) -> str:
        """What the template writes after an assistant message's content (``<|im_end|>``,
        ``<|eot_id|>``, ``</s>``...): the tokenizer's special token it starts with, else that
        text stripped; "" when it writes nothing."""
        probe = "lmforge-probe-response"
        try:
            text = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}])
        except DataError:
            return ""
        tail = text[text.index(probe) + len(probe):].lstrip() if probe in text else ""
        specials = sorted((t.content for t in tokenizer.get_added_tokens_decoder().values()),
                          key=len, reverse=True)
        return next((t for t in specials if t and tail.startswith(t)), tail.rstrip())

    @staticmethod
    def assistant_spans(text: str, messages: list[dict], end_of_turn: str) -> list[tuple[int, int]]:
        """Character spans of the rendered ``text`` that carry a loss: each assistant message's
        content and the ``end_of_turn`` marker after it. Messages are found in order, so an
        answer that also appears in the prompt is matched where the assistant says it."""
        spans, cursor = [], 0
        eot = re.compile(r"\s*" + re.escape(end_of_turn)) if end_of_turn else None
        for m in messages:
            content = m["content"].strip()  # templates may trim the content
            at = text.find(content, cursor)
            if at < 0:
                raise DataError(f"the chat template does not write the {m['role']} message "
                                f"verbatim ({content[:40]!r})")
            end = at + len(content)
            if m["role"] == "assistant":
                match = eot.match(text, end) if eot else None
                if match:
                    end = match.end()
                spans.append((at, end))
            cursor = end
        return spans


def special_token_strings(tokenizer_config: dict, tokenizer, eos_id: int | None) -> dict[str, str]:
    """bos_token, eos_token, ... as strings (tokenizer_config values may be {"content": ...});
    eos_token falls back to the tokenizer's end-of-text token."""
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = tokenizer_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    if "eos_token" not in out and eos_id is not None:
        out["eos_token"] = tokenizer.id_to_token(eos_id)
    return out


def chat_template_for(tokenizer, tokenizer_config: dict) -> ChatTemplate | None:
    """The model's chat template (tokenizer_config.json's or GGUF's ``chat_template``) with its
    special tokens, or None when the model has none (a base model: no chat format to guess)."""
    source = tokenizer_config.get("chat_template")
    if isinstance(source, list):  # transformers' named templates: [{"name", "template"}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or next(iter(named.values()), None)
    if not isinstance(source, str) or not source.strip():
        return None
    return ChatTemplate(source, special_token_strings(tokenizer_config, tokenizer, eos_token_id(tokenizer)))


def stop_token_ids(tokenizer, tokenizer_config: dict) -> set[int]:
    """Ids that end a generation: the tokenizer's end-of-text token, the EOS token of its config
    (GGUF ``tokenizer.ggml.eos_token_id`` arrives as ``eos_token``) and the chat template's
    end-of-turn token (``<|im_end|>``, ``<|eot_id|>``), where they are single tokens."""
    ids = set()
    eos = eos_token_id(tokenizer)
    if eos is not None:
        ids.add(eos)
    names = [special_token_strings(tokenizer_config, tokenizer, None).get("eos_token")]
    template = chat_template_for(tokenizer, tokenizer_config)
    if template is not None:
        names.append(template.end_of_turn(tokenizer))
    for name in names:
        token = tokenizer.token_to_id(name) if name else None
        if token is not None:
            ids.add(token)
    return ids

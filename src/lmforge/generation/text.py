"""Text in, text out: prompts are encoded, completions decoded as tokens arrive, cut at stop
strings, and optionally streamed to a file object.

    completions = generate_text(model, tok, ["ROMEO:"], max_new_tokens=100, stop_strings=["\\n\\n"],
                                stream_to=sys.stdout)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

import torch
from tokenizers import Tokenizer

from ..errors import DataError
from ..runtime import GENERATION_PRECISION
from ..tokenization import encode
from ..tokenization.chat_template import stop_token_ids as model_stop_token_ids
from .sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from .seq2seq import generate_tokens

INCOMPLETE = "\ufffd"  # what a decoder gives for a UTF-8 character cut in the middle


class TextSink(Protocol):
    """Where streamed text goes: a file object such as sys.stdout or io.StringIO."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


@dataclass
class TextCompletion:
    """A decoded completion (cut before any stop string), its generated token ids and why
    generation ended ("stop", "length" or "context", as in :class:`Completion`)."""

    text: str
    token_ids: list[int]
    finish_reason: str

    def __str__(self) -> str:  # print(completion) shows the text; repr keeps every field
        return self.text


class IncrementalDecoder:
    """Decodes tokens one at a time, returning only text made of complete characters.

    Byte-level BPE can split one UTF-8 character over several tokens, and decoding such a prefix
    gives U+FFFD, so text is held back until it decodes cleanly. Each step decodes a short window
    of already-emitted tokens together with the new ones and returns the difference (the
    approach of Hugging Face's text-generation-inference): decoders that look at the previous
    token, such as Metaspace's leading space, stay right, and the cost per token does not grow
    with the length of the text.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], window: int = 5):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.prefix_offset = max(len(self.ids) - window, 0)  # start of the decoded window
        self.read_offset = len(self.ids)  # tokens before this are already emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ("" while a character is unfinished)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back, incomplete characters included (at the end of a sequence)."""
        return self._advance(final=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _advance(self, final: bool) -> str:
        emitted = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(emitted) or (text.endswith(INCOMPLETE) and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(emitted):]


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` (no special tokens); a tokenizer failure is a DataError."""
    try:
        return encode(tokenizer, prompt)
    except Exception as exc:  # the Rust side raises a bare Exception
        raise DataError(f"cannot encode prompt {prompt[:40]!r}: {exc}") from None


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop string: that much
    must not be streamed yet, since the next token may complete the stop string."""
    longest = min(len(text), max((len(s) for s in stop_strings), default=1) - 1)
    for size in range(longest, 0, -1):
        if any(s.startswith(text[-size:]) for s in stop_strings):
            return size
    return 0


class CompletionText:
    """One sequence's decoded text: grows token by token, is cut at the first stop string, and
    writes what is safe to show to ``stream_to``."""

    def __init__(self, decoder: IncrementalDecoder, stop_strings: Sequence[str],
                 stream_to: TextSink | None):
        self.decoder = decoder
        self.stop_strings = stop_strings
        self.longest_stop = max((len(s) for s in stop_strings), default=0)
        self.stream_to = stream_to
        self.text = ""
        self.stopped = False
        self.shown = 0  # characters already written to stream_to

    def add(self, token_id: int) -> bool:
        """Append a token's text; True once a stop string has appeared."""
        self._extend(self.decoder.push(token_id))
        return self.stopped

    def finish(self) -> str:
        """Flush the decoder (unless stopped) and the stream; the final text."""
        if not self.stopped:
            self._extend(self.decoder.flush())
        self._show(len(self.text))
        return self.text

    def _extend(self, piece: str) -> None:
        if not piece:
            return
        # Earlier text held no stop string, so a match must end inside the new piece.
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        found = [i for i in (self.text.find(s, start) for s in self.stop_strings) if i >= 0]
        if found:
            self.text = self.text[:min(found)]
            self.stopped = True
        self._show(len(self.text) if self.stopped else
                   len(self.text) - held_back(self.text, self.stop_strings))

    def _show(self, upto: int) -> None:
        if self.stream_to is not None and upto > self.shown:
            self.stream_to.write(self.text[self.shown:upto])
            self.stream_to.flush()
            self.shown = upto


@overload
def generate_text(model: torch.nn.Module, tokenizer: Tokenizer, prompts: str, max_new_tokens: int,
                  **kwargs) -> TextCompletion: ...


@overload
def generate_text(model: torch.nn.Module, tokenizer: Tokenizer, prompts: Sequence[str],
                  max_new_tokens: int, **kwargs) -> list[TextCompletion]: ...


def generate_text(model: torch.nn.Module, tokenizer: Tokenizer, prompts: str | Sequence[str],
                  max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE,
                  top_k: int | None = DEFAULT_TOP_K,
                  top_p: float | None = None, repetition_penalty: float = 1.0,
                  greedy: bool = False, stop_strings: Sequence[str] | None = None,
                  stop_token_ids: Iterable[int] | None = None, seed: int | None = None,
                  stream_to: TextSink | None = None, precision: str = GENERATION_PRECISION,
                  num_beams: int = 1, length_penalty: float = 1.0, compile: bool = False,
                  tokenizer_config: dict | None = None) -> TextCompletion | list[TextCompletion]:
    """Continue a text prompt (a str: one :class:`TextCompletion`) or each of a list of prompts
    (a list of them); the completion excludes the prompt. An encoder-decoder model
    reads the prompt as its source and the completion is its output.

    Prompts are encoded without special tokens (special tokens written in the text, such as a
    chat template's ``<|im_start|>``, are read as themselves). Generation of a sequence stops at
    the tokenizer's end-of-text token, the EOS and end-of-turn tokens of ``tokenizer_config``
    (the model's tokenizer_config.json or GGUF metadata, as ``lmforge.hub.load_model`` returns
    it: ``<|im_end|>`` for ChatML models), any ``stop_token_ids``, or once its text contains one
    of ``stop_strings``; the text is cut just before the first stop string. ``stream_to`` (one
    prompt only) receives the completion as it is produced, holding back any partial UTF-8
    character or possible start of a stop string until it is settled. Sampling arguments are
    those of :func:`~lmforge.generation.generate`; ``num_beams`` > 1 runs beam search
    (``length_penalty``), whose text reaches ``stream_to`` once the best hypothesis is chosen.
    ``compile``: a decoder's sampling/greedy steps run compiled (see ``generate``).
    ``precision``: "auto" (the default) casts the weights once to the faster of fp32 and bf16 on
    this hardware, measured; "fp32" gives transformers' fp32 output (see ``generate``).
    """
    if isinstance(prompts, str):  # one prompt, not one per character
        return generate_text(model, tokenizer, [prompts], max_new_tokens, temperature, top_k, top_p,
                             repetition_penalty, greedy, stop_strings, stop_token_ids, seed,
                             stream_to, precision, num_beams, length_penalty, compile,
                             tokenizer_config)[0]
    if stream_to is not None and len(prompts) != 1:
        raise ValueError("stream_to needs exactly one prompt")
    stop_strings = [s for s in (stop_strings or ()) if s]
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    seq2seq = model.is_seq2seq
    texts = [CompletionText(IncrementalDecoder(tokenizer, [] if seq2seq else ids), stop_strings,
                             stream_to) for ids in encoded]
    stop_ids = set(stop_token_ids or ()) | model_stop_token_ids(tokenizer, tokenizer_config or {})
    completions = generate_tokens(model, encoded, max_new_tokens, num_beams=num_beams,
                                  length_penalty=length_penalty, temperature=temperature,
                                  top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                  greedy=greedy, stop_token_ids=stop_ids, seed=seed,
                                  stream=lambda row, token_id: texts[row].add(token_id),
                                  precision=precision, compile=compile)
    return [TextCompletion(text.finish(), done.tokens, done.finish_reason)
            for text, done in zip(texts, completions)]

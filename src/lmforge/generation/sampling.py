"""Token generation for decoder language models: KV-cached decoding of a batch of prompts, and
the logits processors (repetition penalty, temperature, top-k, top-p) that shape each step.

    completions = generate(model, [[464, 3290], [15496]], max_new_tokens=50, top_k=50, seed=0)
    completions[0].tokens, completions[0].finish_reason

A batch of prompts of different lengths is left-padded, so every row's newest token sits in the
last column; the attention mask hides the padding and position ids count real tokens only, so
each prompt is decoded exactly as it would be alone.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, LMForgeError
from ..models.logits import top_k_filter
from ..runtime import GENERATION_PRECISION
from .precision import cast_for_inference, weights_fingerprint
from .steps import DecoderStep, RecurrentStep, left_pad

log = logging.getLogger(__name__)

# stream(row, token_id) is called for each new token; returning True ends that row.
StreamCallback = Callable[[int, int], bool | None]
# Sampling defaults of every entry point (`lmforge generate`, generate_text, generate).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 200
DEFAULT_MAX_NEW_TOKENS = 200  # `lmforge generate`, `lmforge chat`, chat and pipeline calls


@dataclass
class Completion:
    """The new tokens of one prompt (stop token excluded) and why generation ended:
    "stop" (a stop token, or the stream callback asked to stop), "length" (max_new_tokens) or
    "context" (the sequence filled the model's context)."""

    tokens: list[int]
    finish_reason: str


# ---------------------------------------------------------------------------------------------
# Logits processors: (B, V) float logits in, (B, V) out; removed tokens get -inf.


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019) as Hugging Face applies it: the logit of
    every token already in the sequence (``seen``, bool (B, V)) is divided by ``penalty`` when
    positive and multiplied by it when negative, so penalty > 1 always makes repeats less likely."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2019) exactly as Hugging Face's TopPLogitsWarper: keep
    the smallest set of most likely tokens whose probabilities sum to at least ``p``, and always
    the most likely token."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1)  # ascending: the tail to drop comes first
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, seen: torch.Tensor, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, greedy: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position ``logits`` (B, V). Processors run in Hugging Face's
    order: repetition penalty, temperature, top-k, top-p. ``greedy`` or temperature 0 takes the
    argmax after the repetition penalty."""
    logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None,
                        top_p: float | None, repetition_penalty: float) -> None:
    """Raise ConfigError naming the first out-of-range sampling setting."""
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")


# ---------------------------------------------------------------------------------------------
# Batching prompts


def token_presence(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bool (B, V): which tokens occur among each row's real (unmasked) tokens."""
    counts = torch.zeros(ids.size(0), vocab_size, dtype=torch.long, device=ids.device)
    return counts.scatter_add_(1, ids, mask.long()) > 0


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    if not prompts:
        raise LMForgeError("no prompts to generate from")
    for prompt in prompts:
        if not prompt:
            raise LMForgeError("empty prompt: a prompt needs at least one token")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise LMForgeError(f"prompt token id {bad[0]} is outside the model's vocabulary "
                               f"(vocab_size={vocab_size}); is this the model's own tokenizer?")


def _fit_context(prompts: Sequence[Sequence[int]], context_length: int) -> list[list[int]]:
    """Crop prompts from the left to context_length - 1 tokens, leaving room for one new token."""
    room = context_length - 1
    fitted = []
    for prompt in prompts:
        if len(prompt) > room:
            log.warning("prompt of %d tokens cropped to its last %d (model context_length=%d)",
                        len(prompt), room, context_length)
        fitted.append(list(prompt[-room:]))
    return fitted


def plan_decoding(prompts: Sequence[Sequence[int]], model: torch.nn.Module, max_new_tokens: int):
    """Checked prompts cropped to the context, the longest prompt's length, and how many new
    tokens fit in the context (warning when fewer than asked). A recurrent model (LSTM) carries
    its state and has no context to fit."""
    cfg = model.config
    _check_prompts(prompts, cfg.vocab_size)
    if model.recurrent:
        return [list(p) for p in prompts], max(len(p) for p in prompts), max_new_tokens
    prompts = _fit_context(prompts, cfg.context_length)
    longest = max(len(p) for p in prompts)
    steps = min(max_new_tokens, cfg.context_length - longest)
    if steps < max_new_tokens:
        log.warning("generation stops at the model's context_length=%d: %d of %d new tokens",
                    cfg.context_length, steps, max_new_tokens)
    return prompts, longest, steps


_DECODERS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def compiled_decoder(model: torch.nn.Module) -> Callable:
    """``torch.compile`` of ``model`` for one-token decoding steps, built once per model and
    set of weights.

    An eager decoding step of a small model is hundreds of small operator calls, each paying
    dispatch and thread start-up; compiled, the element-wise work between matmuls (norms,
    RoPE, SiLU, residuals) runs as a few generated kernels. ``dynamic=True``: one compilation
    serves every cache length. ``freezing`` folds the weights into the graph as constants
    (letting inductor pre-pack them for the CPU matmul library), so the compiled decoder is
    rebuilt whenever the weights have changed since (training between generations).
    """
    fingerprint = weights_fingerprint(model)
    built = _DECODERS.get(model)
    if built is None or built[0] != fingerprint:
        built = _DECODERS[model] = (fingerprint, torch.compile(model, dynamic=True,
                                                               options={"freezing": True}))
    return built[1]


def _record(tokens: list[int], out: list[list[int]], reasons: list[str | None],
            stop_ids: set[int], stream: StreamCallback | None) -> None:
    """Append each unfinished row's new token to ``out``; set ``reasons[row]`` when it stops.
    Finished rows keep decoding with the batch, and their tokens are dropped here."""
    for row, token_id in enumerate(tokens):
        if reasons[row] is not None:
            continue
        if token_id in stop_ids:
            reasons[row] = "stop"
            continue
        out[row].append(token_id)
        if stream is not None and stream(row, token_id):
            reasons[row] = "stop"


# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
             top_p: float | None = None,
             repetition_penalty: float = 1.0, greedy: bool = False,
             stop_token_ids: Iterable[int] | None = None, seed: int | None = None,
             use_cache: bool = True, stream: StreamCallback | None = None,
             precision: str = GENERATION_PRECISION, compile: bool = False) -> list[Completion]:
    """Continue each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

    Decoding uses a KV cache: one forward pass over the (left-padded) prompts, then one token per
    step; ``use_cache=False`` recomputes the full sequence every step instead (same tokens,
    slower; a reference for tests). An LSTM reads each prompt once and carries its state. A row
    stops at any of ``stop_token_ids`` (the stop token is not returned) or when
    ``stream(row, token_id)`` returns True; the batch ends when all rows have stopped. ``seed``
    makes sampling reproducible; the sampling settings are those of :func:`sample_next`.
    ``precision``: the weights are cast once to the dtype
    :func:`~lmforge.generation.precision.inference_dtype` gives (a cached copy; the model itself
    is not changed): "auto" (the default) is whichever of fp32 and bf16 decodes this batch size
    faster on this hardware, measured once; "fp32" matches transformers' fp32 output; "bf16",
    "fp16"; a model loaded in a lower dtype runs in that dtype. Put the model in eval mode first
    (dropout).
    ``compile`` runs the one-token steps after the prompt through :func:`compiled_decoder` (the
    first call compiles: worth it for long or repeated generation with fixed weights).

    Context: the sequence never exceeds ``model.config.context_length`` (an LSTM has no such
    limit). A prompt longer than context_length - 1 is cropped from the left (keeping its end)
    with a warning, and generation stops when the longest prompt of the batch plus its new
    tokens fills the context, with a warning and finish_reason "context".
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    prompts, longest, steps = plan_decoding(prompts, model, max_new_tokens)
    model = cast_for_inference(model, precision, len(prompts))
    device = next(model.parameters()).device
    if model.recurrent:
        step = RecurrentStep(model, prompts)
    else:
        decode_model = compiled_decoder(model) if compile and use_cache else None
        step = DecoderStep(model, prompts, longest + steps, use_cache, decode_model)
    seen = token_presence(*left_pad(prompts, device), model.config.vocab_size)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    stop_ids = set(stop_token_ids or ())
    choose = functools.partial(sample_next, temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, greedy=greedy,
                               generator=generator)

    generated = torch.zeros((len(prompts), 0), dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    reasons: list[str | None] = [None] * len(prompts)
    for _ in range(steps):
        token = choose(step(generated), seen)
        generated = torch.cat([generated, token[:, None]], dim=1)
        seen.scatter_(1, token[:, None], True)
        _record(token.tolist(), out, reasons, stop_ids, stream)
        if all(reasons):
            break
    end_reason = "length" if steps == max_new_tokens else "context"
    return [Completion(tokens, reason or end_reason) for tokens, reason in zip(out, reasons)]

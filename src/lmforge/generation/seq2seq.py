"""Generation for encoder-decoder models, and beam search for every Transformer.

The decoding loops here work on a *step* (see :mod:`.steps`): an object that gives next-token
logits for a batch of growing token sequences and can reorder its rows (its KV caches with
them). Greedy decoding, sampling and beam search are written once over that interface;
:class:`Seq2SeqStep` drives an encoder-decoder (the encoder runs once; the decoder keeps a
self-attention KV cache and the cross-attention keys/values of the encoder output),
:class:`DecoderStep` a decoder-only GPT. The weights are cast once to the generation dtype
(:mod:`.precision`), never autocast per step.

    out = generate_seq2seq(model, [[12, 40, 7]], max_new_tokens=30, num_beams=4, stop_token_ids=[eos])
    out[0].tokens, out[0].finish_reason, out[0].score

Beam search scores a finished hypothesis as Hugging Face does: the sum of its token
log-probabilities divided by ``length ** length_penalty``, where length counts the generated
tokens including the stop token. ``length_penalty`` > 0 favours longer sequences, < 0 shorter.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError, LMForgeError
from ..models.task_head import refuse_task_model
from ..runtime import GENERATION_PRECISION
from .precision import cast_for_inference
from .sampling import (DEFAULT_TEMPERATURE, DEFAULT_TOP_K, Completion, StreamCallback,
                       _check_prompts, _record, check_sampling_args, generate, plan_decoding,
                       sample_next)
from .steps import DecoderStep, Seq2SeqStep, Step, start_tokens

log = logging.getLogger(__name__)


@dataclass
class BeamCompletion(Completion):
    """A beam search result: the best hypothesis and its length-normalized log-probability."""

    score: float


# ---------------------------------------------------------------------------------------------
# Search over a step


def sample_loop(step: Step, start: torch.Tensor, max_new_tokens: int, choose, vocab_size: int,
                stop_ids: set[int], stream: StreamCallback | None = None) -> list[Completion]:
    """Greedy decoding or sampling: ``choose(logits, seen)`` picks each row's next token."""
    tokens = start
    seen = torch.zeros(start.shape[0], vocab_size, dtype=torch.bool, device=start.device)
    out: list[list[int]] = [[] for _ in range(start.shape[0])]
    reasons: list[str | None] = [None] * start.shape[0]
    for _ in range(max_new_tokens):
        token = choose(step(tokens), seen)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        seen.scatter_(1, token[:, None], True)
        _record(token.tolist(), out, reasons, stop_ids, stream)
        if all(reasons):
            break
    return [Completion(t, reason or "length") for t, reason in zip(out, reasons)]


def banned_ngram_tokens(tokens: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``tokens`` (Hugging Face's
    no_repeat_ngram_size): those that followed an earlier occurrence of the last n-1 tokens."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    tail = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1)
            if tuple(tokens[i:i + n - 1]) == tail}


class _Hypotheses:
    """The ``num_beams`` best finished hypotheses of one source, best first."""

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.items: list[tuple[float, list[int], str]] = []

    def add(self, tokens: list[int], log_prob: float, length: int, reason: str) -> None:
        score = log_prob / length ** self.length_penalty
        if len(self.items) < self.num_beams or score > self.items[-1][0]:
            self.items.append((score, tokens, reason))
            self.items.sort(key=lambda item: -item[0])
            del self.items[self.num_beams:]

    def is_done(self, best_running: float, length: int, max_length: int, early_stopping) -> bool:
        """Whether no running beam can enter the list any more: at once when it is full with
        ``early_stopping=True``; else when the best running beam, normalized at the current
        length (``"never"``: at the longest possible length if that favours it), is no better
        than the worst finished one (Hugging Face's heuristic)."""
        if len(self.items) < self.num_beams:
            return False
        if early_stopping is True:
            return True
        if early_stopping == "never" and self.length_penalty > 0:
            length = max_length
        return self.items[-1][0] >= best_running / length ** self.length_penalty


@torch.inference_mode()
def beam_search(step: Step, start: torch.Tensor, num_beams: int, max_new_tokens: int,
                stop_token_ids: Iterable[int] = (), length_penalty: float = 1.0,
                early_stopping: bool | str = False,
                no_repeat_ngram_size: int = 0) -> list[BeamCompletion]:
    """The best of ``num_beams`` beams for each row of ``start`` (B, t0), the tokens every
    sequence begins with (an encoder-decoder's decoder start token; nothing for a decoder-only
    model, whose prompts live in the step). Returned tokens exclude ``start`` and the stop
    token. A hypothesis ends at a stop token, or at ``max_new_tokens`` (finish_reason
    "length"). ``step`` is expanded to B * num_beams rows here."""
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    B, t0 = start.shape
    K, device = num_beams, start.device
    stop_ids = set(stop_token_ids)
    step.reorder(torch.arange(B, device=device).repeat_interleave(K))
    tokens = start.repeat_interleave(K, dim=0)
    # All beams of a source start identical: count only the first, or the top-k would hold
    # K copies of each continuation.
    scores = torch.full((B, K), -1e9, device=device)
    scores[:, 0] = 0.0
    finished = [_Hypotheses(K, length_penalty) for _ in range(B)]
    done = [False] * B
    for t in range(1, max_new_tokens + 1):  # t: generated tokens including this one
        log_probs = step(tokens).log_softmax(dim=-1)
        if no_repeat_ngram_size:
            for row, seq in enumerate(tokens[:, t0:].tolist()):
                banned = list(banned_ngram_tokens(seq, no_repeat_ngram_size))
                log_probs[row, banned] = float("-inf")
        V = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(B, K * V)
        # (1 + stops) * K candidates: even if every beam's best ones are all the stop tokens,
        # K others remain to continue.
        top_scores, top_index = candidates.topk(min((1 + len(stop_ids)) * K, K * V), dim=1)
        sources, new_tokens, new_scores = [], [], []
        for b, (row_scores, row_index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            kept = []
            for rank, (score, index) in enumerate(zip(row_scores, row_index)):
                source, token = b * K + index // V, index % V
                if token in stop_ids:
                    # Only a stop among the K best counts; the rest exist to keep K beams going.
                    if rank < K and not done[b]:
                        finished[b].add(tokens[source, t0:].tolist(), score, t, "stop")
                    continue
                kept.append((source, token, score))
                if len(kept) == K:
                    break
            if not done[b]:
                done[b] = finished[b].is_done(kept[0][2], t, max_new_tokens, early_stopping)
            for source, token, score in kept:
                sources.append(source)
                new_tokens.append(token)
                new_scores.append(score)
        if all(done):
            break
        index = torch.tensor(sources, device=device)
        tokens = torch.cat([tokens[index], torch.tensor(new_tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=device).view(B, K)
        if t < max_new_tokens:
            step.reorder(index)
    else:  # out of length: the running beams compete as they are
        for b in range(B):
            if not done[b]:
                for j in range(K):
                    finished[b].add(tokens[b * K + j, t0:].tolist(), float(scores[b, j]),
                                    max(max_new_tokens, 1), "length")
    results = []
    for hyps in finished:
        score, best, reason = hyps.items[0] if hyps.items else (0.0, [], "length")
        results.append(BeamCompletion(best, reason, score))
    return results


# ---------------------------------------------------------------------------------------------
# Models


def _check_beam_args(num_beams: int, early_stopping, no_repeat_ngram_size: int) -> None:
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping must be true, false or 'never', got {early_stopping!r}")
    if no_repeat_ngram_size < 0:
        raise ConfigError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")


@torch.inference_mode()
def generate_seq2seq(model: torch.nn.Module, sources: Sequence[Sequence[int]], max_new_tokens: int,
                     temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
                     top_p: float | None = None,
                     repetition_penalty: float = 1.0, greedy: bool = False, num_beams: int = 1,
                     length_penalty: float = 1.0, early_stopping: bool | str = False,
                     no_repeat_ngram_size: int = 0, stop_token_ids: Iterable[int] | None = None,
                     decoder_start_token_id: int | None = None, seed: int | None = None,
                     use_cache: bool = True, stream: StreamCallback | None = None,
                     precision: str = GENERATION_PRECISION) -> list[Completion]:
    """Generate an output for each source (a list of token ids) with an encoder-decoder model.

    The sources are encoded once; the decoder starts from ``decoder_start_token_id`` (default:
    the model config's) and adds up to ``max_new_tokens`` tokens, with a self-attention KV
    cache and a cross-attention cache (``use_cache=False`` recomputes the decoder every step:
    the same tokens, a reference for tests). ``num_beams`` > 1 runs :func:`beam_search`
    (``length_penalty``, ``early_stopping``, ``no_repeat_ngram_size``; sampling settings are
    not used, and ``stream`` sees the best hypothesis only once it is chosen); otherwise
    greedy decoding or sampling as in :func:`~lmforge.generation.generate`. A source longer
    than the model context is cut to its first context_length tokens, with a warning.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    _check_beam_args(num_beams, early_stopping, no_repeat_ngram_size)
    cfg = model.config
    if not model.is_seq2seq:
        raise ConfigError(f"generate_seq2seq needs an encoder-decoder model, got a {model.kind}")
    start = start_tokens(model, len(sources), decoder_start_token_id)
    _check_prompts(sources, cfg.vocab_size)
    if any(len(s) > cfg.context_length for s in sources):
        log.warning("source cut to its first %d tokens (model context_length)", cfg.context_length)
    sources = [list(s[:cfg.context_length]) for s in sources]
    steps = min(max_new_tokens, cfg.context_length - 1)  # the start token takes one position
    if steps < max_new_tokens:
        log.warning("generation stops at the model's context_length=%d: %d of %d new tokens",
                    cfg.context_length, steps, max_new_tokens)

    model = cast_for_inference(model, precision, len(sources) * num_beams)
    stop_ids = set(stop_token_ids or ())
    step = Seq2SeqStep(model, sources, steps + 1, use_cache)
    if num_beams > 1:
        done = _replay(beam_search(step, start, num_beams, steps, stop_ids, length_penalty,
                                   early_stopping, no_repeat_ngram_size), stream)
    else:
        generator = (torch.Generator(start.device).manual_seed(seed) if seed is not None
                     else None)
        choose = functools.partial(sample_next, temperature=temperature, top_k=top_k,
                                   top_p=top_p, repetition_penalty=repetition_penalty,
                                   greedy=greedy, generator=generator)
        done = sample_loop(step, start, steps, choose, cfg.vocab_size, stop_ids, stream)
    return _context_reason(done, steps < max_new_tokens)


@torch.inference_mode()
def beam_search_decoder(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                        max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                        early_stopping: bool | str = False, no_repeat_ngram_size: int = 0,
                        stop_token_ids: Iterable[int] | None = None, use_cache: bool = True,
                        stream: StreamCallback | None = None,
                        precision: str = GENERATION_PRECISION) -> list[BeamCompletion]:
    """Beam search continuations of ``prompts`` with a decoder-only model (GPT); prompts and
    context as in :func:`~lmforge.generation.generate`."""
    _check_beam_args(num_beams, early_stopping, no_repeat_ngram_size)
    prompts, longest, steps = plan_decoding(prompts, model, max_new_tokens)
    model = cast_for_inference(model, precision, len(prompts) * num_beams)
    step = DecoderStep(model, prompts, longest + steps, use_cache)
    completions = beam_search(step, start_tokens(model, len(prompts)), num_beams, steps,
                              set(stop_token_ids or ()), length_penalty, early_stopping,
                              no_repeat_ngram_size)
    return _context_reason(_replay(completions, stream), steps < max_new_tokens)


def _context_reason(completions: list, cut: bool) -> list:
    """Completions that ran out of room because of the model context end with "context"."""
    if not cut:
        return completions
    return [replace(c, finish_reason="context") if c.finish_reason == "length" else c
            for c in completions]


def _replay(completions: list[BeamCompletion], stream: StreamCallback | None) -> list[BeamCompletion]:
    """Feed the chosen hypotheses to ``stream``, cutting one where the callback says stop."""
    if stream is None:
        return completions
    for row, done in enumerate(completions):
        for i, token_id in enumerate(done.tokens):
            if stream(row, token_id):
                done.tokens, done.finish_reason = done.tokens[:i + 1], "stop"
                break
    return completions


def generate_tokens(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    *, num_beams: int = 1, length_penalty: float = 1.0,
                    early_stopping: bool | str = False, no_repeat_ngram_size: int = 0,
                    **kwargs) -> list[Completion]:
    """Generation for any language model: an encoder-decoder reads each prompt as its source
    (:func:`generate_seq2seq`); a decoder continues it, by beam search when ``num_beams`` > 1
    (:func:`beam_search_decoder`), else by :func:`~lmforge.generation.generate` (an LSTM too).
    ``kwargs`` are those of :func:`~lmforge.generation.generate`; ``compile`` applies to that
    last path only."""
    refuse_task_model(model, "generation needs a language model")
    compile = kwargs.pop("compile", False)
    if model.is_seq2seq:
        return generate_seq2seq(model, prompts, max_new_tokens, num_beams=num_beams,
                                length_penalty=length_penalty, early_stopping=early_stopping,
                                no_repeat_ngram_size=no_repeat_ngram_size, **kwargs)
    if num_beams > 1:
        if not model.is_decoder or model.recurrent:
            raise LMForgeError(f"beam search needs a Transformer decoder or encoder-decoder, "
                               f"got a {model.kind}")
        for name in ("temperature", "top_k", "top_p", "repetition_penalty", "greedy", "seed"):
            kwargs.pop(name, None)  # beam search is deterministic
        return beam_search_decoder(model, prompts, max_new_tokens, num_beams, length_penalty,
                                   early_stopping, no_repeat_ngram_size, **kwargs)
    return generate(model, prompts, max_new_tokens, compile=compile, **kwargs)

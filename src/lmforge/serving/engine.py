"""Continuous batching: one decoding loop serves every request at once.

Requests wait in a bounded queue. Before each decoding step the loop admits as many as there
are free slots, runs their prompts through the model together (one left-padded prefill pass)
and moves their keys/values into a :class:`~lmforge.models.kv_cache.SlotCache`; every step then
decodes one token for each running sequence, each with its own length, position and sampling
settings, and hands it to its request at once. A sequence leaves the batch the step it
finishes (stop token, length, context, or its client gave up), freeing its slot for the next
waiting request. So a short request never waits for a long one, and a streaming client gets
each token the step it is made.

The loop runs on its own thread (PyTorch releases the GIL in its kernels); results reach the
asyncio side through ``loop.call_soon_threadsafe``, once per step for all sequences.

    engine = Engine(model, max_batch=16)
    engine.start()
    seq = engine.submit([15496, 995], SamplingParams(max_tokens=20), loop, on_event)
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..generation import generate_tokens
from ..generation.steps import left_pad, positions_from_mask

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is full (the server answers 429)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded. ``temperature`` 0 is greedy; ``logprobs`` None returns no
    log-probabilities, k >= 0 the chosen token's and the k most likely alternatives'."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: int | None = None


@dataclass
class TokenEvent:
    """One new token of a sequence, or its end (``token_id`` None, ``finish_reason`` set).
    ``top`` lists (token_id, logprob) of the most likely alternatives when asked for."""

    token_id: int | None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish_reason: str | None = None


@dataclass(eq=False)
class Sequence:
    """A prompt being continued: its tokens, settings, and where its events go."""

    prompt: list[int]
    params: SamplingParams
    on_events: Callable[[list[TokenEvent]], None]  # called on the asyncio loop
    loop: asyncio.AbstractEventLoop
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    slot: int | None = None
    cancelled: bool = False
    finished: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def cancel(self) -> None:
        """Stop decoding this sequence (a stop string was met, the client left): its slot is
        freed at the next step."""
        self.cancelled = True


@dataclass
class EngineStats:
    """Counters for /metrics, updated by the loop."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    prefills: int = 0
    # Observers (the server's histograms), called on the loop's thread.
    on_step: Callable[[float, int], None] = lambda seconds, batch: None
    on_first_token: Callable[[float], None] = lambda seconds: None


class Engine:
    """The decoding loop of a decoder model with a :meth:`new_slot_cache` (see module doc).

    ``max_batch`` sequences decode together; up to ``max_queue`` more wait; ``max_prefill_tokens``
    bounds one prefill pass (long prompts then join over several steps, so running streams keep
    flowing)."""

    logprobs = True  # can report log-probabilities

    def __init__(self, model: torch.nn.Module, max_batch: int = 16, max_queue: int = 64,
                 max_prefill_tokens: int = 4096):
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.cache = model.new_slot_cache(max_batch) if max_batch else None
        self.counts = torch.zeros(max_batch, self.config.vocab_size, dtype=torch.int32,
                                  device=self.device)
        self.running: list[Sequence] = []  # index = slot
        self.waiting: deque[Sequence] = deque()
        self.stats = EngineStats()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._admitting: list[Sequence] = []  # taken from the queue, not yet running

    # ---- the asyncio side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop,
               on_events: Callable[[list[TokenEvent]], None]) -> Sequence:
        """Queue a prompt; ``on_events`` receives its events on ``loop``. Raises QueueFull."""
        return self.submit_many([prompt], [params], loop, [on_events])[0]

    def submit_many(self, prompts: list[list[int]], params: list[SamplingParams],
                    loop: asyncio.AbstractEventLoop,
                    on_events: list[Callable[[list[TokenEvent]], None]]) -> list[Sequence]:
        """Queue several sequences at once, all or none (one request with n > 1)."""
        if self.error is not None or not self.alive:
            raise RuntimeError(f"the decoding loop has stopped: {self.error!r}")
        with self._wake:
            if len(self.waiting) + len(prompts) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            seqs = []
            for prompt, p, cb in zip(prompts, params, on_events):
                seed = p.seed if p.seed is not None else random.getrandbits(62)
                seqs.append(Sequence(list(prompt), p, cb, loop,
                                     generator=torch.Generator(self.device).manual_seed(seed)))
            self.waiting.extend(seqs)
            self._wake.notify()
        return seqs

    # ---- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not self._stop and not self.waiting and not self.running:
                            self._wake.wait()
                        if self._stop:
                            break
                    self._work()
        except BaseException as exc:  # a dying loop fails every request instead of hanging them
            log.exception("the decoding loop failed")
            self.error = exc
            for seq in {*self.running, *self._admitting, *self.waiting}:
                self._emit({seq: [TokenEvent(None, finish_reason="error")]})
            self.running, self.waiting = [], deque()

    def _work(self) -> None:
        """One turn of the loop: drop abandoned sequences, admit waiting ones, decode a step."""
        self._drop_cancelled()
        self._admit()
        if self.running:
            self._decode_step()

    def _emit(self, events: dict[Sequence, list[TokenEvent]]) -> None:
        """Deliver each sequence's events on its loop (one call per loop and step)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for seq, evs in events.items():
            by_loop.setdefault(seq.loop, []).append((seq.on_events, evs))

        def deliver(batch):
            for callback, evs in batch:
                callback(evs)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(deliver, batch)
            except RuntimeError:  # the loop has closed (server shutting down)
                pass

    def _drop_cancelled(self) -> None:
        with self._wake:
            kept = deque(s for s in self.waiting if not s.cancelled)
            dropped = [s for s in self.waiting if s.cancelled]
            self.waiting = kept
        events = {s: [TokenEvent(None, finish_reason="cancelled")] for s in dropped}
        for seq in [s for s in self.running if s.cancelled]:
            events[seq] = [TokenEvent(None, finish_reason="cancelled")]
            self._finish(seq)
        if events:
            self._emit(events)

    def _finish(self, seq: Sequence) -> None:
        """Take ``seq`` out of the batch; the last running sequence moves into its slot."""
        seq.finished = True
        slot = seq.slot
        moved = self.cache.remove(slot)
        if moved is not None:
            self.counts[slot] = self.counts[moved]
            self.running[slot] = self.running[moved]
            self.running[slot].slot = slot
        self.running.pop()

    def _admit(self) -> None:
        """Prefill as many waiting prompts as fit (free slots, token budget), in one pass."""
        admitted, budget = [], self.max_prefill_tokens
        with self._wake:
            while (self.waiting and len(self.running) + len(admitted) < self.max_batch
                   and (not admitted or len(self.waiting[0].prompt) <= budget)):
                seq = self.waiting.popleft()
                budget -= len(seq.prompt)
                admitted.append(seq)
            self._admitting = admitted
        if not admitted:
            return
        ids, mask = left_pad([s.prompt for s in admitted], self.device)
        width = ids.shape[1]
        prefill = self.model.new_cache(len(admitted), width)
        logits = self.model(ids, position_ids=positions_from_mask(mask),
                            attention_mask=None if bool(mask.all()) else mask,
                            cache=prefill, last_only=True)[:, -1].float()
        for row, seq in enumerate(admitted):
            seq.slot = self.cache.insert(prefill, row, width - len(seq.prompt), width)
            self.running.append(seq)
            self.counts[seq.slot].zero_()
            self.stats.prompt_tokens += len(seq.prompt)
        self._admitting = []
        self.stats.prefills += 1
        self._sample_and_emit(logits, admitted)

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        seqs = list(self.running)
        last = torch.tensor([[s.generated[-1]] for s in seqs], device=self.device)
        logits = self.model(last, position_ids=self.cache.decode_inputs(), cache=self.cache,
                            last_only=True)[:, -1].float()
        self._sample_and_emit(logits, seqs)
        self.stats.steps += 1
        self.stats.on_step(time.perf_counter() - t0, len(seqs))

    def _sample_and_emit(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Choose each sequence's next token, send the events, retire finished sequences."""
        params = [s.params for s in seqs]
        counts = None
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            counts = self.counts.index_select(0, torch.tensor([s.slot for s in seqs],
                                                              device=self.device))
        tokens = sample_rows(logits, params, [s.generator for s in seqs], counts)
        want_logprobs = [s.params.logprobs is not None for s in seqs]
        logprobs = logits.log_softmax(-1) if any(want_logprobs) else None
        events: dict[Sequence, list[TokenEvent]] = {}
        now = time.perf_counter()
        done = []
        for i, (seq, token) in enumerate(zip(seqs, tokens.tolist())):
            if seq.first_token_at is None:
                seq.first_token_at = now
                self.stats.on_first_token(now - seq.submitted)
            if token in seq.params.stop_token_ids:
                events[seq] = [TokenEvent(None, finish_reason="stop")]
                done.append(seq)
                continue
            seq.generated.append(token)
            self.counts[seq.slot, token] += 1
            self.stats.generated_tokens += 1
            event = TokenEvent(token)
            if want_logprobs[i]:
                row = logprobs[i]
                event.logprob = float(row[token])
                k = seq.params.logprobs
                if k:
                    values, ids = row.topk(k)
                    event.top = list(zip(ids.tolist(), values.tolist()))
            evs = [event]
            reason = None
            if len(seq.generated) >= seq.params.max_tokens:
                reason = "length"
            elif self.cache.host_lengths[seq.slot] + 1 >= self.config.context_length:
                reason = "length"  # the context is full (OpenAI has no separate reason)
            if reason:
                evs.append(TokenEvent(None, finish_reason=reason))
                done.append(seq)
            events[seq] = evs
        self._emit(events)
        for seq in done:
            self._finish(seq)


class SerialEngine(Engine):
    """The same queue and events for models that decode in lockstep only (encoder-decoders,
    LSTMs): one request at a time through :func:`~lmforge.generation.generate_tokens`,
    streamed token by token, without batching or log-probabilities."""

    logprobs = False

    def __init__(self, model: torch.nn.Module, max_queue: int = 64):
        super().__init__(model, max_batch=0, max_queue=max_queue)
        self.max_batch = 1

    def _work(self) -> None:
        self._drop_cancelled()
        with self._wake:
            if not self.waiting:
                return
            seq = self.waiting.popleft()
            self.running.append(seq)
        p = seq.params
        self.stats.prompt_tokens += len(seq.prompt)

        def stream(row: int, token_id: int) -> bool:
            if seq.first_token_at is None:
                seq.first_token_at = time.perf_counter()
                self.stats.on_first_token(seq.first_token_at - seq.submitted)
            seq.generated.append(token_id)
            self.stats.generated_tokens += 1
            self._emit({seq: [TokenEvent(token_id)]})
            return seq.cancelled
        try:
            done = generate_tokens(self.model, [seq.prompt], p.max_tokens, greedy=p.temperature == 0,
                                   temperature=p.temperature or 1.0, top_k=p.top_k or None,
                                   top_p=p.top_p if p.top_p < 1 else None,
                                   stop_token_ids=p.stop_token_ids, seed=p.seed, stream=stream,
                                   precision="fp32")[0]
            reason = "cancelled" if seq.cancelled else {"context": "length"}.get(
                done.finish_reason, done.finish_reason)
        finally:
            self.running.clear()
        seq.finished = True
        self._emit({seq: [TokenEvent(None, finish_reason=reason)]})


def sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None],
                counts: torch.Tensor | None = None) -> torch.Tensor:
    """Next token (B,) of each row of ``logits`` (B, V) under its own settings: OpenAI's presence
    and frequency penalties (on ``counts``, the row's generated-token counts), then greedy
    (temperature 0) or temperature, top-k and top-p (nucleus) sampling, each row drawing from
    its own generator so a seeded request gives the same tokens whatever else is running."""
    B = logits.shape[0]
    device = logits.device
    presence = torch.tensor([p.presence_penalty for p in params], device=device)
    frequency = torch.tensor([p.frequency_penalty for p in params], device=device)
    if counts is not None and (presence.any() or frequency.any()):
        counts = counts.float()
        logits = logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()
    greedy = [p.temperature == 0 for p in params]
    chosen = logits.argmax(-1)
    if all(greedy):
        return chosen
    temperature = torch.tensor([p.temperature or 1.0 for p in params], device=device)
    scaled = logits / temperature[:, None]
    top_k = [p.top_k for p in params]
    if any(k > 0 for k in top_k):
        k_max = min(max(top_k), scaled.shape[-1])
        kth_values = scaled.topk(k_max, dim=-1).values  # (B, k_max), descending
        index = torch.tensor([(k if 0 < k <= k_max else k_max) - 1 for k in top_k], device=device)
        threshold = kth_values.gather(1, index[:, None])
        off = torch.tensor([k <= 0 for k in top_k], device=device)[:, None]
        scaled = scaled.masked_fill((scaled < threshold) & ~off, float("-inf"))
    top_p = torch.tensor([p.top_p for p in params], device=device)
    if (top_p < 1).any():
        sorted_logits, order = scaled.sort(dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= (1 - top_p)[:, None]
        drop_sorted[:, -1] = False
        scaled = scaled.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = scaled.softmax(-1)
    out = chosen.clone()
    for row in range(B):
        if not greedy[row]:
            out[row] = torch.multinomial(probs[row], 1, generator=generators[row])[0]
    return out

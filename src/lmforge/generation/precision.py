"""The dtype a model generates in: weights cast once, never autocast per step.

bf16 *autocast* re-casts every fp32 weight at every decoding step, which made bf16 generation
slower than fp32 (SmolLM2-135M on an AMX Xeon, batch 1: 11.7 tok/s autocast, 32.5 fp32, 25.6 with
weights cast to bf16 once). Whether bf16 weights beat fp32 depends on the hardware and the
batch (same machine: batch 16 decodes 291 tok/s in bf16 vs 189 in fp32, and a 512-token
prefill takes 0.21 s vs 0.73 s), so ``precision="auto"`` times a few decoding steps of the
model itself in both dtypes, once per model shape, batch size (rounded up to a power of two)
and device, and keeps the faster. The choice looks at decoding steps only, not at the prompt
length or the number of new tokens, so that a greedy completion with more new tokens still
begins with the one with fewer.

    model = cast_for_inference(model, "auto", batch_size=8)
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import weakref
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..runtime import cpu_has_fast_bf16
from .steps import PAD_ID, make_step, start_tokens

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)
# Below this many weights "auto" keeps fp32 without timing: small matrices gain nothing from
# bf16 on a CPU (one decoding step on the 2-core AMX Xeon, load 1.0, fp32 vs bf16: gpt-mini 3.7M
# 2.1 vs 3.5 ms at batch 8; gpt-10m 2.8 vs 5.7 ms at batch 1, 6.1 vs 6.3 at batch 8; an 18M
# llama 7.6 vs 10.9 / 10.8 vs 13.1 ms; bf16 starts to pay near 80M: a 6-layer GPT-2 of 82M,
# 39 vs 22 ms at batch 1; SmolLM2-135M 36 vs 46 ms at batch 1, 72 vs 40 ms at batch 8).
AUTO_MIN_PARAMETERS = 50_000_000
MAX_MEASURED_BATCH = 64
# bf16 must beat fp32 by this factor to be chosen: near a tie, fp32's exactness (transformers'
# fp32 output) is worth more than a few percent.
BF16_MIN_GAIN = 1.05

_LOCK = threading.RLock()  # a server may generate from several threads
_CASTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_CHOICES: dict[tuple, torch.dtype] = {}


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point weight (fp32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """Changes when a weight is replaced, moved, cast or modified in place (version counter;
    weights made under inference mode have none and are compared by storage alone)."""
    return tuple((p.data_ptr(), p.dtype, -1 if p.is_inference() else p._version)
                 for p in model.parameters())


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with floating-point weights in ``dtype``, made without a
    full-precision copy first (each weight is cast straight into the copy; tied weights stay
    tied), as ordinary tensors even when called under inference mode."""
    with torch.inference_mode(False), torch.no_grad():
        memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
                for p in model.parameters() if p.is_floating_point()}
        return copy.deepcopy(model, memo).to(dtype).eval()


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with its floating-point weights in ``dtype``: the model itself when they
    already are, else a copy made once per set of weights (rebuilt after training changes them)."""
    if model_dtype(model) == dtype:
        return model
    with _LOCK:
        cached = _CASTS.setdefault(model, {})
        fingerprint = weights_fingerprint(model)
        entry = cached.get(dtype)
        if entry is None or entry[0] != fingerprint:
            entry = cached[dtype] = (fingerprint, _cast(model, dtype))
        return entry[1]


def measured_batch(batch_size: int) -> int:
    """The batch size "auto" times for ``batch_size``: the next power of two (at most 64), so a
    server whose batch changes every step measures a few sizes, not every one."""
    return min(1 << max(batch_size - 1, 0).bit_length(), MAX_MEASURED_BATCH)


@torch.inference_mode()
def decode_seconds(models: Sequence[torch.nn.Module], batch_size: int, steps: int = 8,
                   prompt_len: int = 32) -> list[float]:
    """Best time of one cached one-token step of each of ``models`` (the same model in several
    dtypes) at ``batch_size``, after a ``prompt_len``-token prompt of random ids, through the
    step generation runs. The models take their steps in turn, so a burst of other work on a
    shared machine slows them alike instead of tipping the comparison."""
    first = models[0]
    cfg = first.config
    device = next(first.parameters()).device
    if not first.recurrent:
        prompt_len = max(1, min(prompt_len, cfg.context_length - steps - 2))
    rng = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), generator=rng).tolist()
    runs = []
    for model in models:
        step = make_step(model, prompts, prompt_len + steps + 2)
        tokens = start_tokens(model, batch_size, PAD_ID)  # any start token times the same
        runs.append([step, tokens, step(tokens)])
    best = [float("inf")] * len(models)
    for _ in range(steps):
        for i, run in enumerate(runs):
            step, tokens, logits = run
            run[1] = tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)
            t0 = time.perf_counter()
            run[2] = step(tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, and fp16 off CUDA, with one clear ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32")


def inference_dtype(model: torch.nn.Module, precision: str = "auto",
                    batch_size: int = 1) -> torch.dtype:
    """The dtype to generate with ``model`` in. "fp32", "bf16", "fp16" are taken as given (a
    model loaded in a lower dtype stays in it for "fp32"). "auto" keeps a model loaded in a
    lower dtype as it is; for fp32 weights it is bf16 on a CUDA GPU that has it (else fp16),
    fp32 on other devices, on CPUs without native bf16 (AVX512-BF16 or AMX) and for models under
    :data:`AUTO_MIN_PARAMETERS` weights; otherwise whichever of fp32 and bf16 decodes a batch of
    :func:`measured_batch` (``batch_size``) rows faster, timed on the model once."""
    device = next(model.parameters()).device
    check_precision(precision, device)
    current = model_dtype(model)
    if precision != "auto":
        wanted = DTYPES[precision]
        return current if wanted == torch.float32 else wanted
    if current != torch.float32:
        return current
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not cpu_has_fast_bf16():
        return torch.float32
    if sum(p.numel() for p in model.parameters()) < AUTO_MIN_PARAMETERS:
        return torch.float32
    batch = measured_batch(batch_size)
    key = (type(model).__name__, repr(getattr(model, "config", id(model))), batch, str(device))
    with _LOCK:
        if key not in _CHOICES:
            _CHOICES[key] = _faster_dtype(model, batch)
        return _CHOICES[key]


def _faster_dtype(model: torch.nn.Module, batch: int) -> torch.dtype:
    """bf16 if it decodes ``batch`` rows faster than fp32 by :data:`BF16_MIN_GAIN`, else fp32
    (also when timing fails)."""
    try:
        fp32, bf16 = decode_seconds([cast_copy(model, torch.float32),
                                     cast_copy(model, torch.bfloat16)], batch)
    except Exception as exc:  # a model this timing does not fit: no speed guess, full precision
        log.debug("precision auto: timing failed (%s); fp32", exc)
        return torch.float32
    choice = torch.bfloat16 if fp32 > bf16 * BF16_MIN_GAIN else torch.float32
    log.info("precision auto: %s (one decoding step at batch %d: fp32 %.1f ms, bf16 %.1f ms)",
             str(choice).removeprefix("torch."), batch, fp32 * 1e3, bf16 * 1e3)
    if choice == torch.float32:
        _CASTS.get(model, {}).pop(torch.bfloat16, None)  # the unused copy frees its memory
    return choice


def cast_for_inference(model: torch.nn.Module, precision: str = "auto",
                       batch_size: int = 1) -> torch.nn.Module:
    """``model`` in :func:`inference_dtype`'s dtype (a cached cast copy when it differs)."""
    return cast_copy(model, inference_dtype(model, precision, batch_size))

"""The dtype a model decodes in: weights cast once, never autocast per step.

bf16 *autocast* re-casts every fp32 weight at every decoding step, which made bf16 generation
slower than fp32 (SmolLM2-135M on an AMX Xeon, batch 1: 11.7 tok/s autocast, 32.5 fp32, 25.6 with
weights cast to bf16 once). Whether bf16 weights beat fp32 depends on the hardware and the
batch (same machine: batch 16 decodes 291 tok/s in bf16 vs 189 in fp32, and a 512-token
prefill takes 0.21 s vs 0.73 s), so ``precision="auto"`` times a few decoding steps of the
model itself in both dtypes, once per model shape, batch size and device, and keeps the faster.

    model = cast_for_inference(model, "auto", batch_size=8)
"""

from __future__ import annotations

import logging
import time
import weakref

import torch

from ..runtime import cpu_has_fast_bf16

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CASTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_CHOICES: dict[tuple, torch.dtype] = {}


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _fingerprint(model: torch.nn.Module) -> tuple:
    return tuple((p.data_ptr(), p.dtype, p._version) for p in model.parameters())


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with its floating-point weights in ``dtype``: the model itself when they
    already are, else a copy made once per set of weights (rebuilt after training changes them)."""
    if model_dtype(model) == dtype:
        return model
    cached = _CASTS.setdefault(model, {})
    fingerprint = _fingerprint(model)
    entry = cached.get(dtype)
    if entry is None or entry[0] != fingerprint:
        import copy
        twin = copy.deepcopy(model).to(dtype).eval()
        entry = cached[dtype] = (fingerprint, twin)
    return entry[1]


def _decode_seconds(model: torch.nn.Module, batch_size: int, steps: int = 4) -> float:
    """Best time of one KV-cached one-token step at ``batch_size`` after a 32-token prompt."""
    device = next(model.parameters()).device
    prompt = min(32, model.config.context_length - steps - 1)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, prompt), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    best = float("inf")
    with torch.inference_mode():
        cache = model.new_cache(batch_size, prompt + steps + 1)
        model(ids, cache=cache, last_only=True)
        token = ids[:, -1:]
        for _ in range(steps):
            t0 = time.perf_counter()
            model(token, cache=cache, last_only=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best


def inference_dtype(model: torch.nn.Module, precision: str = "auto",
                    batch_size: int = 1) -> torch.dtype:
    """The dtype to decode ``model`` in. "fp32"/"bf16"/"fp16" are taken as given (a model
    loaded in a lower dtype stays in it for "fp32"); "auto" is fp32 unless the device runs bf16
    natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), where it is whichever of fp32 and
    bf16 decodes a ``batch_size`` batch faster, measured on the model once."""
    current = model_dtype(model)
    if precision != "auto":
        wanted = DTYPES[precision]
        return current if wanted == torch.float32 and current != torch.float32 else wanted
    if current != torch.float32:
        return current
    device = next(model.parameters()).device
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not cpu_has_fast_bf16() or not hasattr(model, "new_cache"):
        return torch.float32
    key = (type(model).__name__, repr(model.config), batch_size, str(device))
    if key not in _CHOICES:
        timings = {dtype: _decode_seconds(cast_copy(model, dtype), batch_size)
                   for dtype in (torch.float32, torch.bfloat16)}
        _CHOICES[key] = min(timings, key=timings.get)
        log.info("precision auto: %s (one decoding step at batch %d: fp32 %.1f ms, bf16 %.1f ms)",
                 _CHOICES[key], batch_size, timings[torch.float32] * 1e3,
                 timings[torch.bfloat16] * 1e3)
    return _CHOICES[key]


def cast_for_inference(model: torch.nn.Module, precision: str = "auto",
                       batch_size: int = 1) -> torch.nn.Module:
    """``model`` in :func:`inference_dtype`'s dtype (a cached cast copy when it differs)."""
    return cast_copy(model, inference_dtype(model, precision, batch_size))

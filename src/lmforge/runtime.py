"""Device, precision and throughput helpers shared by training, generation and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config field 'device': unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field 'device': CUDA requested but not available")
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 matmuls
    run several times faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Default of the scoring and analysis entry points (score, evaluate, embed, predict, fill-mask),
# CLI and Python alike: scores and greedy output then equal fp32 transformers'; "auto" (bf16
# autocast where fast) is opt-in speed.
INFERENCE_PRECISION = "fp32"
# Default of the generation entry points (generate, chat, generate_text, the text-generation
# pipelines): the weights are cast once to whichever of fp32 and bf16 decodes faster on this
# hardware, measured (generation.precision); precision "fp32" gives transformers' fp32 output.
GENERATION_PRECISION = "auto"


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' picks bf16 autocast where the hardware runs it fast, else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("config field 'precision': fp16 with loss scaling needs CUDA; use bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of ``model`` at ``seq_len`` (the model's own count)."""
    return model.flops_per_token(seq_len)


def batch_flops(model: torch.nn.Module, batch: dict, tokens: int, per_token: float) -> float:
    """Training FLOPs of one batch of ``tokens`` real tokens (the model's own count, given its
    ``per_token`` figure computed once by the caller)."""
    return model.batch_flops(batch, tokens, per_token)


KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
                     "4090": 165.0, "3090": 71.0, "V100": 125.0, "T4": 65.0}


@functools.cache
def peak_tflops(device_type: str, precision: str) -> float:
    """Peak dense matmul TFLOP/s: a table for GPUs; on CPU, measured with a short matmul."""
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return value if precision in ("bf16", "fp16") else value / 2
        return 100.0
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)  # never touch the global RNG: resume must be exact
    a = torch.randn(1024, 1024, generator=g).to(dtype)
    b = torch.randn(1024, 1024, generator=g).to(dtype)
    for _ in range(3):
        a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.25:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e12

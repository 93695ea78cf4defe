"""Device, precision and throughput helpers shared by training, generation and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import time
import weakref

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


# Default of every inference entry point, CLI and Python alike: greedy output then equals fp32
# transformers'; "auto" (bf16 autocast where fast) is opt-in speed.
INFERENCE_PRECISION = "fp32"


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
    """Training FLOPs per token: 6N for the matmuls plus attention (PaLM appendix B); an LSTM
    uses each weight once per token and has no attention."""
    cfg = model.config
    n = model.num_parameters(non_embedding=True)
    if getattr(cfg, "arch", "decoder") == "lstm":
        return 6 * n
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


_MATMUL_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, int, int]]" = weakref.WeakKeyDictionary()


def batch_flops(model: torch.nn.Module, batch: dict, tokens: int, per_token: float) -> float:
    """Training FLOPs of one batch of ``tokens`` real tokens: ``tokens * per_token`` (the
    model's :func:`flops_per_token`, computed once by the caller), except for encoder-decoders,
    which are not 6N per token: encoder weights (and the decoder's cross-attention key/value
    projections) see the source tokens, the other decoder weights and the output head the
    target tokens; attention spans the source (encoder, cross) or the target (decoder
    self-attention)."""
    cfg = model.config
    if getattr(cfg, "arch", "decoder") != "encoder-decoder" or "labels" not in batch:
        return tokens * per_token
    src, tgt = tokens, int((batch["labels"] != -100).sum())
    S, T = batch["input_ids"].shape[1], batch["labels"].shape[1]
    if model not in _MATMUL_WEIGHTS:
        _MATMUL_WEIGHTS[model] = (
            *(sum(m.weight.numel() for m in blocks.modules() if isinstance(m, torch.nn.Linear))
              for blocks in (model.enc_blocks, model.dec_blocks)),
            sum(block.cross_attn.kv.weight.numel() for block in model.dec_blocks))
    enc, dec, cross_kv = _MATMUL_WEIGHTS[model]
    head = cfg.n_embd * cfg.vocab_size
    d_attn = cfg.n_head * cfg.head_dim
    matmuls = src * (enc + cross_kv) + tgt * (dec - cross_kv + head)
    attention = d_attn * (cfg.n_layer * src * S + cfg.decoder_layers * tgt * (T + S))
    return 6 * matmuls + 12 * attention


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

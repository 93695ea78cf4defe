"""Scale planning: parameters, FLOPs, memory per GPU (DDP vs FSDP) and time to a token budget,
before renting the GPUs (`lmforge plan`).

Accounting, stated so the figures can be checked by hand:

- FLOPs per token = 6N + 12·L·d·T (PaLM, appendix B): 6N for the forward and backward matmuls
  of the N weights that multiply activations (position embeddings excluded, a tied output head
  counted once) and 12·L·d·T for attention's QK^T and AV over T positions. The same formula
  gives the MFU that training logs (:func:`lmforge.runtime.flops_per_token`).
- Memory, as lmforge trains with AdamW: fp32 weights (4 B/param), fp32 gradients (4), AdamW's
  two fp32 moments (8): 16 B/param, all replicated on every GPU by DDP and split over the GPUs by
  FSDP. bf16 adds working copies: autocast's bf16 weights under DDP (2 B/param); under FSDP the
  bf16 weights of the block in use and the one prefetched, the root's (embeddings, final norm,
  unsharded through the step) and one block's fp32 gradients before they are reduce-scattered.
- Activations per block per sequence of T tokens: 34·T·d bytes in 16-bit (Korthikanti et al.
  2022, with fused attention keeping no T×T scores; twice that in fp32); with activation
  checkpointing 2·T·d per block plus one block recomputed. The logits take (a + 8) bytes per
  vocabulary entry per token (a = 2 in bf16, 4 in fp32: the logits, their fp32 copy for the
  loss and its gradient).
- A GPU holds ``usable`` (90%) of its memory for these; the rest goes to the CUDA context,
  kernels' workspaces and allocator fragmentation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.config import PRESETS, ModelConfig, preset
from ..runtime import KNOWN_PEAK_TFLOPS, flops_per_token

GIB = 1024**3
USABLE = 0.9


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class PlanConfig:
    """What `lmforge plan` is asked about (every field is a flag)."""

    model: str = _help("preset name (see `lmforge models`), model folder, run folder or .gguf "
                       "file; architecture flags override it", "gpt2")
    model_args: dict = _help("architecture overrides, e.g. {n_layer: 48}", None)
    seq_len: int | None = _help("tokens per sequence (default: the model's context length)", None)
    global_batch: int = _help("sequences per optimizer step over all GPUs", 512)
    micro_batch: int | None = _help("sequences per GPU per forward/backward (default: the "
                                    "largest that fits, at most global_batch / gpus)", None)
    gpus: int = _help("number of GPUs", 8)
    gpu_memory: float = _help("memory of one GPU in GiB", 80.0)
    gpu: str = _help("GPU model for the peak FLOP/s (" + ", ".join(KNOWN_PEAK_TFLOPS) + ")", "H100")
    peak_tflops: float = _help("peak dense TFLOP/s of one GPU at this precision (0 = from --gpu)", 0.0)
    precision: str = _help("bf16 (autocast; FSDP gathers bf16 weights) or fp32", "bf16")
    parallel: str | None = _help("ddp or fsdp: the mode to judge (default: recommend one)", None)
    tokens: float = _help("training token budget", 10e9)
    mfu: float = _help("model FLOPs utilization to assume (0.3-0.5 is typical on GPUs)", 0.4)
    activation_checkpointing: bool = _help("recompute block activations in backward", False)

    def validate(self) -> "PlanConfig":
        for name in ("global_batch", "gpus"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {getattr(self, name)}")
        for name in ("micro_batch", "seq_len"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value}")
        if not self.gpu_memory > 0 or not self.tokens > 0 or self.peak_tflops < 0:
            raise ConfigError("config fields 'gpu_memory' and 'tokens' must be positive, "
                              "'peak_tflops' >= 0")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"config field 'mfu' must be in (0, 1], got {self.mfu}")
        if self.parallel not in (None, "ddp", "fsdp"):
            raise ConfigError(f"config field 'parallel' must be ddp or fsdp, got {self.parallel!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"config field 'precision' must be bf16 or fp32, got {self.precision!r}")
        if self.global_batch % self.gpus:
            raise ConfigError(f"global_batch ({self.global_batch}) must divide evenly over "
                              f"{self.gpus} GPUs")
        if self.micro_batch and (self.global_batch // self.gpus) % self.micro_batch:
            raise ConfigError(f"micro_batch ({self.micro_batch}) must divide the "
                              f"{self.global_batch // self.gpus} sequences per GPU")
        return self

    def peak(self) -> float:
        """Peak TFLOP/s of one GPU at this precision (fp32 runs at half the bf16 table)."""
        if self.peak_tflops:
            return self.peak_tflops
        for key, value in KNOWN_PEAK_TFLOPS.items():
            if key.lower() == self.gpu.lower():
                return value if self.precision == "bf16" else value / 2
        raise ConfigError(f"unknown GPU {self.gpu!r}; pass --peak-tflops or one of "
                          f"{', '.join(KNOWN_PEAK_TFLOPS)}")


def _meta_model(cfg: ModelConfig):
    import torch

    from ..models.io import build_model
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build_model(cfg)


def memory(model, cfg: ModelConfig, plan: PlanConfig, seq_len: int, micro_batch: int) -> dict:
    """Bytes per GPU for DDP and FSDP (see the module docstring for what is counted)."""
    n = model.num_parameters()
    blocks = [b for name, b in model.named_children() if name.endswith("blocks")]
    block_params = max((sum(p.numel() for p in block[0].parameters()) for block in blocks), default=0)
    root_params = n - sum(sum(p.numel() for p in b.parameters()) for b in blocks)
    layers = sum(len(b) for b in blocks)
    wbytes = 2 if plan.precision == "bf16" else 4
    states = 16 * n  # fp32 weights, fp32 gradients, AdamW's two fp32 moments
    per_block = 34 * seq_len * cfg.n_embd * micro_batch * wbytes // 2
    if plan.activation_checkpointing:
        activations = layers * 2 * seq_len * cfg.n_embd * micro_batch * wbytes // 2 + per_block
    else:
        activations = layers * per_block
    logits = seq_len * micro_batch * cfg.vocab_size * (wbytes + 8)
    ddp = {"states": states, "working": 2 * n if plan.precision == "bf16" else 0,
           "activations": activations, "logits": logits}
    fsdp = {"states": states / plan.gpus,
            "working": wbytes * (2 * block_params + root_params) + 4 * block_params,
            "activations": activations, "logits": logits}
    usable = USABLE * plan.gpu_memory * GIB
    out = {}
    for name, parts in (("ddp", ddp), ("fsdp", fsdp)):
        total = sum(parts.values())
        out[name] = {**{k: int(v) for k, v in parts.items()}, "total": int(total),
                     "fits": total <= usable}
    return out


def plan_model_config(model: str, overrides: dict | None = None) -> ModelConfig:
    """The architecture to plan: a preset's, or the one a model folder, a training run folder
    (its exported model, or the config it started with) or a .gguf file holds."""
    overrides = overrides or {}
    path = Path(model)
    if model in PRESETS or not path.exists():
        return preset(model, **overrides)
    from ..models.io import CONFIG_NAME
    for folder in (path, path / "model"):
        config = folder / CONFIG_NAME
        if config.is_file() and "lmforge" in _read_json(config):
            cfg = ModelConfig.load(config)
            break
    else:
        run_config = path / "config.yaml"
        resolved = _run_model_config(run_config) if run_config.is_file() else None
        if resolved is not None:
            cfg = ModelConfig.from_dict(resolved, where=str(run_config))
        else:  # a Hugging Face folder or a GGUF file: its loader reads the architecture
            from ..hub import load_model
            cfg = load_model(path)[0].config
    if not overrides:
        return cfg
    data = cfg.to_dict()
    # Sizes derived from the ones overridden are derived again, as a preset's would be.
    for derived, inputs in (("head_dim", ("n_embd", "n_head")), ("intermediate_size", ("n_embd",)),
                            ("n_kv_head", ("n_head",))):
        if derived not in overrides and any(k in overrides for k in inputs):
            data[derived] = None
    return ModelConfig.from_dict({**data, **overrides}, where=model)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _run_model_config(path: Path) -> dict | None:
    """The architecture a training run recorded when it started (config.yaml, resolved)."""
    from ..config import load_file
    resolved = load_file(path).get("resolved") or {}
    return resolved.get("model_config") if isinstance(resolved, dict) else None


def make_plan(plan: PlanConfig) -> dict:
    """The figures `lmforge plan` prints (and writes with --json)."""
    plan.validate()
    cfg = plan_model_config(plan.model, plan.model_args)
    model = _meta_model(cfg)
    if model.recurrent:
        raise ConfigError("lmforge plan covers Transformer models, not LSTMs")
    seq_len = plan.seq_len or cfg.context_length
    if seq_len > cfg.context_length:
        raise ConfigError(f"seq_len ({seq_len}) is longer than the model context ({cfg.context_length})")
    per_gpu = plan.global_batch // plan.gpus
    candidates = [m for m in range(per_gpu, 0, -1) if per_gpu % m == 0]
    usable = USABLE * plan.gpu_memory * GIB
    modes = {}
    for mode in ("ddp", "fsdp"):
        micro = plan.micro_batch or next(
            (m for m in candidates if memory(model, cfg, plan, seq_len, m)[mode]["total"] <= usable), 1)
        modes[mode] = {**memory(model, cfg, plan, seq_len, micro)[mode], "micro_batch": micro,
                       "grad_accum": per_gpu // micro}
    fpt = flops_per_token(model, seq_len)
    peak = plan.peak()
    tokens_per_step = plan.global_batch * seq_len
    tokens_per_sec = plan.gpus * peak * 1e12 * plan.mfu / fpt
    n = model.num_parameters()
    best = "ddp" if modes["ddp"]["fits"] else "fsdp" if modes["fsdp"]["fits"] else None
    chosen = plan.parallel or best
    return {
        "model": plan.model, "parameters": n,
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "seq_len": seq_len, "global_batch": plan.global_batch, "gpus": plan.gpus,
        "gpu_memory_gib": plan.gpu_memory, "precision": plan.precision,
        "flops_per_token": fpt, "flops_formula": "6N + 12*L*d*T (PaLM appendix B)",
        "train_flops": fpt * plan.tokens, "tokens": plan.tokens,
        "tokens_per_step": tokens_per_step, "steps": int(-(-plan.tokens // tokens_per_step)),
        "peak_tflops_per_gpu": peak, "mfu": plan.mfu, "tokens_per_sec": tokens_per_sec,
        "seconds": plan.tokens / tokens_per_sec, "chinchilla_tokens": 20 * n,
        "memory": modes, "recommended": best, "parallel": chosen,
        "fits": chosen is not None and modes[chosen]["fits"],
    }


def _gib(b: float) -> str:
    return f"{b / GIB:,.1f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:,.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


def format_plan(p: dict) -> str:
    """The plan as the terminal table."""
    lines = [f"model {p['model']}: {p['parameters'] / 1e6:,.1f}M parameters "
             f"({p['non_embedding_parameters'] / 1e6:,.1f}M without position embeddings), "
             f"seq_len {p['seq_len']}",
             f"FLOPs per token {p['flops_per_token'] / 1e9:,.3f} G = {p['flops_formula']}; "
             f"{p['tokens']:.3g} tokens = {p['train_flops']:.3g} FLOPs",
             f"{p['gpus']} GPUs x {p['peak_tflops_per_gpu']:g} TFLOP/s peak at MFU "
             f"{100 * p['mfu']:.0f}%: {p['tokens_per_sec']:,.0f} tokens/s, "
             f"{p['steps']:,} steps of {p['tokens_per_step']:,} tokens, "
             f"{_duration(p['seconds'])} to the budget",
             f"(Chinchilla-optimal budget for this size: about {p['chinchilla_tokens']:.3g} tokens)",
             ""]
    title = f"memory per GPU ({p['gpu_memory_gib']:g} GiB, {p['precision']}, AdamW)"
    lines.append(f"{title:<48}{'DDP':>12}{'FSDP':>12}")
    ddp, fsdp = p["memory"]["ddp"], p["memory"]["fsdp"]
    rows = [("weights+grads+AdamW", "states"), ("working copies", "working"),
            ("activations", "activations"), ("logits", "logits"), ("total", "total")]
    for label, key in rows:
        lines.append(f"  {label:<46}{_gib(ddp[key]):>12}{_gib(fsdp[key]):>12}")
    for label, key in (("micro-batch per GPU", "micro_batch"), ("gradient accumulation", "grad_accum")):
        lines.append(f"  {label:<46}{ddp[key]:>12}{fsdp[key]:>12}")
    lines.append(f"  {'fits in ' + str(int(100 * USABLE)) + '% of the memory':<46}"
                 f"{'yes' if ddp['fits'] else 'NO':>12}{'yes' if fsdp['fits'] else 'NO':>12}")
    best, chosen = p["recommended"], p["parallel"]
    lines.append("")
    if chosen and chosen != best:
        usage = p["memory"][chosen]["total"]
        lines.append(f"--parallel {chosen} {'fits' if p['fits'] else 'does NOT fit'}: "
                     f"{_gib(usage)} of {_gib(USABLE * p['gpu_memory_gib'] * GIB)} usable per GPU")
    if best:
        lines.append(f"use --parallel {best}" + (" (fits without sharding: least communication)"
                                                  if best == "ddp" else " (sharding makes it fit)"))
    else:
        lines.append("neither fits: more GPUs, activation checkpointing, a shorter sequence or "
                     "tensor parallelism")
    return "\n".join(lines)

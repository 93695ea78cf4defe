"""Training-step throughput of lmforge against Hugging Face ``transformers`` at identical configs.

One training step = forward + cross-entropy loss + backward + gradient clipping (norm 1.0) +
AdamW step + zero_grad, on the same random token batches for every implementation. Rows:

* ``transformers fp32``: ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` on their default path (fp32,
  ``attn_implementation`` left at its default, sdpa) with ``torch.optim.AdamW`` (foreach).
* ``lmforge default``: what ``lmforge pretrain`` runs: lmforge's ``GPT``, the ``CausalLM``
  objective, ``build_optimizer`` (fused AdamW, no decay on norms/biases/embeddings) and
  ``autocast`` at ``resolve_precision("auto")`` (bf16 on CPUs with AVX512-BF16/AMX).
* ``lmforge fp32``: the same in fp32, the like-for-like comparison.
* ``lmforge compiled`` (only with ``--compile``): the default row under ``torch.compile``; its
  first step (compilation) is reported separately.

Implementations are interleaved step by step so machine noise hits all of them; the table shows
the median of the timed steps after warm-up and, as the speedup, the median of per-round paired
time ratios. It is printed and appended to ``benchmarks/RESULTS.md`` with the machine, the
versions and the load average (other processes on the machine skew timings: run it on an idle
machine).

Run (about 3 minutes on an idle 2-core CPU)::

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --configs baby --archs llama --steps 20 --no-save
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import transformers

from lmforge.models.config import ModelConfig
from lmforge.models.transformer import GPT
from lmforge.objectives.causal_lm import CausalLM
from lmforge.training.config import TrainConfig
from lmforge.training.optim import build_optimizer
from lmforge.runtime import autocast, cpu_has_fast_bf16, resolve_precision

RESULTS = Path(__file__).with_name("RESULTS.md")
OPTIM = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration (nanoGPT's shakespeare-char models)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int = 65

    @property
    def llama_intermediate(self) -> int:
        """SwiGLU width with about the parameters of a 4x GELU MLP: 8/3 * n_embd, rounded to 64."""
        return -(-8 * self.n_embd // 3 // 64) * 64


CONFIGS = {
    "baby": Shape(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "10m": Shape(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16),
}


# ---- models at identical configs ------------------------------------------------------------
def lmforge_config(arch: str, s: Shape) -> ModelConfig:
    common = dict(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, context_length=s.block_size,
                  vocab_size=s.vocab_size, dropout=0.0, tie_embeddings=True)
    if arch == "gpt2":
        return ModelConfig(**common)
    return ModelConfig(**common, pos_embedding="rope", norm="rmsnorm", mlp="swiglu",
                       activation="silu", bias=False, intermediate_size=s.llama_intermediate,
                       norm_eps=1e-5, rope_base=10000.0)


def hf_model(arch: str, s: Shape) -> torch.nn.Module:
    if arch == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=s.vocab_size, n_positions=s.block_size, n_embd=s.n_embd, n_layer=s.n_layer,
            n_head=s.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, activation_function="gelu_new", tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 lies outside a char vocab
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.n_embd, intermediate_size=s.llama_intermediate,
        num_hidden_layers=s.n_layer, num_attention_heads=s.n_head, num_key_value_heads=s.n_head,
        max_position_embeddings=s.block_size, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_dropout=0.0, rope_theta=10000.0)
    return transformers.LlamaForCausalLM(cfg)


# ---- one training step per implementation ---------------------------------------------------
@dataclass
class Runner:
    """A named implementation: ``step(windows)`` runs one full training step."""

    name: str
    precision: str
    params: int
    step: Callable[[torch.Tensor], float]
    compiled: bool = False
    first_step_s: float | None = None  # includes torch.compile's compilation when compiled


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def hf_runner(arch: str, s: Shape) -> Runner:
    model = hf_model(arch, s).train()
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIM)  # default: foreach implementation

    def step(windows: torch.Tensor) -> float:
        x, y = windows[:, :-1], windows[:, 1:]
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        clip_and_step(model, optimizer)
        return loss.item()

    params = sum(p.numel() for p in model.parameters())
    attn = model.config._attn_implementation
    return Runner(f"transformers fp32 ({attn})", "fp32", params, step)


def lmforge_runner(arch: str, s: Shape, precision: str, compile: bool = False) -> Runner:
    """Mirrors ``Trainer._train_step`` with lmforge's own building blocks."""
    device = torch.device("cpu")
    model = GPT(lmforge_config(arch, s)).train()
    train_cfg = TrainConfig(lr=OPTIM["lr"], beta1=OPTIM["betas"][0], beta2=OPTIM["betas"][1],
                            eps=OPTIM["eps"], weight_decay=OPTIM["weight_decay"], grad_clip=GRAD_CLIP)
    optimizer = build_optimizer(model, train_cfg, device)
    objective = CausalLM()
    resolved = resolve_precision(precision, device)
    forward_model = torch.compile(model) if compile else model

    def step(windows: torch.Tensor) -> float:
        with autocast(device, resolved):
            loss = objective.loss(forward_model, objective.make_batch(windows))
        loss.backward()
        clip_and_step(model, optimizer)
        return loss.item()

    label = "compiled" if compile else ("default" if precision == "auto" else precision)
    return Runner(f"lmforge {label}", resolved, model.num_parameters(), step, compiled=compile)


# ---- timing ---------------------------------------------------------------------------------
def time_runners(runners: list[Runner], s: Shape, warmup: int, steps: int,
                 seed: int = 0) -> dict[str, list[float]]:
    """Seconds per timed step of each runner. Implementations are interleaved: each round runs
    every one once (order rotated) on the same batch, so round i of each list is comparable."""
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(s.vocab_size, (s.batch_size, s.block_size + 1), generator=gen)
               for _ in range(warmup + steps)]
    for r in runners:  # first step separately: it includes torch.compile's compilation
        t0 = time.perf_counter()
        r.step(batches[0])
        r.first_step_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for i, windows in enumerate(batches[1:], start=1):
        order = runners[i % len(runners):] + runners[:i % len(runners)]
        for r in order:
            t0 = time.perf_counter()
            r.step(windows)
            if i >= warmup:
                times[r.name].append(time.perf_counter() - t0)
    return times


def benchmark(arch: str, config: str, args: argparse.Namespace) -> list[dict]:
    s = CONFIGS[config]
    torch.manual_seed(0)
    runners = [hf_runner(arch, s), lmforge_runner(arch, s, "auto"), lmforge_runner(arch, s, "fp32")]
    if args.compile:
        runners.append(lmforge_runner(arch, s, "auto", compile=True))
    times = time_runners(runners, s, args.warmup, args.steps)
    tokens = s.batch_size * s.block_size
    base = times[runners[0].name]
    rows = []
    for r in runners:
        sec = statistics.median(times[r.name])
        # Paired per-round ratios: load from other processes that drifts during the run cancels.
        speedup = statistics.median(b / t for b, t in zip(base, times[r.name]))
        rows.append({"arch": arch, "config": config, "params": r.params, "impl": r.name,
                     "precision": r.precision, "ms": 1e3 * sec, "tok_s": tokens / sec,
                     "speedup": speedup,
                     "compile_s": r.first_step_s if r.compiled else None})
    return rows


# ---- report ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> str:
    bf16 = "AVX512-BF16/AMX: yes" if cpu_has_fast_bf16() else "AVX512-BF16/AMX: no"
    precision = resolve_precision("auto", torch.device("cpu"))
    return (f"- machine: {cpu_model()}, {os.cpu_count()} cores, {bf16}; "
            f"torch threads {threads}; load average at start {os.getloadavg()[0]:.2f}\n"
            f"- torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}\n"
            f"- lmforge default precision (`resolve_precision('auto')`): {precision}\n")


def table(rows: list[dict], steps: int, warmup: int) -> str:
    lines = ["| arch | config | params | implementation | precision | ms/step | tokens/s | vs transformers |",
             "|---|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        impl = r["impl"] + (f" (compile {r['compile_s']:.0f} s)" if r["compile_s"] else "")
        lines.append(f"| {r['arch']} | {r['config']} | {r['params'] / 1e6:.2f}M | {impl} | "
                     f"{r['precision']} | {r['ms']:.1f} | {r['tok_s']:,.0f} | {r['speedup']:.2f}x |")
    lines.append(f"\nms/step: median of {steps} timed steps after {warmup} warm-up steps; a step = "
                 "forward, loss, backward, clip 1.0, AdamW, zero_grad. Implementations run "
                 "interleaved, one step each per round on the same batch; 'vs transformers' is "
                 "the median over rounds of the paired time ratio.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="baby,10m", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--archs", default="gpt2,llama", help="comma list of gpt2, llama")
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads for every implementation (default: usable cores)")
    p.add_argument("--compile", action="store_true", help="also time lmforge under torch.compile")
    p.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS.name}")
    args = p.parse_args(argv)
    configs, archs = args.configs.split(","), args.archs.split(",")
    for name in configs:
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for arch in archs:
        if arch not in ("gpt2", "llama"):
            p.error(f"unknown arch {arch!r}; choose from gpt2, llama")
    torch.set_num_threads(args.threads)

    env = environment(args.threads)
    print(env)
    rows = []
    for config in configs:
        for arch in archs:
            t0 = time.perf_counter()
            rows += benchmark(arch, config, args)
            print(f"[{arch} {config}: {time.perf_counter() - t0:.0f} s]", flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    publish(table(rows, args.steps, args.warmup), f"{stamp}: training step, lmforge vs transformers",
            env, save=not args.no_save)


def publish(report: str, heading: str, env: str, save: bool) -> None:
    """Print the table with the closing load average and, if ``save``, append it to RESULTS.md."""
    report += f"Load average at the end: {os.getloadavg()[0]:.2f} (other processes skew timings).\n"
    print("\n" + report)
    if save:
        if not RESULTS.exists():
            RESULTS.write_text("# lmforge benchmark results\n")
        with RESULTS.open("a") as f:
            f.write(f"\n## {heading}\n\n{env}\n{report}")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()

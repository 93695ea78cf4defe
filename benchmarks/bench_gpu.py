"""GPT-2 124M training throughput and MFU on one GPU: lmforge against transformers' GPT2LMHeadModel.

Every row trains the same GPT-2 124M shape (12 layers, 12 heads, d 768, T 1024, tied
embeddings, no dropout) on the same random token batches, one step = forward + cross-entropy +
backward + clip 1.0 + AdamW + zero_grad + ``loss.item()`` (as ``lmforge pretrain`` does each
step), all in bf16 autocast with fused AdamW (torch's ``fused=True``):

* ``transformers eager`` / ``transformers compiled``: ``GPT2LMHeadModel`` (sdpa attention),
  the plain model, and ``torch.compile`` of a function computing its logits and loss;
* ``lmforge eager`` / ``lmforge compiled``: lmforge's ``GPT`` with the ``CausalLM`` objective and
  ``build_optimizer``; compiled, the model and loss as one graph, as
  ``lmforge pretrain --compile true`` runs them.

MFU = tokens/s x training FLOPs per token (6N + 12·L·d·T, :func:`flops_per_token`, the figure
``lmforge plan`` uses) / the GPU's dense bf16 peak (989 TFLOP/s for H100 SXM and H200).
Steps are timed with ``torch.cuda.synchronize`` around a run of timed steps after warm-up (the
first step, which compiles, is reported separately). The vocabulary is GPT-2's 50257 or, with
``--vocab 50304``, padded to a multiple of 64 as nanoGPT does (same for both libraries).

    python benchmarks/bench_gpu.py --batch 32 --vocab 50304 --out results.md
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import Shape, clip_and_step, hf_model, lmforge_config  # noqa: E402

from lmforge.models.transformer import GPT  # noqa: E402
from lmforge.objectives.causal_lm import CausalLM  # noqa: E402
from lmforge.training.config import TrainConfig  # noqa: E402
from lmforge.training.distributed import ObjectiveLoss  # noqa: E402
from lmforge.training.optim import build_optimizer  # noqa: E402
from lmforge.runtime import autocast, flops_per_token, peak_tflops  # noqa: E402

OPTIM = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
PROFILE = False
SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
          "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64)}  # a CPU dry run


def hf_step(s: Shape, device: torch.device, compile: bool) -> tuple[Callable, torch.nn.Module]:
    model = hf_model("gpt2", s).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIM, fused=True)

    def loss_of(windows: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=windows[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())

    loss_fn = torch.compile(loss_of) if compile else loss_of  # model and loss as one graph

    def step(windows: torch.Tensor) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(windows)
        loss.backward()
        clip_and_step(model, optimizer)
        return loss.item()

    return step, model


def lmforge_step(s: Shape, device: torch.device, compile: bool) -> tuple[Callable, torch.nn.Module]:
    model = GPT(lmforge_config("gpt2", s)).to(device).train()
    cfg = TrainConfig(lr=OPTIM["lr"], beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    optimizer = build_optimizer(model, cfg, device)
    objective = CausalLM()
    loss_fn = ObjectiveLoss(model, objective)  # what the Trainer compiles under --compile
    loss_fn = torch.compile(loss_fn) if compile else loss_fn

    def step(windows: torch.Tensor) -> float:
        with autocast(device, "bf16"):
            loss = loss_fn(objective.make_batch(windows))
        loss.backward()
        clip_and_step(model, optimizer)
        return loss.item()

    return step, model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, build: Callable, s: Shape, device: torch.device, compile: bool,
            warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    step, model = build(s, device, compile)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(s.vocab_size, (s.batch_size, s.block_size + 1), generator=gen).to(device)
               for _ in range(4)]  # rotated; random tokens (never zeros)
    t0 = time.perf_counter()
    first_loss = step(batches[0])
    sync(device)
    first = time.perf_counter() - t0
    for i in range(warmup):
        step(batches[i % 4])
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % 4])
    sync(device)
    sec = (time.perf_counter() - t0) / steps
    if PROFILE and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                step(batches[i % 4])
            sync(device)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    fpt = flops_per_token(_lm_meta(s), s.block_size)
    tok_s = s.batch_size * s.block_size / sec
    row = {"impl": name, "compiled": compile, "first_step_s": first, "ms": 1e3 * sec,
           "tok_s": tok_s, "flops_per_token": fpt, "peak_gib": mem, "first_loss": first_loss,
           "last_loss": loss}
    print(json.dumps(row), flush=True)
    del step, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def _lm_meta(s: Shape) -> GPT:
    with torch.device("meta"):
        return GPT(lmforge_config("gpt2", s))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="gpt2", choices=list(SHAPES))
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary size (50304: padded)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--impls", default="transformers-eager,lmforge-eager,transformers-compiled,lmforge-compiled")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="", help="write the markdown table here")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of 3 steps")
    args = p.parse_args()
    global PROFILE
    PROFILE = args.profile
    device = torch.device(args.device)
    s = Shape(**SHAPES[args.shape], batch_size=args.batch, vocab_size=args.vocab)
    builders = {"transformers": hf_step, "lmforge": lmforge_step}
    rows = []
    for impl in args.impls.split(","):
        lib, mode = impl.split("-")
        rows.append(measure(f"{lib} {mode}", builders[lib], s, device, mode == "compiled",
                            args.warmup, args.steps))
    peak = peak_tflops(device.type, "bf16")
    import transformers
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    lines = [f"{gpu}, torch {torch.__version__}, transformers {transformers.__version__}, Python "
             f"{platform.python_version()}; GPT-2 124M shape, vocab {s.vocab_size}, batch "
             f"{s.batch_size} x {s.block_size} tokens, bf16 autocast, fused AdamW; mean over "
             f"{args.steps} consecutive steps after {args.warmup} warm-up; peak {peak:.0f} TFLOP/s.", "",
             "| implementation | first step (compile) | ms/step | tokens/s | MFU | peak memory | vs transformers eager |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = next((r["ms"] for r in rows if r["impl"] == "transformers eager"), None)
    for r in rows:
        mfu = r["tok_s"] * r["flops_per_token"] / (peak * 1e12)
        vs = f"{base / r['ms']:.2f}x" if base else "-"
        lines.append(f"| {r['impl']} | {r['first_step_s']:.1f} s | {r['ms']:.1f} | {r['tok_s']:,.0f} | "
                     f"{100 * mfu:.1f}% | {r['peak_gib']:.1f} GiB | {vs} |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()

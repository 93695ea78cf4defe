"""Sparse vs dense masked-LM prediction on bert-mini (block 128, one thread): the sparse path
gathers the ~15% masked positions before the MLM head (what `objective mlm` does), the dense one
projects every position onto the vocabulary. Prints ms per training step (forward + backward)
and the speed-up, and checks the two losses agree.

    python benchmarks/sparse_mlm.py [--steps 10] [--batch 32] [--vocab 30522] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.models import build_model, preset


def step_ms(model, ids, labels, picked, sparse: bool, steps: int) -> tuple[float, float]:
    times, loss = [], None
    for i in range(steps + 2):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        hidden = model(ids)
        if sparse:
            loss = F.cross_entropy(model.mlm_logits(hidden, picked), labels[picked])
        else:
            loss = F.cross_entropy(model.mlm_logits(hidden).flatten(0, 1), labels.flatten())
        loss.backward()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2], float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per path (median reported)")
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--block", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--vocab", type=int, default=30522, help="vocabulary (BERT's: 30522)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(preset("bert-mini", vocab_size=args.vocab, norm_placement="pre")).train()
    model.drop.p = 0.0
    for m in model.modules():
        if hasattr(m, "p") and isinstance(m.p, float):
            m.p = 0.0
    ids = torch.randint(5, args.vocab, (args.batch, args.block))
    picked = torch.rand(ids.shape) < 0.15
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    dense_ms, dense_loss = step_ms(model, ids, labels, picked, False, args.steps)
    sparse_ms, sparse_loss = step_ms(model, ids, labels, picked, True, args.steps)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    out = {"cpu": cpu, "threads": 1, "batch": args.batch, "block": args.block, "vocab": args.vocab,
           "dense_ms_per_step": dense_ms, "sparse_ms_per_step": sparse_ms,
           "speedup": dense_ms / sparse_ms, "dense_loss": dense_loss, "sparse_loss": sparse_loss}
    print(f"bert-mini, batch {args.batch} x block {args.block}, vocab {args.vocab}, 1 thread ({cpu})")
    print(f"{'path':<8} {'ms/step':>9} {'loss':>8}")
    print(f"{'dense':<8} {dense_ms:>9.1f} {dense_loss:>8.4f}")
    print(f"{'sparse':<8} {sparse_ms:>9.1f} {sparse_loss:>8.4f}")
    print(f"speed-up x{dense_ms / sparse_ms:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

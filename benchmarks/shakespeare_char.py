"""Quality check: nanoGPT's CPU "baby" config on Tiny Shakespeare, char level, 2,000 iterations.

nanoGPT reaches a validation loss of about 1.88 with this config; lmforge should too. Uses
the public API only: char tokenizer -> prepare (first 90% train, last 10% val) -> pretrain.

    python benchmarks/shakespeare_char.py [--out runs/bench-shakespeare-char] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import torch

import lmforge
from lmforge.quickstart import packaged_corpus

RESULTS = Path(__file__).with_name("RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-shakespeare-char")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--record", action="store_true", help="append the result to RESULTS.md")
    args = parser.parse_args()

    out = Path(args.out)
    text = packaged_corpus().read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        train_txt, val_txt = Path(tmp) / "train.txt", Path(tmp) / "val.txt"
        train_txt.write_text(text[:cut], encoding="utf-8")
        val_txt.write_text(text[cut:], encoding="utf-8")
        tok = lmforge.train_tokenizer([packaged_corpus()], kind="char")
        lmforge.prepare_corpus([train_txt], tok, out / "data", val_inputs=[str(val_txt)],
                               overwrite=True, dedup=False)
    # nanoGPT config/train_shakespeare_char.py with its "baby" CPU overrides.
    cfg = lmforge.TrainConfig(
        data=str(out / "data"), out_dir=str(out / "run"), model="baby", block_size=64,
        batch_size=12, max_steps=args.steps, lr=1e-3, min_lr=1e-4, warmup_steps=100,
        beta2=0.99, weight_decay=0.1, grad_clip=1.0, dropout=0.0, eval_interval=250,
        eval_batches=20, precision=args.precision, progress=False, log_interval=100)
    start = time.perf_counter()
    result = lmforge.Trainer(cfg, overwrite=True).fit()
    seconds = time.perf_counter() - start
    line = (f"baby char model, {args.steps} iterations, precision {args.precision}: "
            f"val loss **{result['val_loss']:.4f}** (nanoGPT: 1.88), train loss "
            f"{result['train_loss']:.4f}, {seconds:.0f} s")
    print(line)
    if args.record:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(f"\n## Tiny Shakespeare char quality check ({datetime.date.today()})\n\n"
                    f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads.\n\n- {line}\n")


if __name__ == "__main__":
    main()

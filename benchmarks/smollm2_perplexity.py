"""SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF file) perplexity on the shared
WikiText-2 validation file and on Tiny Shakespeare, computed by lmforge and by transformers'
LlamaForCausalLM on the same weights with the same sliding windows (they must agree).

Each text is scored as one document after SmolLM2's <|endoftext|>; windows of --window tokens
(1024) start --stride (512) apart, each scoring the tokens the previous one did not (Hugging
Face's perplexity recipe). Perplexity = exp(-mean natural-log probability per token). fp32.
Whole files with --window 2048 --stride 2048 take over two hours on 2 CPU cores (both
libraries), seconds on a GPU (``--device cuda``; ``SMOLLM2_GGUF`` and ``LMFORGE_CORPORA`` point at
the model file and the corpora where the shared folder and the PyPI package are not installed).

    python benchmarks/smollm2_perplexity.py [--max-tokens N] [--window W --stride S] [--device D] [--save]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import gguf_path  # noqa: E402
from bench_train import publish  # noqa: E402

from lmforge.evaluation.scoring import token_logprobs  # noqa: E402
from lmforge.interop.hf import export_hf  # noqa: E402
from lmforge.hub import load_model  # noqa: E402
from lmforge.tokenization import eos_token_id  # noqa: E402

CORPORA = Path(os.environ.get("LMFORGE_CORPORA", Path(__file__).resolve().parents[2] / "shared/data/corpora"))


class HFCausalLM(torch.nn.Module):
    """transformers' model behind lmforge's call signature, so both are scored by one function."""

    def __init__(self, hf, config):
        super().__init__()
        self.hf, self.config = hf, config

    def forward(self, ids):
        return self.hf(ids).logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0: all)")
    ap.add_argument("--window", type=int, default=1024, help="tokens per window (model context <= 2048)")
    ap.add_argument("--stride", type=int, default=512, help="new tokens scored per window after the first")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fp32 either way; TF32 off)")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.backends.cuda.matmul.allow_tf32 = False  # the default; fp32 must stay fp32
    from transformers import AutoModelForCausalLM

    ours, tok, _ = load_model(os.environ.get("SMOLLM2_GGUF") or gguf_path())
    folder = Path(tempfile.mkdtemp()) / "smollm2-hf"
    export_hf(ours, tok, folder)
    theirs = HFCausalLM(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), ours.config)
    ours, theirs = ours.to(args.device).eval(), theirs.to(args.device)
    rows = []
    for name, text in (("wikitext2_tokenized_valid.txt", (CORPORA / "wikitext2_tokenized_valid.txt").read_text()),
                       ("tinyshakespeare.txt", (CORPORA / "tinyshakespeare.txt").read_text())):
        ids = [eos_token_id(tok)] + tok.encode(text, add_special_tokens=False).ids
        if args.max_tokens:
            ids = ids[:args.max_tokens + 1]
        result = []
        for who, model in (("lmforge", ours), ("transformers", theirs)):
            t0 = time.perf_counter()
            with torch.no_grad():
                lp = token_logprobs(model, ids, stride=args.stride, max_length=args.window)
            result.append((math.exp(-lp.mean().item()), time.perf_counter() - t0, lp))
        diff = (result[0][2] - result[1][2]).abs().max().item()
        rows.append((name, len(ids) - 1, result[0][0], result[1][0], diff, result[0][1], result[1][1]))
    report = ("| text | tokens scored | lmforge ppl | transformers ppl | max abs diff of token log-probs "
              "| lmforge time | transformers time |\n|---|---:|---:|---:|---:|---:|---:|\n")
    for name, n, p_ours, p_hf, diff, t_ours, t_hf in rows:
        report += f"| {name} | {n:,} | {p_ours:.3f} | {p_hf:.3f} | {diff:.1e} | {t_ours:.0f} s | {t_hf:.0f} s |\n"
    import transformers
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()}, 2 threads"
    env = (f"{where}, torch {torch.__version__}, transformers {transformers.__version__}, "
           f"fp32; windows of {args.window} tokens, stride {args.stride}.")
    publish(report, "SmolLM2-135M-Instruct perplexity (GGUF Q4_1, dequantized)", env, args.save)


if __name__ == "__main__":
    main()

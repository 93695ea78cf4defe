"""Pretraining-objective training steps of lmforge against Hugging Face ``transformers``.

Two workloads, each at identical model configs and on the same batches for every implementation:

* ``mlm``: masked LM on a BERT-mini encoder (4 layers, 4 heads, 256 hidden, FFN 1024, vocab
  30522), batch 16 x 128 tokens, 15% of positions selected (the same positions for everyone).
  lmforge: ``Encoder`` (preset ``bert-mini``) with the ``MaskedLM`` objective's loss, which
  projects only the selected positions onto the vocabulary. transformers: ``BertForMaskedLM``
  with ``labels`` -100 except at the selected positions (its default path: full-sequence logits).
* ``seq2seq``: span-corruption-shaped seq2seq on T5-tiny (lmforge preset ``t5-tiny``; an
  equivalent ``T5Config`` for ``T5ForConditionalGeneration``), batch 16, encoder input 128
  tokens, decoder target 32 tokens. lmforge's loss is the encoder-decoder objectives' shared
  ``Seq2SeqObjective.loss``.

Rows per workload: ``transformers fp32`` (default path, ``torch.optim.AdamW``), ``lmforge
default`` (``build_optimizer``'s fused AdamW, ``autocast`` at ``resolve_precision("auto")``) and
``lmforge fp32``. A step = forward + loss + backward + clip 1.0 + optimizer step + zero_grad.
Timing, interleaving and the report follow ``bench_train.py`` (whose helpers are reused); the
table is printed and appended to ``benchmarks/RESULTS.md``.

Run (a few minutes on an idle 2-core CPU)::

    .venv/bin/python benchmarks/bench_pretrain_objectives.py
    .venv/bin/python benchmarks/bench_pretrain_objectives.py --workloads seq2seq --steps 4 --no-save
    python3 benchmarks/bench_pretrain_objectives.py --device cuda --steps 20 --no-save   # a GPU
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import GRAD_CLIP, OPTIM, RESULTS, Runner, clip_and_step, environment, publish  # noqa: E402

from lmforge.models.config import ModelConfig, preset  # noqa: E402
from lmforge.models.encoder import Encoder  # noqa: E402
from lmforge.models.encoder_decoder import EncoderDecoder  # noqa: E402
from lmforge.objectives.mlm import MaskedLM  # noqa: E402
from lmforge.objectives.seq2seq import Seq2SeqObjective  # noqa: E402
from lmforge.training.config import TrainConfig  # noqa: E402
from lmforge.training.optim import build_optimizer  # noqa: E402
from lmforge.runtime import autocast, resolve_precision  # noqa: E402

BATCH = 16
MLM_SEQ, MASK_PROB, MASK_ID = 128, 0.15, 103  # 103 = [MASK] in BERT's uncased vocab
SRC_LEN, TGT_LEN = 128, 32
TARGETS = {"mlm": 3.0, "seq2seq": 2.0}  # lmforge default vs transformers fp32, from the issue
DEVICE = torch.device("cpu")  # --device


def objective_loss(cls: type) -> Callable[[torch.nn.Module, dict], torch.Tensor]:
    """The objective's own ``loss`` method. Building the objective needs a tokenizer (for its
    batch making); ``loss`` reads no objective state, so an uninitialised instance serves."""
    return cls.__new__(cls).loss


# ---- models at identical configs ------------------------------------------------------------
def bert_cfg() -> ModelConfig:
    return preset("bert-mini")


def t5_cfg() -> ModelConfig:
    return preset("t5-tiny", decoder_start_token_id=0)


def hf_bert(cfg: ModelConfig) -> torch.nn.Module:
    hf = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate_size,
        hidden_act="gelu", hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.context_length, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings)
    return transformers.BertForMaskedLM(hf)


def hf_t5(cfg: ModelConfig) -> torch.nn.Module:
    if cfg.mlp == "mlp":
        ff = cfg.activation  # "relu": T5 v1.0
    else:
        ff = "gated-" + {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation)
    hf = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.n_embd, d_kv=cfg.head_dim, d_ff=cfg.intermediate_size,
        num_layers=cfg.n_layer, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.n_head,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout, layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=ff,
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=cfg.decoder_start_token_id)
    return transformers.T5ForConditionalGeneration(hf)


# ---- batches ------------------------------------------------------------------------------
def mlm_batch(gen: torch.Generator, vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, vocab, (BATCH, MLM_SEQ), generator=gen)
    selected = torch.rand(ids.shape, generator=gen) < MASK_PROB
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    inputs = torch.where(selected, torch.full_like(ids, MASK_ID), ids)
    return {"input_ids": inputs, "labels": labels}


def seq2seq_batch(gen: torch.Generator, vocab: int) -> dict[str, torch.Tensor]:
    src = torch.randint(2, vocab, (BATCH, SRC_LEN), generator=gen)
    tgt = torch.randint(2, vocab, (BATCH, TGT_LEN), generator=gen)
    tgt[:, -1] = 1  # EOS
    dec_in = torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), tgt[:, :-1]], dim=1)  # start = pad
    return {"input_ids": src, "attention_mask": torch.ones_like(src),
            "decoder_input_ids": dec_in, "labels": tgt}


# ---- runners --------------------------------------------------------------------------------
def hf_runner(workload: str) -> Runner:
    model = (hf_bert(bert_cfg()) if workload == "mlm" else hf_t5(t5_cfg())).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIM)  # default: foreach implementation

    def step(batch: dict[str, torch.Tensor]) -> float:
        loss = model(**batch).loss
        loss.backward()
        clip_and_step(model, optimizer)
        return loss.item()

    params = sum(p.numel() for p in model.parameters())
    return Runner(f"transformers fp32 ({model.config._attn_implementation})", "fp32", params, step)


def lmforge_runner(workload: str, precision: str, compile: bool = False) -> Runner:
    """Mirrors ``Trainer._train_step`` with lmforge's own building blocks (``compile``: the model
    under ``torch.compile``, as ``--compile true`` runs these objectives)."""
    device = DEVICE
    if workload == "mlm":
        model, loss_fn = Encoder(bert_cfg()), objective_loss(MaskedLM)
    else:
        model, loss_fn = EncoderDecoder(t5_cfg()), objective_loss(Seq2SeqObjective)
    model.to(device).train()
    train_cfg = TrainConfig(lr=OPTIM["lr"], beta1=OPTIM["betas"][0], beta2=OPTIM["betas"][1],
                            eps=OPTIM["eps"], weight_decay=OPTIM["weight_decay"], grad_clip=GRAD_CLIP)
    optimizer = build_optimizer(model, train_cfg, device)
    resolved = resolve_precision(precision, device)
    forward_model = torch.compile(model) if compile else model

    def step(batch: dict[str, torch.Tensor]) -> float:
        with autocast(device, resolved):
            loss = loss_fn(forward_model, batch)
        loss.backward()
        clip_and_step(model, optimizer)
        return loss.item()

    label = "compiled" if compile else ("default" if precision == "auto" else precision)
    return Runner(f"lmforge {label}", resolved, model.num_parameters(), step, compiled=compile)


# ---- timing ---------------------------------------------------------------------------------
def benchmark(workload: str, args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    runners = [hf_runner(workload), lmforge_runner(workload, "auto"), lmforge_runner(workload, "fp32")]
    if args.compile:
        runners.append(lmforge_runner(workload, "auto", compile=True))
    gen = torch.Generator().manual_seed(0)
    if workload == "mlm":
        batches = [mlm_batch(gen, bert_cfg().vocab_size) for _ in range(args.warmup + args.steps)]
        tokens = BATCH * MLM_SEQ
    else:
        batches = [seq2seq_batch(gen, t5_cfg().vocab_size) for _ in range(args.warmup + args.steps)]
        tokens = BATCH * (SRC_LEN + TGT_LEN)
    batches = [{k: v.to(DEVICE) for k, v in b.items()} for b in batches]
    times: dict[str, list[float]] = {r.name: [] for r in runners}  # loss.item() syncs a GPU
    first_loss: dict[str, float] = {}
    for i, batch in enumerate(batches):
        order = runners[i % len(runners):] + runners[:i % len(runners)]  # rotate: fair to all
        for r in order:
            t0 = time.perf_counter()
            loss = r.step(batch)
            if i >= args.warmup:
                times[r.name].append(time.perf_counter() - t0)
            first_loss.setdefault(r.name, loss)
    print(f"[{workload}] first-step losses: "
          + ", ".join(f"{k} {v:.3f}" for k, v in first_loss.items()), flush=True)
    base = times[runners[0].name]
    rows = []
    for r in runners:
        sec = statistics.median(times[r.name])
        speedup = statistics.median(b / t for b, t in zip(base, times[r.name]))  # paired per round
        rows.append({"workload": workload, "params": r.params, "impl": r.name,
                     "precision": r.precision, "ms": 1e3 * sec, "tok_s": tokens / sec,
                     "speedup": speedup})
    return rows


# ---- report ---------------------------------------------------------------------------------
SHAPES = {"mlm": f"bert-mini, {BATCH}x{MLM_SEQ}, 15% masked",
          "seq2seq": f"t5-tiny, {BATCH}x({SRC_LEN} src + {TGT_LEN} tgt)"}


def table(rows: list[dict], steps: int, warmup: int) -> str:
    lines = ["| workload | params | implementation | precision | ms/step | tokens/s | vs transformers fp32 |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} ({SHAPES[r['workload']]}) | {r['params'] / 1e6:.2f}M | "
                     f"{r['impl']} | {r['precision']} | {r['ms']:.1f} | {r['tok_s']:,.0f} | "
                     f"{r['speedup']:.2f}x |")
    verdicts = []
    for workload, target in TARGETS.items():
        got = [r["speedup"] for r in rows if r["workload"] == workload and r["impl"] == "lmforge default"]
        if got:
            verdicts.append(f"{workload} {got[0]:.2f}x vs target >= {target:.0f}x: "
                            f"{'met' if got[0] >= target else 'short'}")
    lines.append("\nTargets (lmforge default vs transformers fp32): " + "; ".join(verdicts) + ".")
    lines.append(f"\nms/step: median of {steps} timed steps after {warmup} warm-up steps; a step = "
                 "forward, loss, backward, clip 1.0, AdamW, zero_grad. tokens/s counts input tokens "
                 "(seq2seq: source + target). Implementations run interleaved, one step each per "
                 "round on the same batch; 'vs transformers fp32' is the median over rounds of the "
                 "paired time ratio.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="mlm,seq2seq", help="comma list of mlm, seq2seq")
    p.add_argument("--steps", type=int, default=8, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads for every implementation (default: usable cores)")
    p.add_argument("--compile", action="store_true", help="also time lmforge under torch.compile")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the issue's targets are for lmforge's "
                   "defaults on the device: bf16 autocast on either)")
    p.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS.name}")
    args = p.parse_args(argv)
    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in TARGETS:
            p.error(f"unknown workload {w!r}; choose from {', '.join(TARGETS)}")
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)

    env = environment(args.threads)
    print(env)
    rows = []
    for w in workloads:
        t0 = time.perf_counter()
        rows += benchmark(w, args)
        print(f"[{w}: {time.perf_counter() - t0:.0f} s]", flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    publish(table(rows, args.steps, args.warmup),
            f"pretraining objectives: MLM and seq2seq step, lmforge vs transformers ({stamp})",
            env, save=not args.no_save)


if __name__ == "__main__":
    main()
